package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
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

// replicas are proxies that share one redis-server, each with its own
// memory, as corral replicas behind a load balancer do.
type replicas struct {
	t      *testing.T
	srv    *redistest.Server
	o      *origin
	clk    *clock
	prefix string
	cfg    Config
	fcfg   fleet.Config
	ps     []*Proxy
	fleets []*fleet.Fleet
}

var fleetNamespaces atomic.Int64

// newReplicas starts n replicas in front of o on srv. fcfg's zero fields
// take the test defaults: a namespace of the test's own, the test clock,
// short leases and re-checks.
func newReplicas(t *testing.T, srv *redistest.Server, o *origin, clk *clock, n int, cfg Config, fcfg fleet.Config) *replicas {
	t.Helper()
	if fcfg.Prefix == "" {
		fcfg.Prefix = "t" + strconv.FormatInt(fleetNamespaces.Add(1), 10) + ":"
	}
	if fcfg.Timeout == 0 {
		// The race detector and a busy machine slow Redis calls down;
		// the tests that need a short deadline set their own.
		fcfg.Timeout = time.Second
	}
	if fcfg.LeaseTTL == 0 {
		fcfg.LeaseTTL = 2 * time.Second
	}
	if fcfg.Recheck == 0 {
		fcfg.Recheck = 50 * time.Millisecond
	}
	fcfg.Now = clk.Now
	if fcfg.Logger == nil {
		fcfg.Logger = slog.New(slog.DiscardHandler)
	}
	rs := &replicas{t: t, srv: srv, o: o, clk: clk, prefix: fcfg.Prefix, cfg: cfg, fcfg: fcfg}
	for range n {
		rs.add()
	}
	return rs
}

// add starts one more replica, and returns it.
func (rs *replicas) add() *Proxy {
	rs.t.Helper()
	fcfg := rs.fcfg
	if fcfg.Client == nil && fcfg.Addr == "" {
		fcfg.Addr = rs.srv.URL
	}
	f, err := fleet.New(fcfg)
	if err != nil {
		rs.t.Fatal(err)
	}
	cfg := rs.cfg
	cfg.Fleet = f
	p := newTestProxy(rs.t, rs.o, rs.clk, cfg)
	rs.t.Cleanup(func() { f.Close() }) // after the proxy's Wait: cleanups run last first
	rs.ps = append(rs.ps, p)
	rs.fleets = append(rs.fleets, f)
	return p
}

// herd sends n concurrent GETs for path, spread over the replicas, and
// returns what each got.
func (rs *replicas) herd(n int, path string) []response {
	var wg sync.WaitGroup
	out := make([]response, n)
	for i := range n {
		wg.Go(func() { out[i], _ = get(rs.ps[i%len(rs.ps)], path) })
	}
	wg.Wait()
	return out
}

// requests is the sum of the replicas' client requests.
func (rs *replicas) requests() int64 {
	n := int64(0)
	for _, p := range rs.ps {
		n += p.stats.Requests.Load()
	}
	return n
}

// awaitLocalMark waits for the local-only mark that a lease holder's
// release, in the background, leaves beside key's entry in Redis.
func (rs *replicas) awaitLocalMark(key string) {
	rs.t.Helper()
	c := rs.srv.Client()
	defer c.Close()
	testwait.Until(rs.t, "the local-only mark", func() bool {
		return c.HExists(context.Background(), rs.key(key), "o").Val()
	})
}

// key is the Redis key of the entry under key.
func (rs *replicas) key(key string) string { return redisstore.EntryKey(rs.prefix, key) }

// entries returns the entries under the replicas' namespace in Redis, by key.
func (rs *replicas) entries() map[string]*cache.Entry {
	rs.t.Helper()
	c := rs.srv.Client()
	defer c.Close()
	ctx := context.Background()
	out := map[string]*cache.Entry{}
	// Entry keys are the prefix, a hash tag of 16 hex digits in braces,
	// "e:" and the cache key (redisstore's Layout).
	head := len(redisstore.EntryKey(rs.prefix, ""))
	keys, err := c.Keys(ctx, rs.prefix+"{*}e:*").Result()
	if err != nil {
		rs.t.Fatal(err)
	}
	for _, k := range keys {
		v, err := c.HGet(ctx, k, "v").Result()
		if err != nil {
			continue // expired since
		}
		e := new(cache.Entry)
		if err := e.UnmarshalBinary([]byte(v)); err != nil {
			rs.t.Fatalf("%s: %v", k, err)
		}
		out[k[head:]] = e
	}
	return out
}

// gatedOrigin answers cacheControl and body once open is closed.
func gatedOrigin(open <-chan struct{}, cacheControl, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		<-open
		w.Header().Set("Cache-Control", cacheControl)
		fmt.Fprint(w, body, r.URL.Path)
	}
}

func TestFleetColdStampedeOneUpstreamRequest(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	rs := newReplicas(t, srv, o, clk, 3, Config{}, fleet.Config{})
	const clients, rounds = 1000, 20
	for round := range rounds {
		// The origin answers once every request is in a replica: they
		// all meet the one fetch, on three replicas.
		if n := rs.herdOnTrouble(fmt.Sprintf("/cold/%d", round), clients, func() {}); n != 1 {
			t.Fatalf("round %d: %d upstream requests for %d cold requests over 3 replicas, want 1", round, n, clients)
		}
	}
}

// TestFleetOnClusterColdStampede: on a Redis Cluster, a cold herd over
// three replicas makes one upstream request per key, for keys whose
// entries and leases sit in different slots.
func TestFleetOnClusterColdStampede(t *testing.T) {
	cl := redistest.StartCluster(t)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	rs := newReplicas(t, nil, o, clk, 3, Config{}, fleet.Config{Addr: cl.URL})
	raw := cl.Client()
	defer raw.Close()
	ctx := context.Background()
	var paths []string
	slots := map[int64]bool{}
	for i := 0; len(paths) < 5; i++ {
		path := fmt.Sprintf("/cold/%d", i)
		slot, err := raw.ClusterKeySlot(ctx, redisstore.EntryKey(rs.prefix, path)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !slots[slot] {
			slots[slot] = true
			paths = append(paths, path)
		}
	}
	const clients = 300
	for _, path := range paths {
		if n := rs.herdOnTrouble(path, clients, func() {}); n != 1 {
			t.Fatalf("%s: %d upstream requests for %d cold requests over 3 replicas, want 1", path, n, clients)
		}
	}
}

func TestFleetPollersOneRequestPerWindow(t *testing.T) {
	srv := redistest.Start(t, false)
	const windows, perReplica = 10, 30
	run := func(shared bool) int64 {
		clk := newClock()
		o := newOrigin(t, clk, answer("max-age=10", "stats"))
		var ps []*Proxy
		if shared {
			ps = newReplicas(t, srv, o, clk, 3, Config{}, fleet.Config{}).ps
		} else {
			for range 3 {
				ps = append(ps, newTestProxy(t, o, clk, Config{}))
			}
		}
		rs := &replicas{ps: ps}
		for range windows {
			for _, r := range rs.herd(3*perReplica, "/api/stats") {
				if r.Status != http.StatusOK {
					t.Fatalf("status %d", r.Status)
				}
			}
			clk.Advance(10 * time.Second)
		}
		return o.count()
	}
	alone, shared := run(false), run(true)
	t.Logf("%d windows, 3 replicas: %d upstream requests alone, %d sharing Redis", windows, alone, shared)
	if shared > windows+1 {
		t.Errorf("sharing Redis: %d upstream requests in %d windows, want at most %d", shared, windows, windows+1)
	}
	if alone < 2*windows {
		t.Errorf("alone: %d upstream requests in %d windows; the test no longer shows what sharing saves", alone, windows)
	}
}

func TestFleetLateReplicaAnswersFromRedis(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "stats"))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{})
	if r, _ := get(rs.ps[0], "/api/stats"); r.Status != http.StatusOK {
		t.Fatalf("first fetch: %d", r.Status)
	}
	clk.Advance(7 * time.Second)
	late := rs.add() // a replica that starts now, empty
	r, _ := get(late, "/api/stats")
	if n := o.count(); n != 1 {
		t.Errorf("%d upstream requests, want 1: the late replica went upstream", n)
	}
	want := response{Status: 200, Body: "stats", CacheStatus: "corral; hit; collapsed; ttl=53; detail=shared-tier", Age: "7"}
	if r != want {
		t.Errorf("late replica: %+v\nwant %+v", r, want)
	}
	// Now in its memory: a hit, with no further call to Redis.
	if r, _ := get(late, "/api/stats"); r.CacheStatus != "corral; hit; ttl=53" || r.Age != "7" {
		t.Errorf("second request: %+v", r)
	}
}

func TestFleetSharesNothingPrivate(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cookie":
			w.Header().Set("Set-Cookie", "session=secret")
			w.Header().Set("Cache-Control", "public, max-age=60")
		case "/private":
			w.Header().Set("Cache-Control", "private, max-age=60")
		case "/auth":
			w.Header().Set("Cache-Control", "public, max-age=60")
		case "/public":
			w.Header().Set("Cache-Control", "max-age=60")
		}
		fmt.Fprint(w, "for ", r.Header.Get("Authorization"))
	})
	rs := newReplicas(t, srv, o, clk, 2, Config{}, fleet.Config{})
	// Answers with Set-Cookie and private ones are never stored, so they
	// never reach share; its own guard against Set-Cookie and credentials
	// is a second line, which TestFleetCredentialedBodyNeverSharedThrough304
	// reaches.
	for _, p := range rs.ps {
		get(p, "/cookie")
		get(p, "/private")
		get(p, "/auth", "Authorization", "Bearer alice")
		get(p, "/public")
	}
	entries := rs.entries()
	if e := entries["/public"]; e == nil || e.Kind != cache.Response {
		t.Fatalf("the public response is not in Redis (%v): the test checks nothing", entries)
	}
	for k, e := range entries {
		if e.Kind != cache.Response {
			continue
		}
		if k != "/public" {
			t.Errorf("Redis holds a response under %q: %v", k, e.Header)
		}
		if e.Header["Set-Cookie"] != nil || strings.Contains(e.Header.Get("Cache-Control"), "private") || strings.Contains(string(e.Body), "alice") {
			t.Errorf("Redis holds %q: %v %q", k, e.Header, e.Body)
		}
	}
}

func TestFleetMemoryHitsMakeNoRedisCall(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "stats"))
	client := srv.Client()
	t.Cleanup(func() { client.Close() })
	var commands atomic.Int64
	// Every command but the SCRIPT LOADs a Fleet sends once, in the
	// background, when it starts.
	client.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if cmd.Name() != "script" {
			commands.Add(1)
		}
		return next(ctx, cmd)
	}))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{Client: client})
	get(rs.ps[0], "/api/stats") // the miss: a lookup, a lease, a write, a release
	if commands.Load() == 0 {
		t.Fatal("the hook counted no command for a miss: it counts nothing")
	}
	// The lease goes back in the background.
	testwait.Until(t, "the lease's release", func() bool {
		c := srv.Client()
		defer c.Close()
		return c.Exists(context.Background(), redisstore.LeaseKey(rs.prefix, "/api/stats")).Val() == 0
	})
	before := commands.Load()
	for range 10000 {
		if r, _ := get(rs.ps[0], "/api/stats"); r.CacheStatus != "corral; hit; ttl=60" {
			t.Fatalf("not a memory hit: %+v", r)
		}
	}
	if n := commands.Load() - before; n != 0 {
		t.Errorf("10,000 memory hits made %d Redis commands, want 0", n)
	}
}

func TestFleetPurgeReachesEveryReplica(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "v1"))
	rs := newReplicas(t, srv, o, clk, 3, Config{}, fleet.Config{})
	for _, p := range rs.ps {
		if r, _ := get(p, "/api/stats"); r.Body != "v1" {
			t.Fatalf("%+v", r)
		}
	}
	o.set(answer("max-age=60", "v2"))
	rs.ps[0].Purge("/api/stats", false)
	clk.Advance(time.Second) // fetches that begin at the purge's moment may not store
	for i, p := range rs.ps {
		testwait.Until(t, fmt.Sprintf("replica %d to drop the purged response", i), func() bool {
			r, _ := get(p, "/api/stats")
			return r.Body == "v2"
		})
	}
	if n := o.count(); n != 2 {
		t.Errorf("%d upstream requests, want 2: one before the purge, one after for all three", n)
	}
}

func TestFleetLeaseOutlivedByFetchIsRenewed(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	open := make(chan struct{})
	o := newOrigin(t, clk, gatedOrigin(open, "max-age=60", "slow "))
	rs := newReplicas(t, srv, o, clk, 2, Config{}, fleet.Config{LeaseTTL: 300 * time.Millisecond})
	first := make(chan response)
	go func() { r, _ := get(rs.ps[0], "/slow"); first <- r }()
	testwait.Until(t, "the fetch to start", func() bool { return o.count() == 1 })
	second := make(chan response)
	go func() { r, _ := get(rs.ps[1], "/slow"); second <- r }()
	// The origin takes four lease lifetimes: the holder must renew, or the
	// second replica takes the lease over and asks too.
	time.Sleep(1200 * time.Millisecond)
	close(open)
	for _, r := range []response{testwait.Receive(t, first, "the holder"), testwait.Receive(t, second, "the waiter")} {
		if r.Status != http.StatusOK || r.Body != "slow /slow" {
			t.Errorf("%+v", r)
		}
	}
	if n := o.count(); n != 1 {
		t.Errorf("%d upstream requests, want 1: the lease was not renewed", n)
	}
}

// hangingTransport never answers: its requests end with their context.
type hangingTransport struct{ started chan struct{} }

func (h hangingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h.started <- struct{}{}
	<-r.Context().Done()
	return nil, r.Context().Err()
}

func TestFleetHolderDiesOthersTakeOver(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "stats"))
	const lease = 300 * time.Millisecond
	rs := newReplicas(t, srv, o, clk, 0, Config{}, fleet.Config{LeaseTTL: lease})
	hang := hangingTransport{started: make(chan struct{}, 1)}
	rs.cfg.Transport = hang
	rs.cfg.UpstreamTimeout = 3 * time.Second // ends the hanging fetch, for the test's cleanup
	holder := rs.add()
	rs.cfg.Transport, rs.cfg.UpstreamTimeout = nil, 0
	others := []*Proxy{rs.add(), rs.add()}

	go get(holder, "/api/stats")
	testwait.Receive(t, hang.started, "the holder's fetch")
	// The holder dies: its link to Redis goes, renewals and release with
	// it. Its fetch hangs on.
	rs.fleets[0].Close()
	start := time.Now()
	done := make(chan response, 20)
	for i := range 20 {
		go func() { r, _ := get(others[i%2], "/api/stats"); done <- r }()
	}
	for range 20 {
		if r := testwait.Receive(t, done, "a waiter"); r.Status != http.StatusOK || r.Body != "stats" {
			t.Errorf("%+v", r)
		}
	}
	took := time.Since(start)
	if n := o.count(); n > 2 || n < 1 {
		t.Errorf("%d upstream requests, want 1 or 2", n)
	}
	// Within the lease plus a re-check, with room for a busy machine.
	if took > lease+rs.fcfg.Recheck+2*time.Second {
		t.Errorf("the waiters took %v after the holder died (lease %v)", took, lease)
	}
}

// herdOnTrouble sends a herd for path over rs while trouble happens to
// their Redis: the origin holds the answer until every request is in,
// trouble strikes, then the origin answers. It fails the test on any
// client error, and returns the upstream requests the herd cost.
func (rs *replicas) herdOnTrouble(path string, n int, trouble func()) int64 {
	rs.t.Helper()
	open := make(chan struct{})
	rs.o.set(gatedOrigin(open, "max-age=60", "stats "))
	before, in := rs.o.count(), rs.requests()
	done := make(chan []response)
	go func() { done <- rs.herd(n, path) }()
	testwait.Until(rs.t, "the herd to arrive", func() bool { return rs.requests()-in == int64(n) })
	trouble()
	close(open)
	for i, r := range testwait.Receive(rs.t, done, "the herd") {
		if r.Status != http.StatusOK || r.Body != "stats "+path {
			rs.t.Fatalf("client %d: %d %q", i, r.Status, r.Body)
		}
	}
	return rs.o.count() - before
}

func TestFleetRedisTroubleCostsClientsNothing(t *testing.T) {
	admin := func(t *testing.T, srv *redistest.Server, args ...any) {
		t.Helper()
		c := srv.Client()
		defer c.Close()
		if err := c.Do(context.Background(), args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	for _, tc := range []struct {
		name    string
		trouble func(t *testing.T, srv *redistest.Server)
		heal    func(t *testing.T, srv *redistest.Server)
	}{
		{"killed", func(t *testing.T, srv *redistest.Server) { srv.Kill() }, func(t *testing.T, srv *redistest.Server) { srv.Restart() }},
		{"restarted", func(t *testing.T, srv *redistest.Server) { srv.Restart() }, func(*testing.T, *redistest.Server) {}},
		{"paused", func(t *testing.T, srv *redistest.Server) { admin(t, srv, "client", "pause", 1500, "all") }, func(t *testing.T, srv *redistest.Server) {}},
		{"blocked", func(t *testing.T, srv *redistest.Server) {
			c := srv.Client()
			sleeping := make(chan error, 1)
			go func() {
				defer c.Close()
				sleeping <- c.Do(context.Background(), "debug", "sleep", "1.5").Err()
			}()
			// Blocked once a PING from another client goes unanswered.
			testwait.Until(t, "DEBUG SLEEP to block Redis", func() bool {
				select {
				case err := <-sleeping:
					t.Fatalf("DEBUG SLEEP: %v", err)
				default:
				}
				ping := srv.Client()
				defer ping.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				return ping.Ping(ctx).Err() != nil
			})
		}, func(*testing.T, *redistest.Server) {}},
		{"full", func(t *testing.T, srv *redistest.Server) {
			admin(t, srv, "config", "set", "maxmemory-policy", "noeviction")
			admin(t, srv, "config", "set", "maxmemory", "1")
		}, func(t *testing.T, srv *redistest.Server) { admin(t, srv, "config", "set", "maxmemory", "0") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, false)
			clk := newClock()
			o := newOrigin(t, clk, answer("max-age=60", "stats"))
			rs := newReplicas(t, srv, o, clk, 3, Config{}, fleet.Config{
				Timeout: 50 * time.Millisecond, BreakerCooldown: 100 * time.Millisecond,
			})
			if n := rs.herdOnTrouble("/before", 300, func() {}); n != 1 {
				t.Fatalf("before the trouble: %d upstream requests, want 1", n)
			}
			// Mid-stampede: every client in, the fetches under way.
			if n := rs.herdOnTrouble("/during", 300, func() { tc.trouble(t, srv) }); n > 3 {
				t.Errorf("during: %d upstream requests from 3 replicas, want at most 3 (each coalesces its own)", n)
			}
			if n := rs.herdOnTrouble("/while", 300, func() {}); n > 3 {
				t.Errorf("while in trouble: %d upstream requests, want at most 3", n)
			}
			tc.heal(t, srv)
			i := 0
			testwait.Until(t, "the fleet to share one fetch again", func() bool {
				i++
				return rs.herdOnTrouble(fmt.Sprintf("/after/%d", i), 30, func() {}) == 1
			})
		})
	}
}
