package proxy

// Attacks on the fleet (issue 12), each found by an attacker review and
// written to fail before its fix.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/internal/testwait"
	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// A slow answer that may not be stored: the replica that waited for the
// lease holder's fetch then fetches on its own, and must not run out of
// the upstream timeout for having waited (it answered 504).
func TestFleetWaiterGetsItsOwnUpstreamTimeout(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	const latency = 700 * time.Millisecond
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(latency) // the origin is slow: real time, not a wait for a goroutine
		w.Header().Set("Cache-Control", "no-cache")
		fmt.Fprint(w, "dynamic")
	})
	rs := newReplicas(t, srv, o, clk, 2, Config{UpstreamTimeout: time.Second}, fleet.Config{})
	first := make(chan response, 1)
	go func() { r, _ := get(rs.ps[0], "/dyn"); first <- r }()
	testwait.Until(t, "the first fetch", func() bool { return o.count() == 1 })
	r, _ := get(rs.ps[1], "/dyn")
	if r.Status != http.StatusOK || r.Body != "dynamic" {
		t.Errorf("the replica that waited: %+v", r)
	}
	if r := testwait.Receive(t, first, "the first"); r.Status != http.StatusOK {
		t.Errorf("the lease holder: %+v", r)
	}
	// Not storable: from now on the replicas fetch on their own, each
	// coalescing its own clients, without queueing behind the other.
	rs.awaitLocalMark("/dyn")
	waited := rs.fleets[1].Stats().Waited
	if r, _ := get(rs.ps[1], "/dyn"); r.Status != http.StatusOK {
		t.Errorf("next request: %+v", r)
	}
	if s := rs.fleets[1].Stats(); s.LocalMarks == 0 || s.Waited != waited {
		t.Errorf("next request: %+v; want it sent on its own by the local-only mark, with no wait", s)
	}
}

// A public answer to alice's request, stored in memory, revalidated by an
// anonymous request: the 304 keeps alice's body, which must not go to
// Redis, whence every replica would serve it.
func TestFleetCredentialedBodyNeverSharedThrough304(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, etagAnswer("public, max-age=1", func(r *http.Request) string { return "for " + r.Header.Get("Authorization") }))
	rs := newReplicas(t, srv, o, clk, 2, Config{}, fleet.Config{})
	get(rs.ps[0], "/me", "Authorization", "Bearer alice")
	clk.Advance(3 * time.Second)
	if r, _ := get(rs.ps[0], "/me"); r.Status != http.StatusOK {
		t.Fatalf("anonymous revalidation: %+v", r)
	}
	if o.count() != 2 {
		t.Fatalf("%d upstream requests, want 2: the test did not revalidate", o.count())
	}
	for k, e := range rs.entries() {
		if strings.Contains(string(e.Body), "alice") {
			t.Errorf("Redis holds alice's answer under %q", k)
		}
	}
	if r, _ := get(rs.ps[1], "/me"); strings.Contains(r.Body, "alice") {
		t.Errorf("another replica served alice's answer to an anonymous client: %+v", r)
	}
}

// A purge on a replica whose Redis calls fail: it must say so, and the
// purged response must not come back to that replica from Redis.
func TestFleetPurgeThatMissesRedisHoldsHereAndSaysSo(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=600", "v1"))
	client := srv.Client()
	t.Cleanup(func() { client.Close() })
	var failing atomic.Bool
	client.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if failing.Load() {
			return errors.New("injected failure")
		}
		return next(ctx, cmd)
	}))
	rs := newReplicas(t, srv, o, clk, 0, Config{}, fleet.Config{Client: client, BreakerCooldown: time.Millisecond})
	a := rs.add()
	if r, _ := get(a, "/x"); r.Body != "v1" {
		t.Fatalf("%+v", r)
	}
	o.set(answer("max-age=600", "v2"))
	failing.Store(true)
	if _, err := a.Purge("/x", false); err == nil {
		t.Error("Purge reported no error, though Redis was not purged")
	}
	failing.Store(false)
	clk.Advance(time.Second)
	taken, i := rs.fleets[0].Stats().LeasesTaken, 0
	testwait.Until(t, "the breaker to let calls through", func() bool {
		i++
		get(a, fmt.Sprintf("/y/%d", i))
		return rs.fleets[0].Stats().LeasesTaken > taken
	})
	if r, _ := get(a, "/x"); r.Body != "v2" {
		t.Errorf("after its purge, the replica serves %+v from Redis", r)
	}
}

// A client's max-age=0 on a replica whose memory misses: answered as a
// replica whose memory holds the entry answers it, by revalidating, not
// with whatever Redis holds.
func TestFleetClientDirectivesHoldForSharedTier(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=600", "x"))
	rs := newReplicas(t, srv, o, clk, 2, Config{}, fleet.Config{})
	get(rs.ps[0], "/n")
	clk.Advance(300 * time.Second)
	r, _ := get(rs.ps[1], "/n", "Cache-Control", "max-age=0")
	if o.count() != 2 || !strings.Contains(r.CacheStatus, "fwd=") {
		t.Errorf("max-age=0 on a memory miss: %+v after %d upstream requests; want a revalidated answer", r, o.count())
	}
}

// The origin fails while the only stale copy, usable on error, is in
// Redis: the first request on an empty replica gets it, not the error.
func TestFleetStaleCopyInRedisStandsInForTheFirstFailure(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=10, stale-if-error=600", "good"))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/s")
	clk.Advance(20 * time.Second)
	o.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	late := rs.add()
	if r, _ := get(late, "/s"); r.Status != http.StatusOK || r.Body != "good" {
		t.Errorf("first request on an empty replica while the origin fails: %+v", r)
	}
}

// A failed validation leaves a local-only mark, so that the other
// replicas fetch on their own: beside the stale copy in Redis, which
// must stay there to stand in for the failing origin (the mark replaced
// it).
func TestFleetLocalMarkKeepsTheStaleCopy(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=10, stale-if-error=600", "good"))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/s")
	clk.Advance(20 * time.Second)
	o.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	if r, _ := get(rs.ps[0], "/s"); r.Body != "good" {
		t.Fatalf("while the origin fails: %+v", r)
	}
	rs.ps[0].Wait()
	rs.awaitLocalMark("/s")
	if e := rs.entries()["/s"]; e == nil || string(e.Body) != "good" {
		t.Errorf("Redis holds %+v for /s, want the stale copy", e)
	}
}

// A client that makes the origin refuse its request (a header too large)
// while asking for a fresh answer must not take the fleet's copy away
// with the pass mark its answer leaves.
func TestFleetPassMarkNeverReplacesALiveResponse(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Get("Cookie")) > 8000 {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, "Request Header Or Cookie Too Large")
			return
		}
		w.Header().Set("Cache-Control", "max-age=600")
		fmt.Fprint(w, "good")
	})
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/e")
	clk.Advance(5 * time.Second)
	if r, _ := get(rs.ps[0], "/e", "Cache-Control", "no-cache", "Cookie", "c="+strings.Repeat("x", 9000)); r.Status != http.StatusBadRequest {
		t.Fatalf("the attack did not reach the origin: %+v", r)
	}
	rs.ps[0].Wait()
	if e := rs.entries()["/e"]; e == nil || string(e.Body) != "good" {
		t.Errorf("Redis holds %+v for /e after one client's 400, want the response", e)
	}
}

// One write of the lease holder misses its deadline: the lease is still
// given back, and the replica waiting for it goes on at once rather than
// wait out the lease's life.
func TestFleetFailedWriteStillReleasesTheLease(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	open := make(chan struct{})
	o := newOrigin(t, clk, gatedOrigin(open, "max-age=60", "v "))
	const lease = 10 * time.Second
	rs := newReplicas(t, srv, o, clk, 0, Config{}, fleet.Config{Timeout: 50 * time.Millisecond, LeaseTTL: lease})
	slow := srv.Client()
	t.Cleanup(func() { slow.Close() })
	var on atomic.Bool
	// The write of an entry (its script names the entry's key and its
	// purge records, and no lease) misses its deadline.
	slow.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		args := fmt.Sprint(cmd.Args())
		if on.Load() && strings.Contains(args, "}p:") && !strings.Contains(args, "}l:") {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return next(ctx, cmd)
	}))
	rs.fcfg.Client = slow
	a := rs.add()
	rs.fcfg.Client = nil
	b := rs.add()
	on.Store(true)
	go get(a, "/k")
	testwait.Until(t, "the holder's fetch", func() bool { return o.count() == 1 })
	done := make(chan response, 1)
	start := time.Now()
	go func() { r, _ := get(b, "/k"); done <- r }()
	close(open)
	if r := testwait.Receive(t, done, "the waiter"); r.Status != http.StatusOK {
		t.Errorf("the waiter: %+v", r)
	}
	if took := time.Since(start); took > lease/2 {
		t.Errorf("the waiter took %v: it waited out the lease (%v)", took, lease)
	}
	// What the test is about: the holder held the lease and its write
	// failed, and the other replica waited for it.
	if a, b := rs.fleets[0].Stats(), rs.fleets[1].Stats(); a.LeasesTaken != 1 || a.CommandErrors == 0 || b.Waited != 1 {
		t.Errorf("holder %+v\nwaiter %+v\nwant the holder's lease and failed write, and one wait", a, b)
	}
}

// A purge lands between a replica's read of a Vary marker from Redis and
// its promotion: the marker, of the purged generation, must not come back,
// neither in that replica's memory nor through it to Redis, whence a cold
// replica would serve the purged variants.
func TestFleetPurgeRacingAMarkerReadStaysPurged(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	var gen atomic.Int64
	gen.Store(1)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=600")
		w.Header().Set("Vary", "Accept-Language")
		fmt.Fprintf(w, "gen%d %s", gen.Load(), r.Header.Get("Accept-Language"))
	})
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/v", "Accept-Language", "en")
	get(rs.ps[0], "/v", "Accept-Language", "fr")
	clk.Advance(time.Second)

	// Once, after the first script this replica sends for /v has been
	// answered: a purge between its read of Redis and its use of what it
	// read. (The hook runs on the flight's goroutine: what goes wrong
	// there is reported after.)
	armed := new(atomic.Bool)
	var b *fleet.Fleet
	purgeErr := make(chan error, 1)
	c := srv.Client()
	t.Cleanup(func() { c.Close() })
	c.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		err := next(ctx, cmd)
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && slices.Contains(cmd.Args(), any("/v")) && armed.CompareAndSwap(true, false) {
			gen.Store(2)
			_, perr := rs.ps[0].Purge("/v", false)
			for deadline := time.Now().Add(10 * time.Second); perr == nil && b.Stats().PurgesReceived == 0; {
				if time.Now().After(deadline) {
					perr = errors.New("the purge message did not arrive")
				}
				time.Sleep(time.Millisecond) // a message over a real Redis
			}
			purgeErr <- perr
		}
		return err
	}))
	rs.fcfg.Client = c
	pb := rs.add()
	b = rs.fleets[1]
	rs.fcfg.Client = nil
	clk.Advance(time.Second)
	armed.Store(true)
	get(pb, "/v", "Accept-Language", "fr")
	if armed.Load() {
		t.Fatal("the purge did not race the read: the test checks nothing")
	}
	if err := <-purgeErr; err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if r, _ := get(pb, "/v", "Accept-Language", "de"); strings.HasPrefix(r.Body, "gen1") {
		t.Errorf("the racing replica serves the purged generation: %+v", r)
	}
	pb.Wait()
	clk.Advance(time.Second)
	cold := rs.add()
	if r, _ := get(cold, "/v", "Accept-Language", "en"); strings.HasPrefix(r.Body, "gen1") {
		t.Errorf("a cold replica serves the purged response: %+v", r)
	}
}

// After a flood of purges (unsafe requests to unique URLs, on any
// replica, reach every replica), a replica's memory no longer knows
// whether an older entry in Redis was purged, and refuses it: the flood
// may then cost one upstream request per key for the whole fleet, fetched
// under the lease and shared, not one per replica and per request.
func TestFleetPurgeFloodCostsOneFetchPerKey(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=3600", "doc"))
	rs := newReplicas(t, srv, o, clk, 3, Config{}, fleet.Config{})
	get(rs.ps[0], "/old")
	clk.Advance(time.Minute)
	for _, p := range rs.ps[1:] {
		for i := range cache.MaxPurgeRecords + 2 {
			p.purgedElsewhere(fmt.Sprintf("/junk/%d", i), false, clk.Now())
		}
	}
	clk.Advance(time.Second)
	before := o.count()
	for range 3 {
		if r, _ := get(rs.ps[1], "/old"); r.Status != http.StatusOK {
			t.Fatalf("%+v", r)
		}
	}
	rs.ps[1].Wait()
	// The other flooded replica takes what the first fetched for the fleet.
	if r, _ := get(rs.ps[2], "/old"); !strings.Contains(r.CacheStatus, "shared-tier") {
		t.Errorf("another replica after the flood: %+v, want the shared tier's", r)
	}
	if n := o.count() - before; n != 1 {
		t.Errorf("the flood cost %d upstream requests for one key, want 1: the refetch for the fleet", n)
	}
}

// A local-only mark, left after a failed fetch, must not hide the stale
// copy in Redis from a replica that starts while the origin fails.
func TestFleetLocalMarkLeavesStaleCopyUsable(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=1, stale-if-error=600", "good"))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/s")
	o.set(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	clk.Advance(5 * time.Second)
	first := rs.add()
	if r, _ := get(first, "/s"); r.Status != http.StatusOK {
		t.Errorf("the replica that took the lease: %+v", r)
	}
	rs.awaitLocalMark("/s")
	if r, _ := get(rs.add(), "/s"); r.Status != http.StatusOK || r.Body != "good" {
		t.Errorf("a replica started under the mark: %+v", r)
	}
}

// One client's request that the origin refuses (a 400 to a field it
// sends, with no-cache to skip the stored copy) leaves the key neither
// passed nor local-only: the flight asks again for everyone with nothing of
// that client's, shares the answer, and the fleet goes on sharing one
// fetch per window.
func TestFleetOneClientCannotMakeAKeyLocalOnly(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Bad") != "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Cache-Control", "max-age=2")
		fmt.Fprint(w, "ok")
	})
	rs := newReplicas(t, srv, o, clk, 3, Config{PassTTL: time.Hour}, fleet.Config{})
	rs.herd(30, "/k")
	clk.Advance(1500 * time.Millisecond) // past -revalidate-interval: no-cache goes upstream
	if r, _ := get(rs.ps[0], "/k", "Cache-Control", "no-cache", "X-Bad", "1"); r.Status != http.StatusBadRequest {
		t.Fatalf("the attack did not reach the origin: %+v", r)
	}
	rs.ps[0].Wait()
	before := o.count()
	rs.herd(30, "/k")
	if n := o.count() - before; n != 0 {
		t.Errorf("right after one client's 400: %d upstream requests, want 0: the answer for everyone is shared", n)
	}
	clk.Advance(2 * time.Second)
	before = o.count()
	rs.herd(30, "/k")
	if n := o.count() - before; n != 1 {
		t.Errorf("a window after one client's 400: %d upstream requests, want 1", n)
	}
}

// A replica validating its own stale copy, while the shared tier holds an
// older one, must not put the shared tier's in memory over its own: the
// 304 would then find another entry than the one it validated, and not be
// stored, and every request would go upstream again.
func TestFleetOwnCopyIsWhatARevalidationKeeps(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, etagAnswer("max-age=1", func(*http.Request) string { return "v1" }))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	get(rs.ps[0], "/e")
	rs.ps[0].Wait()
	// An older copy in Redis than the replica's own.
	own := rs.entries()["/e"]
	older := *own
	older.ID = cache.NewID()
	older.RequestTime = own.RequestTime.Add(-time.Minute)
	older.ResponseTime = own.ResponseTime.Add(-time.Minute)
	store, err := redisstore.New(redisstore.Config{Addr: srv.URL, Prefix: rs.prefix, Timeout: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Set(context.Background(), "/e", &older, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Second)
	if r, _ := get(rs.ps[0], "/e"); r.Status != http.StatusOK || r.Body != "v1" {
		t.Fatalf("revalidation: %+v", r)
	}
	before := o.count()
	if r, _ := get(rs.ps[0], "/e"); !strings.Contains(r.CacheStatus, "hit") {
		t.Errorf("after its copy was revalidated: %+v, upstream +%d; want a hit", r, o.count()-before)
	}
}
