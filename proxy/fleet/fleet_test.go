package fleet_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"corral/internal/testwait"
	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// callTimeout is generous: the race detector and a busy machine slow
// Redis calls down, and no test here measures against it tightly.
const callTimeout = time.Second

// newFleet returns a Fleet on srv (or on cfg's Addr or Client), closed
// when the test ends.
func newFleet(t *testing.T, srv *redistest.Server, cfg fleet.Config) *fleet.Fleet {
	t.Helper()
	if cfg.Client == nil && cfg.Addr == "" {
		cfg.Addr = srv.URL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = callTimeout
	}
	f, err := fleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// subscribed waits until n replicas listen on srv's channels: a message
// published before a subscription is in place is lost to it, and the
// tests that count wake-ups by message need it to arrive.
func subscribed(t *testing.T, srv *redistest.Server, n int64) {
	t.Helper()
	c := srv.Client()
	defer c.Close()
	testwait.UntilNil(t, fmt.Sprintf("%d replicas to subscribe", n), func() error {
		m, err := c.PubSubNumSub(context.Background(), "corral:wake", "corral:purge").Result()
		if err == nil && (m["corral:wake"] < n || m["corral:purge"] < n) {
			err = fmt.Errorf("subscribers %v", m)
		}
		return err
	})
}

// seed writes e under key as a stale entry (live, not fresh) and returns
// the store it used.
func seed(t *testing.T, url, key string, e *cache.Entry) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(redisstore.Config{Addr: url, Timeout: callTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if e != nil {
		if err := s.Set(context.Background(), key, e, time.Hour, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func response(body string) *cache.Entry {
	return &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte(body)}
}

// fetchAll is the judge of a replica that takes nothing.
func fetchAll(*cache.Entry) fleet.Use { return fleet.Fetch }

// waiting returns a judge that says Fetch of the entry with ID stale,
// Take of any other, and a channel closed the first time it judges the
// stale one: the claim has then looked and registered for its wake-up.
func waiting(stale uint64) (fleet.Judge, <-chan struct{}) {
	judged := make(chan struct{})
	var once sync.Once
	return func(e *cache.Entry) fleet.Use {
		if e.ID == stale {
			once.Do(func() { close(judged) })
			return fleet.Fetch
		}
		return fleet.Take
	}, judged
}

// claimAsync runs Claim on a goroutine of its own.
func claimAsync(ctx context.Context, f *fleet.Fleet, key string, judge fleet.Judge) <-chan fleet.Claim {
	ch := make(chan fleet.Claim, 1)
	go func() { ch <- f.Claim(ctx, key, judge) }()
	return ch
}

func mustLease(t *testing.T, c fleet.Claim) *fleet.Lease {
	t.Helper()
	if c.Lease == nil {
		t.Fatalf("Claim = %+v, want a lease", c)
	}
	return c.Lease
}

// TestHandOver: B waits while A fetches, and A's release wakes it with
// A's entry.
func TestHandOver(t *testing.T) {
	srv := redistest.Start(t, false)
	stale := response("stale")
	seed(t, srv.URL, "/k", stale)
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{Recheck: time.Minute}) // only a message wakes it
	subscribed(t, srv, 2)
	ctx := context.Background()

	start := time.Now()
	ca := a.Claim(ctx, "/k", fetchAll)
	l := mustLease(t, ca)
	if ca.Entry == nil || ca.Entry.ID != stale.ID {
		t.Errorf("A's Claim holds entry %+v, want the stale one to revalidate", ca.Entry)
	}
	judge, judged := waiting(stale.ID)
	cb := claimAsync(ctx, b, "/k", judge)
	testwait.Receive(t, judged, "the waiting Claim to judge the stale entry")

	fresh := response("fresh")
	if err := l.Put(ctx, "/k", fresh, time.Hour, time.Now().Add(time.Minute), start); err != nil {
		t.Fatal(err)
	}
	l.Release(ctx, 0)
	got := testwait.Receive(t, cb, "the Claim")
	if got.Lease != nil || got.Entry == nil || got.Entry.ID != fresh.ID {
		t.Fatalf("B's Claim = %+v, want A's entry %d and no lease", got, fresh.ID)
	}
	if s := b.Stats(); s.WokenByMessage != 1 || s.Waited != 1 || s.SharedHits != 1 || s.Takeovers != 0 {
		t.Errorf("B's stats %+v, want one wait, woken by a message, one hit", s)
	}
	if s := a.Stats(); s.LeasesTaken != 1 {
		t.Errorf("A's stats %+v, want one lease", s)
	}
}

// TestLostWakeup: the holder's entry lands and its lease goes without a
// message; the waiter finds them on its next Recheck.
func TestLostWakeup(t *testing.T) {
	srv := redistest.Start(t, false)
	stale := response("stale")
	s := seed(t, srv.URL, "/k", stale)
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{Recheck: 20 * time.Millisecond})
	ctx := context.Background()

	l := mustLease(t, a.Claim(ctx, "/k", fetchAll))
	defer l.Release(ctx, 0)
	judge, judged := waiting(stale.ID)
	cb := claimAsync(ctx, b, "/k", judge)
	testwait.Receive(t, judged, "the waiting Claim to judge the stale entry")

	fresh := response("fresh")
	if err := s.SetFresh(ctx, "/k", fresh, time.Hour, time.Now().Add(time.Minute), cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	raw := srv.Client()
	defer raw.Close()
	if err := raw.Del(ctx, redisstore.LeaseKey("corral:", "/k")).Err(); err != nil {
		t.Fatal(err)
	}
	got := testwait.Receive(t, cb, "the Claim")
	if got.Entry == nil || got.Entry.ID != fresh.ID {
		t.Fatalf("B's Claim = %+v, want the entry written", got)
	}
	if st := b.Stats(); st.WokenByRecheck == 0 || st.WokenByMessage != 0 {
		t.Errorf("B's stats %+v, want woken by Recheck only", st)
	}
}

// TestHolderDies: a holder that stops renewing and never releases holds
// the key for LeaseTTL; then a waiter takes the lease over.
func TestHolderDies(t *testing.T) {
	srv := redistest.Start(t, false)
	cfg := fleet.Config{LeaseTTL: 200 * time.Millisecond, Recheck: 20 * time.Millisecond}
	a := newFleet(t, srv, cfg)
	b := newFleet(t, srv, cfg)

	actx, cancel := context.WithCancel(context.Background())
	la := mustLease(t, a.Claim(actx, "/k", fetchAll))
	cancel() // its renewal stops: the holder is as good as dead
	defer la.Release(context.Background(), 0)

	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	lb := mustLease(t, b.Claim(ctx, "/k", fetchAll))
	defer lb.Release(ctx, 0)
	if s := b.Stats(); s.Takeovers != 1 || s.Waited != 1 || s.WokenByMessage != 0 {
		t.Errorf("B's stats %+v, want one wait and a takeover", s)
	}
}

// TestRenewal: a holder whose fetch outlives LeaseTTL keeps the lease by
// renewing it; the waiter gets what it puts.
func TestRenewal(t *testing.T) {
	srv := redistest.Start(t, false)
	cfg := fleet.Config{LeaseTTL: 150 * time.Millisecond, Recheck: 20 * time.Millisecond}
	a := newFleet(t, srv, cfg)
	b := newFleet(t, srv, cfg)
	ctx := context.Background()

	start := time.Now()
	l := mustLease(t, a.Claim(ctx, "/k", fetchAll))
	cb := claimAsync(ctx, b, "/k", func(*cache.Entry) fleet.Use { return fleet.Take })
	select {
	case c := <-cb:
		t.Fatalf("B's Claim returned %+v while A held the lease", c)
	case <-time.After(600 * time.Millisecond): // four LeaseTTLs: renewed, or B would have it
	}
	fresh := response("fresh")
	if err := l.Put(ctx, "/k", fresh, time.Hour, time.Now().Add(time.Minute), start); err != nil {
		t.Fatal(err)
	}
	l.Release(ctx, 0)
	got := testwait.Receive(t, cb, "the Claim")
	if got.Lease != nil || got.Entry == nil || got.Entry.ID != fresh.ID {
		t.Fatalf("B's Claim = %+v, want A's entry", got)
	}
	if s := a.Stats(); s.Renewed < 2 || s.Lost != 0 {
		t.Errorf("A's stats %+v, want renewals and no lease lost", s)
	}
	if s := b.Stats(); s.Takeovers != 0 {
		t.Errorf("B's stats %+v, want no takeover", s)
	}
}

// TestLocalOnly: a holder that leaves a local-only mark sends its waiters,
// and later claims, to fetch on their own, with the stale copy beside the
// mark to stand in for a failure.
func TestLocalOnly(t *testing.T) {
	srv := redistest.Start(t, false)
	stale := response("stale")
	seed(t, srv.URL, "/k", stale)
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{Recheck: time.Minute})
	subscribed(t, srv, 2)
	ctx := context.Background()

	l := mustLease(t, a.Claim(ctx, "/k", fetchAll))
	judge, judged := waiting(stale.ID)
	cb := claimAsync(ctx, b, "/k", judge)
	testwait.Receive(t, judged, "the waiting Claim to judge the stale entry")
	// A's fetch ended with its context; its release must still happen.
	dead, cancel := context.WithCancel(ctx)
	cancel()
	l.Release(dead, time.Minute)
	l.Release(dead, time.Minute) // once is enough; twice is harmless
	if got := testwait.Receive(t, cb, "the Claim"); !got.Local || got.Lease != nil || got.Entry == nil || got.Entry.ID != stale.ID {
		t.Fatalf("B's waiting Claim = %+v, want Local with the stale entry", got)
	}
	if got := b.Claim(ctx, "/k", judge); !got.Local || got.Lease != nil || got.Entry == nil || got.Entry.ID != stale.ID {
		t.Fatalf("B's next Claim = %+v, want Local with the stale entry", got)
	}
	if s := b.Stats(); s.LocalMarks != 2 {
		t.Errorf("B's stats %+v, want two claims sent local", s)
	}
}

type purge struct {
	key    string
	prefix bool
	at     time.Time
}

func onPurge(f *fleet.Fleet) <-chan purge {
	ch := make(chan purge, 10)
	f.OnPurge(func(key string, prefix bool, at time.Time) { ch <- purge{key, prefix, at} })
	return ch
}

func TestPurge(t *testing.T) {
	srv := redistest.Start(t, false)
	s := seed(t, srv.URL, "/k", response("old"))
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{})
	subscribed(t, srv, 2)
	pa, pb := onPurge(a), onPurge(b)
	ctx := context.Background()

	at := time.UnixMicro(time.Now().UnixMicro())
	n, err := a.Purge(ctx, "/k", false, at)
	if err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v; want 1 dropped", n, err)
	}
	if got := testwait.Receive(t, pb, "a purge announced"); got != (purge{"/k", false, at}) {
		t.Errorf("B heard %+v, want /k at %v", got, at)
	}
	if _, err := s.Get(ctx, "/k"); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Get after the purge: %v, want ErrNotFound", err)
	}
	// B's purge reaches A after A's own, which A's subscription reads
	// first and must not hand to OnPurge.
	at2 := at.Add(time.Second)
	if _, err := b.Purge(ctx, "/b ", true, at2); err != nil {
		t.Fatal(err)
	}
	if got := testwait.Receive(t, pa, "a purge announced"); got != (purge{"/b ", true, at2}) {
		t.Errorf("A heard %+v, want only B's purge of the prefix /b at %v", got, at2)
	}
	if s := a.Stats(); s.PurgesReceived != 1 {
		t.Errorf("A's stats %+v, want one purge received", s)
	}
	// A fetch begun before the purge does not write back.
	l := mustLease(t, a.Claim(ctx, "/k", fetchAll))
	defer l.Release(ctx, 0)
	if err := l.Put(ctx, "/k", response("late"), time.Hour, time.Now().Add(time.Minute), at.Add(-time.Millisecond)); !errors.Is(err, cache.ErrPurged) {
		t.Errorf("Put begun before the purge: %v, want ErrPurged", err)
	}
	// ErrPurged is an answer: the lease still works.
	if err := l.Put(ctx, "/k", response("new"), time.Hour, time.Now().Add(time.Minute), time.Now()); err != nil {
		t.Errorf("Put after a refused one: %v", err)
	}
}

func TestMalformedPurge(t *testing.T) {
	srv := redistest.Start(t, false)
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{})
	subscribed(t, srv, 2)
	pb := onPurge(b)
	ctx := context.Background()
	raw := srv.Client()
	defer raw.Close()
	bad := []string{"", "garbage", "1 x k notanumber /k", "2 x k 1 /k", "1 x z 1 /k", "1  k 1 /k", "1 x k 1"}
	for _, m := range bad {
		if err := raw.Publish(ctx, "corral:purge", m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Purge(ctx, "/ok", false, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Messages arrive in order: the good one last.
	if got := testwait.Receive(t, pb, "a purge announced"); got.key != "/ok" {
		t.Errorf("B heard %+v, want /ok", got)
	}
	if s := b.Stats(); s.PurgeMessagesDropped != int64(len(bad)) || s.PurgesReceived != 1 {
		t.Errorf("B's stats %+v, want %d dropped, 1 received", s, len(bad))
	}
}

func TestBreaker(t *testing.T) {
	srv := redistest.Start(t, false)
	c := srv.Client()
	defer c.Close()
	var commands atomic.Int64
	c.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		commands.Add(1)
		return next(ctx, cmd)
	}))
	const timeout = 100 * time.Millisecond
	f := newFleet(t, srv, fleet.Config{Client: c, Timeout: timeout, BreakerFailures: 3, BreakerCooldown: 300 * time.Millisecond})
	ctx := context.Background()
	l := mustLease(t, f.Claim(ctx, "/up", fetchAll))
	l.Release(ctx, 0)

	srv.Kill()
	for i := range 3 {
		start := time.Now()
		if got := f.Claim(ctx, "/k", fetchAll); got.Lease != nil || got.Entry != nil {
			t.Fatalf("Claim %d on a dead Redis = %+v, want a zero Claim", i, got)
		}
		if took := time.Since(start); took > 10*timeout {
			t.Errorf("Claim %d on a dead Redis took %v", i, took)
		}
	}
	if s := f.Stats(); !s.BreakerOpen || s.Unavailable != 3 {
		t.Fatalf("stats %+v after 3 failures, want the breaker open", s)
	}
	before := commands.Load()
	if got := f.Claim(ctx, "/k", fetchAll); got.Lease != nil {
		t.Fatalf("Claim with the breaker open = %+v", got)
	}
	if n := commands.Load(); n != before {
		t.Errorf("%d commands sent with the breaker open", n-before)
	}
	if s := f.Stats(); s.Rejected == 0 {
		t.Errorf("stats %+v, want a rejected call", s)
	}

	srv.Restart()
	testwait.UntilNil(t, "a lease after Redis came back", func() error {
		got := f.Claim(ctx, "/k", fetchAll)
		if got.Lease == nil {
			return fmt.Errorf("no lease: %+v", f.Stats())
		}
		got.Lease.Release(ctx, 0)
		return nil
	})
	if s := f.Stats(); s.BreakerOpen {
		t.Errorf("stats %+v, want the breaker closed", s)
	}
}

// TestPaused: a Redis that accepts connections and answers nothing costs a
// Claim its Timeout, not a hang.
func TestPaused(t *testing.T) {
	srv := redistest.Start(t, false)
	const timeout = 100 * time.Millisecond
	f := newFleet(t, srv, fleet.Config{Timeout: timeout})
	admin := srv.Client()
	defer admin.Close()
	ctx := context.Background()
	if err := admin.Do(ctx, "CLIENT", "PAUSE", "2000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got := f.Claim(ctx, "/k", fetchAll); got.Lease != nil || got.Entry != nil {
		t.Fatalf("Claim on a paused Redis = %+v, want a zero Claim", got)
	}
	if took := time.Since(start); took > 10*timeout {
		t.Errorf("Claim on a paused Redis took %v, with a %v timeout", took, timeout)
	}
}

// recorder is a slog handler that keeps the messages of its records.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func TestUndecodable(t *testing.T) {
	srv := redistest.Start(t, false)
	raw := srv.Client()
	defer raw.Close()
	ctx := context.Background()
	x := strconv.FormatInt(time.Now().Add(time.Hour).UnixMicro(), 10)
	if err := raw.HSet(ctx, redisstore.EntryKey("corral:", "/g"), "v", "\x02garbage", "x", x).Err(); err != nil {
		t.Fatal(err)
	}
	rec := new(recorder)
	f := newFleet(t, srv, fleet.Config{Logger: slog.New(rec)})
	for range 2 {
		got := f.Claim(ctx, "/g", func(*cache.Entry) fleet.Use { return fleet.Take })
		l := mustLease(t, got)
		if got.Entry != nil {
			t.Errorf("Claim of garbage = %+v, want no entry", got)
		}
		l.Release(ctx, 0)
	}
	// Two at least: the second Claim may look while the first lease's
	// release, which runs in the background, is still on its way.
	if s := f.Stats(); s.DecodeErrors < 2 || s.CommandErrors != 0 {
		t.Errorf("stats %+v, want 2 decode errors or more, and no failed command", s)
	}
	if n := rec.count("does not decode"); n != 1 {
		t.Errorf("logged %d times, want once", n)
	}
}

func TestPutLimits(t *testing.T) {
	srv := redistest.Start(t, false)
	f := newFleet(t, srv, fleet.Config{MaxObjectBytes: 4})
	ctx := context.Background()
	l := mustLease(t, f.Claim(ctx, "/k", fetchAll))
	if err := l.Put(ctx, "/k", response("12345"), time.Hour, time.Now().Add(time.Minute), time.Now()); !errors.Is(err, fleet.ErrTooLarge) {
		t.Errorf("Put of 5 bytes: %v, want ErrTooLarge", err)
	}
	srv.Kill()
	if err := l.Put(ctx, "/k", response("1"), time.Hour, time.Now().Add(time.Minute), time.Now()); err == nil {
		t.Fatal("Put on a dead Redis: no error")
	}
	// The lease failed: no further Put, the same failure. (Release still
	// tries to drop the lease, in the background: a lease left behind
	// would hold every waiter for its TTL.)
	before := f.Stats().Commands
	err := l.Put(ctx, "/k", response("2"), time.Hour, time.Now().Add(time.Minute), time.Now())
	if err == nil || f.Stats().Commands != before {
		t.Errorf("Put after a failure: %v, %d more commands; want the failure and none", err, f.Stats().Commands-before)
	}
	l.Release(ctx, time.Minute)
	var nilLease *fleet.Lease
	nilLease.Release(ctx, time.Minute)
}

func TestMetrics(t *testing.T) {
	srv := redistest.Start(t, false)
	f := newFleet(t, srv, fleet.Config{})
	ctx := context.Background()
	mustLease(t, f.Claim(ctx, "/k", fetchAll)).Release(ctx, 0)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(f); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(f)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v, %v", problems, err)
	}
	if n := testutil.CollectAndCount(f, "corral_leases_total"); n != 5 {
		t.Errorf("%d corral_leases_total series, want 5", n)
	}
}

// TestClose: Close stops the subscription and the renewals, ends the
// waits, and leaves no goroutine behind, even with a lease still held.
func TestClose(t *testing.T) {
	srv := redistest.Start(t, false)
	stale := response("stale")
	seed(t, srv.URL, "/w", stale)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := fleet.Config{Addr: srv.URL, Timeout: callTimeout, LeaseTTL: 30 * time.Millisecond, Recheck: time.Minute}
	f, err := fleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := fleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	l := mustLease(t, f.Claim(ctx, "/k", fetchAll))
	lw := mustLease(t, g.Claim(ctx, "/w", fetchAll))
	defer lw.Release(ctx, 0)
	judge, judged := waiting(stale.ID)
	waiter := claimAsync(ctx, f, "/w", judge)
	testwait.Receive(t, judged, "the waiting Claim to judge the stale entry")
	if err := f.Close(); err != nil {
		t.Error(err)
	}
	f.Close()
	if got := testwait.Receive(t, waiter, "the Claim"); got.Lease != nil || got.Entry != nil {
		t.Errorf("Claim waiting at Close = %+v, want a zero Claim", got)
	}
	l.Release(ctx, 0)
	if got := f.Claim(ctx, "/k", fetchAll); got.Lease != nil || got.Entry != nil {
		t.Errorf("Claim after Close = %+v, want a zero Claim", got)
	}
}

// TestNoRedis: New does not wait for Redis; a Fleet without one sends
// every Claim local.
func TestNoRedis(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	f, err := fleet.New(fleet.Config{Addr: "redis://" + addr, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Claim(context.Background(), "/k", fetchAll); got.Lease != nil || got.Entry != nil {
		t.Errorf("Claim without Redis = %+v, want a zero Claim", got)
	}
	if _, err := fleet.New(fleet.Config{}); err == nil {
		t.Error("New with no Addr and no Client: no error")
	}
}

// TestCluster: on a Redis Cluster, for keys in different slots, B waits
// while A fetches and A's release wakes it with A's entry; A's purge
// reaches B, and refuses the late write of a fetch begun before it.
func TestCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	a := newFleet(t, nil, fleet.Config{Addr: cl.URL})
	b := newFleet(t, nil, fleet.Config{Addr: cl.URL, Recheck: time.Minute}) // only a message wakes it
	raw := cl.Client()
	defer raw.Close()
	ctx := context.Background()
	// Subscriptions sit on any node; PUBLISH reaches them all.
	testwait.UntilNil(t, "2 replicas to subscribe", func() error {
		var subs atomic.Int64
		err := raw.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			m, err := n.PubSubNumSub(ctx, "corral:wake", "corral:purge").Result()
			subs.Add(min(m["corral:wake"], m["corral:purge"]))
			return err
		})
		if err == nil && subs.Load() < 2 {
			err = fmt.Errorf("%d subscribed", subs.Load())
		}
		return err
	})
	pb := onPurge(b)

	keys := []string{"/a", "/b", "/c", "/d"}
	slots := map[int64]bool{}
	for _, k := range keys {
		slots[raw.ClusterKeySlot(ctx, redisstore.EntryKey("corral:", k)).Val()] = true
	}
	if len(slots) < 2 {
		t.Fatalf("keys %q share a slot: pick others", keys)
	}
	for i, key := range keys {
		stale := response("stale")
		s := seed(t, cl.URL, key, stale)
		start := time.Now()
		l := mustLease(t, a.Claim(ctx, key, fetchAll))
		judge, judged := waiting(stale.ID)
		cb := claimAsync(ctx, b, key, judge)
		testwait.Receive(t, judged, "the waiting Claim to judge the stale entry")
		fresh := response("fresh")
		if err := l.Put(ctx, key, fresh, time.Hour, time.Now().Add(time.Minute), start); err != nil {
			t.Fatal(err)
		}
		l.Release(ctx, 0)
		got := testwait.Receive(t, cb, "the Claim")
		if got.Lease != nil || got.Entry == nil || got.Entry.ID != fresh.ID {
			t.Fatalf("%s: B's Claim = %+v, want A's entry %d and no lease", key, got, fresh.ID)
		}
		if st := b.Stats(); st.WokenByMessage != int64(i+1) || st.Takeovers != 0 {
			t.Errorf("%s: B's stats %+v, want woken by a message, no takeover", key, st)
		}

		at := time.UnixMicro(time.Now().UnixMicro())
		if n, err := a.Purge(ctx, key, false, at); err != nil || n != 1 {
			t.Fatalf("%s: Purge = %d, %v; want 1 dropped", key, n, err)
		}
		if got := testwait.Receive(t, pb, "a purge announced"); got != (purge{key, false, at}) {
			t.Errorf("B heard %+v, want %s at %v", got, key, at)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%s: Get after the purge: %v, want ErrNotFound", key, err)
		}
		l = mustLease(t, b.Claim(ctx, key, fetchAll))
		if err := l.Put(ctx, key, response("late"), time.Hour, time.Now().Add(time.Minute), at.Add(-time.Millisecond)); !errors.Is(err, cache.ErrPurged) {
			t.Errorf("%s: Put begun before the purge: %v, want ErrPurged", key, err)
		}
		l.Release(ctx, 0)
	}
	// A prefix purge reaches every master.
	for _, key := range keys {
		seed(t, cl.URL, key, response("again"))
	}
	if n, err := b.Purge(ctx, "/", true, time.Now()); err != nil || n != len(keys) {
		t.Errorf("Purge of the prefix / = %d, %v; want %d", n, err, len(keys))
	}
}

// TestEverySubscriberHearsAPurge: two proxies on one Fleet each subscribe
// to the purges other replicas announce; a second subscription must not
// silently replace the first, and one that stops (its proxy shut down)
// hears no more.
func TestEverySubscriberHearsAPurge(t *testing.T) {
	srv := redistest.Start(t, false)
	a := newFleet(t, srv, fleet.Config{})
	b := newFleet(t, srv, fleet.Config{})
	subscribed(t, srv, 2)
	first := make(chan purge, 4)
	stopFirst := b.OnPurge(func(key string, prefix bool, at time.Time) { first <- purge{key, prefix, at} })
	second := onPurge(b)
	ctx := context.Background()
	at := time.UnixMicro(time.Now().UnixMicro())
	if _, err := a.Purge(ctx, "/k", false, at); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan purge{"the first": first, "the second": second} {
		if got := testwait.Receive(t, ch, "a purge announced"); got != (purge{"/k", false, at}) {
			t.Errorf("%s subscriber heard %+v, want /k at %v", name, got, at)
		}
	}
	stopFirst()
	if _, err := a.Purge(ctx, "/j", false, at); err != nil {
		t.Fatal(err)
	}
	testwait.Receive(t, second, "a purge announced")
	select {
	case got := <-first:
		t.Errorf("a subscriber that stopped heard %+v", got)
	default:
	}
}

// TestAnnounceIsBounded: the purges Announce holds while Redis is slow
// are bounded, whatever clients send: past the queue, a purge is dropped
// and counted, not held; the others are made once Redis answers, and the
// other replicas hear them.
func TestAnnounceIsBounded(t *testing.T) {
	srv := redistest.Start(t, false)
	release := make(chan struct{})
	var armed atomic.Bool
	c := srv.Client()
	t.Cleanup(func() { c.Close() })
	c.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if armed.Load() {
			<-release
		}
		return next(ctx, cmd)
	}))
	a := newFleet(t, srv, fleet.Config{Client: c})
	b := newFleet(t, srv, fleet.Config{})
	subscribed(t, srv, 2)
	var heard atomic.Int64
	b.OnPurge(func(string, bool, time.Time) { heard.Add(1) })
	armed.Store(true)
	const n = 1024 + 100
	at := time.UnixMicro(time.Now().UnixMicro())
	for i := range n {
		a.Announce("/k"+strconv.Itoa(i), false, at) // never waits
	}
	armed.Store(false)
	close(release)
	testwait.UntilNil(t, "every announcement to be accounted for", func() error { // purges over a real Redis
		if s := a.Stats(); s.AnnouncedPurges+s.AnnounceDropped+s.AnnounceFailed < n || heard.Load() < s.AnnouncedPurges {
			return fmt.Errorf("%+v, %d heard", s, heard.Load())
		}
		return nil
	})
	// The one the announcer had taken when Redis stalled may fail, past
	// its deadline; the queue holds 1024 more.
	if s := a.Stats(); s.AnnounceDropped != n-1024-1 || s.AnnounceFailed > 1 {
		t.Errorf("of %d announcements, %d made, %d failed, %d dropped; want %d dropped: the queue holds 1024", n, s.AnnouncedPurges, s.AnnounceFailed, s.AnnounceDropped, n-1024-1)
	}
}
