package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"corral/internal/testwait"
)

// herd sends n concurrent GETs for path through h, released together, and
// returns what each client saw in arrival order. hdr builds client i's
// request headers. Before the herd is let go, entered has received n
// values: one per client inside the handler.
func herd(t *testing.T, p http.Handler, n int, path string, hdr func(i int) []string, entered chan<- struct{}) []response {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if entered != nil {
			entered <- struct{}{}
		}
		p.ServeHTTP(w, r)
	})
	start := make(chan struct{})
	out := make([]response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var hs []string
			if hdr != nil {
				hs = hdr(i)
			}
			out[i], _ = get(h, path, hs...)
		}()
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	testwait.Receive(t, done, "the herd to finish")
	return out
}

// releaseWhenEntered returns a channel for herd's entered and closes
// release once n clients are inside the handler: the origin, holding its
// answer until release, then meets the whole herd in one flight rather
// than a stored entry.
func releaseWhenEntered(n int, release chan struct{}) chan struct{} {
	entered := make(chan struct{}, n)
	go func() {
		for range n {
			<-entered
		}
		close(release)
	}()
	return entered
}

func TestColdHerdMakesOneUpstreamRequest(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, `{"visitors":1}`)
	})
	p := newTestProxy(t, o, clk, Config{})

	const n = 1000
	entered := releaseWhenEntered(n, release)
	got := herd(t, p, n, "/api/stats", nil, entered)

	if c := o.count(); c != 1 {
		t.Errorf("origin saw %d requests for %d cold clients, want 1", c, n)
	}
	for i, r := range got {
		if r.Status != 200 || r.Body != `{"visitors":1}` {
			t.Fatalf("client %d got %d %q, want 200 with the origin's body", i, r.Status, r.Body)
		}
	}
	if c, h := p.Stats().Coalesced.Load(), p.Stats().Hits.Load(); c+h != n-1 {
		t.Errorf("coalesced %d + hits %d, want %d: every client but the leader shares its fetch", c, h, n-1)
	}
}

// A popular key without stale-while-revalidate: a hit in the last moments
// of its freshness refreshes it in the background, so that the request
// just after it expires finds the new answer rather than wait for it.
// Only there: earlier hits, an answer with stale-while-revalidate, or an
// operator who turned it off, leave the refetch to expiry.
func TestRefreshAheadOfExpiry(t *testing.T) {
	tests := []struct {
		name         string
		cc           string
		cfg          Config
		hitAt        time.Duration // after the first fetch; its fetch took no time
		wantUpstream int64         // after the hit
	}{
		{"in the last 10 ms", "max-age=10", Config{}, 9995 * time.Millisecond, 2},
		{"earlier", "max-age=10", Config{}, 9900 * time.Millisecond, 1},
		{"with stale-while-revalidate", "max-age=10, stale-while-revalidate=5", Config{}, 9995 * time.Millisecond, 1},
		{"turned off", "max-age=10", Config{NoRefreshAhead: true}, 9995 * time.Millisecond, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			var version atomic.Int64
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", tt.cc)
				fmt.Fprintf(w, "v%d", version.Add(1))
			})
			p := newTestProxy(t, o, clk, tt.cfg)
			get(p, "/api/stats")
			clk.Advance(tt.hitAt)
			if r, _ := get(p, "/api/stats"); r.Body != "v1" || !strings.HasPrefix(r.CacheStatus, "corral; hit;") {
				t.Errorf("hit at %v: %+v, want v1 from the cache", tt.hitAt, r)
			}
			p.Wait()
			if got := o.count(); got != tt.wantUpstream {
				t.Errorf("upstream requests after the hit: %d, want %d", got, tt.wantUpstream)
			}
			if tt.wantUpstream == 1 {
				return
			}
			// Just past the first answer's expiry: the second, fresh.
			clk.Advance(10*time.Second - tt.hitAt + time.Millisecond)
			want := response{Status: 200, Body: "v2", Age: "0", CacheStatus: "corral; hit; ttl=9"}
			if r, _ := get(p, "/api/stats"); !cmp.Equal(want, r) {
				t.Errorf("just past the first answer's expiry: %s", cmp.Diff(want, r))
			}
			// One refresh ahead per answer: another hit of the new one,
			// not in its last moments, starts none.
			get(p, "/api/stats")
			p.Wait()
			if got := o.count(); got != 2 {
				t.Errorf("upstream requests in all: %d, want 2", got)
			}
		})
	}
}

func TestStaleWhileRevalidateServesAtOnceAndRefreshesOnce(t *testing.T) {
	clk := newClock()
	var (
		mu      sync.Mutex
		version = 1
	)
	arrived := make(chan struct{}, 10)
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		v := version
		mu.Unlock()
		if v > 1 {
			arrived <- struct{}{}
			<-release
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=10")
		fmt.Fprintf(w, "v%d", v)
	})
	p := newTestProxy(t, o, clk, Config{})

	if r, _ := get(p, "/api/stats"); r.Body != "v1" {
		t.Fatalf("first request got %q, want v1", r.Body)
	}
	mu.Lock()
	version = 2
	mu.Unlock()
	clk.Advance(3 * time.Second) // stale by 2s, inside the 10s window

	// The origin holds the refresh until the whole herd is answered: a
	// client that waited for it would never finish.
	got := herd(t, p, 200, "/api/stats", nil, nil)
	want := response{Status: 200, Body: "v1", Age: "3", CacheStatus: "corral; hit; ttl=-2; detail=stale-while-revalidate"}
	for i, r := range got {
		if diff := cmp.Diff(want, r); diff != "" {
			t.Fatalf("client %d during the stale window (-want +got):\n%s", i, diff)
		}
	}
	testwait.Receive(t, arrived, "the background refresh to reach the origin")
	close(release)
	p.Wait()

	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests, want 2: the first fetch and one refresh for the whole herd", c)
	}
	if n := p.Stats().Refreshes.Load(); n != 1 {
		t.Errorf("%d background refreshes started, want 1", n)
	}
	r, _ := get(p, "/api/stats")
	if diff := cmp.Diff(response{Status: 200, Body: "v2", Age: "0", CacheStatus: "corral; hit; ttl=1"}, r); diff != "" {
		t.Errorf("after the refresh (-want +got):\n%s", diff)
	}
}

func TestPastStaleWindowHerdCoalescesIntoOneFetch(t *testing.T) {
	clk := newClock()
	var (
		mu      sync.Mutex
		version = 1
	)
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		v := version
		mu.Unlock()
		if v > 1 {
			<-release
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=10")
		fmt.Fprintf(w, "v%d", v)
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/api/stats")
	mu.Lock()
	version = 2
	mu.Unlock()
	clk.Advance(12 * time.Second) // past max-age and the stale window

	const n = 300
	entered := releaseWhenEntered(n, release)
	got := herd(t, p, n, "/api/stats", nil, entered)
	for i, r := range got {
		if r.Status != 200 || r.Body != "v2" {
			t.Fatalf("client %d got %d %q, want the revalidated v2", i, r.Status, r.Body)
		}
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests, want 2: one synchronous fetch for the whole herd", c)
	}
	if p.Stats().Refreshes.Load() != 0 {
		t.Errorf("a background refresh ran past the stale window")
	}
}

func TestClientLeavingMidFetchDoesNotFailOthers(t *testing.T) {
	clk := newClock()
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	originCtxErr := make(chan error, 1)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		originCtxErr <- r.Context().Err()
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "shared")
	})
	p := newTestProxy(t, o, clk, Config{})

	ctx, cancel := context.WithCancel(context.Background())
	leaderDone := make(chan response, 1)
	go func() {
		req := httptest.NewRequest("GET", "/api/stats", nil).WithContext(ctx)
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		leaderDone <- response{Status: rec.Code}
	}()
	testwait.Receive(t, arrived, "the leader's fetch to reach the origin")

	followerDone := make(chan response, 1)
	entered := make(chan struct{})
	go func() {
		r, _ := get(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			p.ServeHTTP(w, r)
		}), "/api/stats")
		followerDone <- r
	}()
	<-entered
	cancel() // the leader hangs up while the origin is still working
	testwait.Receive(t, leaderDone, "the leader to return after hanging up")
	close(release)

	if err := testwait.Receive(t, originCtxErr, "the origin to answer"); err != nil {
		t.Errorf("the origin's request was cancelled (%v) when one client left", err)
	}
	if r := testwait.Receive(t, followerDone, "the follower"); r.Status != 200 || r.Body != "shared" {
		t.Errorf("follower got %d %q, want 200 shared", r.Status, r.Body)
	}
	if r, _ := get(p, "/api/stats"); !strings.Contains(r.CacheStatus, "hit") {
		t.Errorf("next request: Cache-Status %q, want a hit: the response was not stored", r.CacheStatus)
	}
	if c := o.count(); c != 1 {
		t.Errorf("origin saw %d requests, want 1", c)
	}
}

func TestHungOriginIsBoundedByTimeout(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	clk := newClock()
	gone := make(chan struct{}, 1)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // hangs until corral gives up
		gone <- struct{}{}
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 100 * time.Millisecond})

	got := herd(t, p, 20, "/slow", nil, nil)
	for i, r := range got {
		want := response{Status: 504, Body: "Gateway Timeout\n", CacheStatus: "corral; fwd=uri-miss; detail=upstream-timeout"}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Fatalf("client %d (-want +got):\n%s", i, diff)
		}
	}
	testwait.Receive(t, gone, "the origin's request to be cancelled")
	if c := o.count(); c != 1 {
		t.Errorf("origin saw %d requests, want 1", c)
	}
}

func TestResetMidBodyStoresNothing(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops mid-body
	})
	p := newTestProxy(t, o, clk, Config{})

	r, _ := get(p, "/x")
	if r.Status != http.StatusBadGateway {
		t.Errorf("client got %d, want 502 for a body cut short", r.Status)
	}
	o.set(answer("max-age=60", "whole"))
	if r, _ := get(p, "/x"); r.Body != "whole" {
		t.Errorf("after the reset got %q, want the whole new body: the partial one was stored", r.Body)
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests, want 2", c)
	}
}

func TestMalformedCacheControl(t *testing.T) {
	tests := []struct {
		name         string
		cacheControl string
		wantUpstream int64 // after two requests
		wantFirst    string
	}{
		{"bad max-age next to private: private still holds", "max-age=abc, private", 2, "corral; fwd=uri-miss; fwd-status=200; detail=private"},
		{"unterminated private field list: private, unqualified", `private="Set-Cookie`, 2, "corral; fwd=uri-miss; fwd-status=200; detail=private"},
		{"bad extension does not hide max-age", `max-age=60, foo="bar`, 1, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"},
		{"bad max-age alone: stale at once, nothing to keep", "max-age=abc", 2, "corral; fwd=uri-miss; fwd-status=200"},
		{"duplicate max-age disagreeing: stale", "max-age=60, max-age=10", 2, "corral; fwd=uri-miss; fwd-status=200"},
		{"punctuation only: no freshness", `,;=,"`, 2, "corral; fwd=uri-miss; fwd-status=200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, answer(tt.cacheControl, "body"))
			p := newTestProxy(t, o, clk, Config{})
			first, _ := get(p, "/x")
			second, _ := get(p, "/x")
			if first.Status != 200 || second.Status != 200 || second.Body != "body" {
				t.Errorf("got %d then %d %q, want 200s with the body", first.Status, second.Status, second.Body)
			}
			if first.CacheStatus != tt.wantFirst {
				t.Errorf("first Cache-Status %q, want %q", first.CacheStatus, tt.wantFirst)
			}
			if c := o.count(); c != tt.wantUpstream {
				t.Errorf("origin saw %d requests for 2 clients, want %d", c, tt.wantUpstream)
			}
		})
	}
}

func TestUnshareableResponseIsNeverShared(t *testing.T) {
	clk := newClock()
	const n = 100
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		<-release
		user := r.Header.Get("X-User")
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Set-Cookie", "session="+user)
		io.WriteString(w, "hello "+user)
	})
	p := newTestProxy(t, o, clk, Config{})
	entered := releaseWhenEntered(n, release)
	user := func(i int) []string { return []string{"X-User", fmt.Sprint("u", i)} }
	got := herd(t, p, n, "/me", user, entered)
	for i, r := range got {
		if want := fmt.Sprint("hello u", i); r.Body != want {
			t.Errorf("client %d got %q, want %q: another client's answer", i, r.Body, want)
		}
	}
	if c := o.count(); c != n {
		t.Errorf("origin saw %d requests, want %d: each client its own", c, n)
	}

	// The key is now known to be unshareable: the next client goes
	// straight through with its own request.
	r, h := get(p, "/me", user(7)...)
	if r.Body != "hello u7" || h.Get("Set-Cookie") != "session=u7" {
		t.Errorf("later client got %q with cookie %q", r.Body, h.Get("Set-Cookie"))
	}
	if want := "corral; fwd=miss; fwd-status=200; detail=uncacheable"; r.CacheStatus != want {
		t.Errorf("Cache-Status %q, want %q", r.CacheStatus, want)
	}
}

func TestHitHeaders(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "max-age=60")
		h.Set("Content-Type", "application/json")
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		h.Set("Keep-Alive", "timeout=5")
		io.WriteString(w, "{}")
	})
	p := newTestProxy(t, o, clk, Config{})
	miss, _ := get(p, "/x")
	clk.Advance(7 * time.Second)
	hit, h := get(p, "/x")

	if diff := cmp.Diff(response{Status: 200, Body: "{}", CacheStatus: "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}, miss); diff != "" {
		t.Errorf("miss (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(response{Status: 200, Body: "{}", Age: "7", CacheStatus: "corral; hit; ttl=53"}, hit); diff != "" {
		t.Errorf("hit (-want +got):\n%s", diff)
	}
	for _, f := range []string{"Connection", "X-Hop", "Keep-Alive"} {
		if v := h.Get(f); v != "" {
			t.Errorf("hop-by-hop %s: %q reached the client", f, v)
		}
	}
	if got := h.Get("Via"); got != "1.1 corral" {
		t.Errorf("Via %q, want 1.1 corral", got)
	}
	if got := h.Get("Content-Length"); got != "2" {
		t.Errorf("Content-Length %q, want 2", got)
	}

	// A client's header map is its own: what a handler wrapping corral
	// does to it changes nothing stored.
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
	rec.Header()["Content-Type"][0] = "text/evil"
	rec.Header()["Cache-Control"][0] = "private"
	_, again := get(p, "/x")
	if got := again.Get("Content-Type"); got != "application/json" {
		t.Errorf("stored Content-Type became %q after a client changed its copy", got)
	}
	if got := again.Get("Cache-Control"); got != "max-age=60" {
		t.Errorf("stored Cache-Control became %q after a client changed its copy", got)
	}
}

func TestHeadIsAnsweredFromStoredGet(t *testing.T) {
	clk := newClock()
	methods := make(chan string, 10)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		methods <- r.Method
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "hello")
	})
	p := newTestProxy(t, o, clk, Config{})

	head, h := do(p, http.MethodHead, "/x")
	if head.Status != 200 || head.Body != "" || h.Get("Content-Length") != "5" {
		t.Errorf("cold HEAD got %d %q Content-Length %q, want 200, no body, 5", head.Status, head.Body, h.Get("Content-Length"))
	}
	if m := <-methods; m != http.MethodGet {
		t.Errorf("cold HEAD went upstream as %s, want GET so the answer can be stored", m)
	}
	if r, _ := get(p, "/x"); r.Body != "hello" || !strings.Contains(r.CacheStatus, "hit") {
		t.Errorf("GET after HEAD got %q (%s), want a hit", r.Body, r.CacheStatus)
	}
	if head, _ := do(p, http.MethodHead, "/x"); head.Body != "" || !strings.Contains(head.CacheStatus, "hit") {
		t.Errorf("warm HEAD got body %q (%s), want a hit without body", head.Body, head.CacheStatus)
	}
	if c := o.count(); c != 1 {
		t.Errorf("origin saw %d requests, want 1", c)
	}
}

func TestUnsafeMethodsPassThroughUntouched(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Cache-Control", "max-age=60")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "%s %s", r.Method, body)
	})
	p := newTestProxy(t, o, clk, Config{})
	for range 2 {
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader("item=1"))
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		got := response{Status: rec.Code, Body: rec.Body.String(), CacheStatus: rec.Header().Get("Cache-Status")}
		want := response{Status: 201, Body: "POST item=1", CacheStatus: "corral; fwd=method; fwd-status=201"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("POST (-want +got):\n%s", diff)
		}
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests for 2 POSTs, want 2", c)
	}
}

func TestVariantsAreCoalescedSeparately(t *testing.T) {
	clk := newClock()
	const n = 200
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Encoding")
		io.WriteString(w, "encoding="+r.Header.Get("Accept-Encoding"))
	})
	p := newTestProxy(t, o, clk, Config{})
	entered := releaseWhenEntered(n, release)
	enc := func(i int) string { return []string{"gzip", "br"}[i%2] }
	got := herd(t, p, n, "/x", func(i int) []string { return []string{"Accept-Encoding", enc(i)} }, entered)
	for i, r := range got {
		if want := "encoding=" + enc(i); r.Body != want {
			t.Fatalf("client %d got %q, want %q: another variant's body", i, r.Body, want)
		}
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests, want 2: one per variant", c)
	}
}

func TestStaleIfErrorServesStoredOnOriginFailure(t *testing.T) {
	tests := []struct {
		name         string
		cacheControl string
		want         response
	}{
		{"RFC 5861 4: within stale-if-error", "max-age=1, stale-if-error=60",
			response{Status: 200, Body: "good", Age: "5", CacheStatus: "corral; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error"}},
		{"RFC 5861 4: no stale-if-error, the error passes", "max-age=1",
			response{Status: 503, Body: "down", CacheStatus: "corral; fwd=stale; fwd-status=503; detail=error-status"}},
		{"RFC 9111 5.2.2.2: must-revalidate forbids stale on error", "max-age=1, stale-if-error=60, must-revalidate",
			response{Status: 503, Body: "down", CacheStatus: "corral; fwd=stale; fwd-status=503; detail=error-status"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, answer(tt.cacheControl, "good"))
			p := newTestProxy(t, o, clk, Config{})
			get(p, "/x")
			clk.Advance(5 * time.Second)
			o.set(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "down")
			})
			got, _ := get(p, "/x")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestAuthorizedResponsesAreNotSharedWithoutPublic(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "for "+r.Header.Get("Authorization"))
	})
	p := newTestProxy(t, o, clk, Config{})
	a, _ := get(p, "/me", "Authorization", "Bearer alice")
	b, _ := get(p, "/me", "Authorization", "Bearer bob")
	if a.Body != "for Bearer alice" || b.Body != "for Bearer bob" {
		t.Errorf("got %q and %q, want each client's own answer", a.Body, b.Body)
	}
	if want := "corral; fwd=uri-miss; fwd-status=200; detail=authorization"; a.CacheStatus != want {
		t.Errorf("Cache-Status %q, want %q", a.CacheStatus, want)
	}

	// Anonymous clients still share one cached answer: credentials made
	// the answers above private, not the resource.
	get(p, "/me")
	if anon, _ := get(p, "/me"); anon.Body != "for " || !strings.Contains(anon.CacheStatus, "hit") {
		t.Errorf("anonymous client got %q (%s), want a cached answer", anon.Body, anon.CacheStatus)
	}
	if c := o.count(); c != 3 {
		t.Errorf("origin saw %d requests, want 3", c)
	}
}

func TestFailedRefreshBacksOffAsRetryAfterSays(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=1, stale-while-revalidate=600", "good"))
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/x")
	o.set(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	clk.Advance(2 * time.Second)
	if r, _ := get(p, "/x"); r.Body != "good" {
		t.Fatalf("stale hit got %q, want the stale body", r.Body)
	}
	p.Wait() // the refresh got its 503

	for _, step := range []time.Duration{0, 10 * time.Second, 19 * time.Second} {
		clk.Advance(step)
		if r, _ := get(p, "/x"); r.Body != "good" {
			t.Fatalf("stale hit during back-off got %q, want the stale body", r.Body)
		}
		p.Wait()
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests within Retry-After, want 2: no refresh before it passed", c)
	}
	clk.Advance(2 * time.Second) // 31s after the 503
	get(p, "/x")
	p.Wait()
	if c := o.count(); c != 3 {
		t.Errorf("origin saw %d requests after Retry-After passed, want 3: one new refresh", c)
	}
}

func TestRefreshThatTurnsPrivateStopsStaleServing(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=1, stale-while-revalidate=600", "public"))
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/x")
	o.set(answer("private", "mine"))
	clk.Advance(2 * time.Second)
	get(p, "/x") // stale hit; the refresh learns the answer is private now
	p.Wait()
	if r, _ := get(p, "/x"); r.Body != "mine" {
		t.Errorf("after a private refresh got %q, want the origin's own answer, not the stale copy", r.Body)
	}
}

type panickyTransport struct{}

func (panickyTransport) RoundTrip(*http.Request) (*http.Response, error) { panic("transport bug") }

func TestPanicInFetchIsAnErrorNotACrash(t *testing.T) {
	u, _ := url.Parse("http://127.0.0.1:1")
	p, err := New(Config{Upstream: u, Transport: panickyTransport{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range herd(t, p, 20, "/x", nil, nil) {
		if r.Status != http.StatusBadGateway {
			t.Fatalf("got %d, want 502 from a fetch that panicked", r.Status)
		}
	}
}

// TestRefreshReadsNoRequestAfterItsHandler: a background refresh outlives
// the handler of the stale hit that started it, and starts from what that
// request said then (of the fields the response varies on, the only ones
// a refresh carries). The client's request is changed as soon as its
// handler returns: under -race, a refresh that still read it would race,
// and the origin would see what the request became.
func TestRefreshReadsNoRequestAfterItsHandler(t *testing.T) {
	clk := newClock()
	langs := make(chan string, 2)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		langs <- r.Header.Get("Accept-Language")
		w.Header().Set("Vary", "Accept-Language")
		answer("max-age=1, stale-while-revalidate=60", "x")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/a", "Accept-Language", "en")
	testwait.Receive(t, langs, "the first fetch")
	clk.Advance(2 * time.Second)

	req := httptest.NewRequest(http.MethodGet, "/a", nil)
	req.Header.Set("Accept-Language", "en")
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	req.Header.Set("Accept-Language", "fr")
	req.RemoteAddr = "198.51.100.7:1234"
	p.Wait()

	if got, want := rec.Header().Get("Cache-Status"), "corral; hit; ttl=-1; detail=stale-while-revalidate"; got != want {
		t.Errorf("stale hit: Cache-Status %q, want %q", got, want)
	}
	if got := testwait.Receive(t, langs, "the refresh"); got != "en" {
		t.Errorf("the refresh sent Accept-Language %q, want en: the request as its handler saw it", got)
	}
}
