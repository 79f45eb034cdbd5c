package proxy

import (
	stdcmp "cmp"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/freshness"
)

// Issue 9, item 8: request directives that defeat the shield. Under
// -request-no-cache=ignore, min-fresh=999999 sent every request upstream;
// under revalidate, reloads on 50 keys made 7,778 upstream requests in
// 10 s, one at a time per key but without a bound on the rate.

// forcing are the request fields that ask for a fresher answer than a
// stored, fresh response: each would send a request upstream.
var forcing = [][]string{
	{"Cache-Control", "no-cache"},
	{"Pragma", "no-cache"},
	{"Cache-Control", "max-age=0"},
	{"Cache-Control", "max-age=1"},
	{"Cache-Control", "min-fresh=999999"},
	{"Cache-Control", "no-cache, max-age=0, min-fresh=999999"},
}

// validatingOrigin answers max-age=60 with an ETag per path, 304 to an
// If-None-Match that matches, and records whether each request was
// conditional.
type validatingOrigin struct {
	*origin
	conditional, plain atomic.Int64
}

func newValidatingOrigin(t *testing.T, clk *clock, cacheControl string) *validatingOrigin {
	t.Helper()
	v := &validatingOrigin{}
	v.origin = newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		etag := `"` + r.URL.Path + `"`
		w.Header().Set("Cache-Control", cacheControl)
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			v.conditional.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		v.plain.Add(1)
		fmt.Fprint(w, "body of ", r.URL.Path)
	})
	return v
}

func TestIgnoreDropsEveryForcingDirective(t *testing.T) {
	for _, h := range forcing {
		t.Run(h[0]+": "+h[1], func(t *testing.T) {
			clk := newClock()
			o := newValidatingOrigin(t, clk, "max-age=60")
			p := newTestProxy(t, o.origin, clk, Config{RequestNoCache: RequestNoCacheIgnore})
			get(p, "/r")
			clk.Advance(5 * time.Second) // older than max-age=1 asks
			want := response{Status: 200, Body: "body of /r", CacheStatus: "corral; hit; ttl=55", Age: "5"}
			var diff string
			for range 20 {
				res, _ := get(p, "/r", h...)
				diff = stdcmp.Or(diff, cmp.Diff(want, res))
			}
			if diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got := o.count(); got != 1 {
				t.Errorf("20 requests with %s: %s after one stored response made %d upstream requests, want 1", h[0], h[1], got)
			}
		})
	}
}

// reloads are what a reload button, or a client that wants the newest
// answer, sends: each asks for more than a stored response a second old.
var reloads = [][]string{
	{"Cache-Control", "no-cache"},
	{"Pragma", "no-cache"},
	{"Cache-Control", "max-age=0"},
	{"Cache-Control", "min-fresh=999999"},
}

func TestReloadHerdCostsOneRevalidationPerKeyPerInterval(t *testing.T) {
	const (
		keys    = 5
		perStep = 4                      // concurrent reloads of each key per step
		step    = 100 * time.Millisecond // the clock's pace
		span    = 10 * time.Second
	)
	clk := newClock()
	o := newValidatingOrigin(t, clk, "max-age=60")
	p := newTestProxy(t, o.origin, clk, Config{}) // the default interval, 1s
	for k := range keys {
		get(p, fmt.Sprintf("/k%d", k))
	}
	// How each reload was answered: "upstream" for the one that
	// revalidated, "collapsed" for one that waited on it or on its
	// answer, "recent" for a
	// hit on a response validated within the interval.
	var mu sync.Mutex
	outcomes := map[string]int{}
	for elapsed := step; elapsed <= span; elapsed += step {
		clk.Advance(step)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for k := range keys {
			for i := range perStep {
				h := reloads[(k+i)%len(reloads)]
				wg.Go(func() {
					<-start
					res, _ := get(p, fmt.Sprintf("/k%d", k), h...)
					if res.Status != 200 || res.Body != fmt.Sprintf("body of /k%d", k) {
						t.Errorf("reload of /k%d: %+v", k, res)
					}
					outcome := res.CacheStatus
					switch res.CacheStatus {
					case "corral; fwd=request; fwd-status=304; stored; ttl=60":
						outcome = "upstream"
					case "corral; fwd=request; fwd-status=304; stored; collapsed; ttl=60",
						"corral; hit; collapsed; ttl=60": // its flight found the other's answer stored
						outcome = "collapsed"
					case "corral; hit; ttl=60; detail=revalidated-recently", "corral; hit; ttl=59; detail=revalidated-recently":
						outcome = "recent"
					}
					mu.Lock()
					outcomes[outcome]++
					mu.Unlock()
				})
			}
		}
		close(start)
		wg.Wait()
	}
	p.Wait()

	// One fetch per key to start, then one revalidation per key each
	// time the last one is a full interval old: at 1s, 2s, ... 10s.
	revalidations := keys * int(span/time.Second)
	total := keys * perStep * int(span/step)
	if got, want := o.count(), int64(keys+revalidations); got != want {
		t.Errorf("%d reloads on %d keys over %s made %d upstream requests, want %d", total, keys, span, got, want)
	}
	if got := o.plain.Load(); got != keys {
		t.Errorf("%d upstream requests were unconditional, want %d (the first fetch of each key)", got, keys)
	}
	// Whether a reload in the step of a revalidation waits on it or
	// comes just after it is up to the scheduler.
	outcomes["recent"] += outcomes["collapsed"]
	delete(outcomes, "collapsed")
	want := map[string]int{"upstream": revalidations, "recent": total - revalidations}
	if diff := cmp.Diff(want, outcomes); diff != "" {
		t.Errorf("reloads by Cache-Status (-want +got):\n%s", diff)
	}
}

func TestNoRevalidateIntervalRevalidatesEveryReload(t *testing.T) {
	// -revalidate-interval=0: every reload revalidates, one at a time,
	// as before the interval existed.
	clk := newClock()
	o := newValidatingOrigin(t, clk, "max-age=60")
	p := newTestProxy(t, o.origin, clk, Config{RevalidateInterval: -1})
	get(p, "/r")
	for _, h := range reloads {
		for range 5 {
			res, _ := get(p, "/r", h...)
			want := response{Status: 200, Body: "body of /r", CacheStatus: "corral; fwd=request; fwd-status=304; stored; ttl=60"}
			if diff := cmp.Diff(want, res); diff != "" {
				t.Errorf("reload with %q (-want +got):\n%s", h, diff)
			}
		}
	}
	if got, want := o.conditional.Load(), int64(5*len(reloads)); got != want {
		t.Errorf("%d reloads made %d conditional upstream requests, want %d", want, got, want)
	}
}

func TestResponseNoCacheStillRevalidatesEveryUse(t *testing.T) {
	// RFC 9111 sections 5.2.2.4 and 5.2.2.2: the interval relaxes what a
	// client asks, never what the response requires.
	for _, tt := range []struct{ cc, status string }{
		{"max-age=60, no-cache", "corral; fwd=stale; fwd-status=304; stored; ttl=60"},
		{"max-age=0, must-revalidate", "corral; fwd=stale; fwd-status=304; stored; ttl=0"},
	} {
		for _, cfg := range []struct {
			name string
			cfg  Config
		}{{"revalidate", Config{}}, {"ignore", Config{RequestNoCache: RequestNoCacheIgnore}}} {
			t.Run(tt.cc+"/"+cfg.name, func(t *testing.T) {
				clk := newClock()
				o := newValidatingOrigin(t, clk, tt.cc)
				p := newTestProxy(t, o.origin, clk, cfg.cfg)
				get(p, "/r")
				for _, h := range append([][]string{nil}, forcing...) {
					res, _ := get(p, "/r", h...)
					if diff := cmp.Diff(tt.status, res.CacheStatus); diff != "" {
						t.Errorf("with %q: Cache-Status (-want +got):\n%s", h, diff)
					}
				}
				if got, want := o.conditional.Load(), int64(len(forcing)+1); got != want {
					t.Errorf("%d uses within the interval made %d conditional requests, want %d", want, got, want)
				}
			})
		}
	}
}

func TestRangedReloadIsBoundedToo(t *testing.T) {
	// A Range went upstream on its own whenever the stored response
	// could not answer it, and such a pass-through never revalidates what
	// is stored: with no-cache, every Range past the first interval went
	// upstream.
	clk := newClock()
	o := newValidatingOrigin(t, clk, "max-age=60")
	p := newTestProxy(t, o.origin, clk, Config{})
	get(p, "/r")
	const steps = 30 // of 100ms: 3s
	revalidated := 0
	for i := 1; i <= steps; i++ {
		clk.Advance(100 * time.Millisecond)
		res, h := get(p, "/r", "Cache-Control", "no-cache", "Range", "bytes=0-3")
		if res.Status != http.StatusPartialContent || res.Body != "body" || h.Get("Content-Range") != "bytes 0-3/10" {
			t.Errorf("at %dms: %+v, Content-Range %q; want 206 and the first 4 bytes", i*100, res, h.Get("Content-Range"))
		}
		if res.CacheStatus == "corral; fwd=request; fwd-status=304; stored; ttl=60" {
			revalidated++
		}
	}
	if got, want := o.count(), int64(1+steps/10); got != want {
		t.Errorf("%d ranged reloads over 3s made %d upstream requests, want %d", steps, got, want)
	}
	if got, want := int64(revalidated), o.conditional.Load(); got != want || got != steps/10 {
		t.Errorf("%d ranged reloads revalidated the stored response, origin saw %d conditional requests; want %d", got, want, steps/10)
	}
}

// While the origin fails, reloads must not go upstream one after another:
// a failed validation pauses them, and they are answered from the stored
// response until the pause ends.
func TestReloadsBackOffWhileValidationFails(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "v1"))
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/r")
	o.set(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	clk.Advance(2 * time.Second) // past -revalidate-interval

	var statuses []int
	for i := 0; i < 100; i++ { // a reload every 30 ms for 3 s
		res, _ := get(p, "/r", "Cache-Control", "no-cache")
		statuses = append(statuses, res.Status)
		clk.Advance(30 * time.Millisecond)
	}
	for i, s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("reload %d: status %d, want the stored 200", i, s)
		}
	}
	// The first fetch, then one failed validation per second of back-off.
	if n := o.count(); n != 1+3 {
		t.Errorf("origin requests = %d, want 4: one failed validation per second", n)
	}
}

// While the origin is down, stale-if-error answers must not cost one
// upstream request per client request: a failed validation backs off.
func TestOutageCostsOneRequestPerBackOff(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=1", "v1"))
	p := newTestProxy(t, o, clk, Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}})
	get(p, "/r")
	o.set(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	clk.Advance(10 * time.Second)
	for i := 0; i < 100; i++ { // a request every 30 ms for 3 s
		if res, _ := get(p, "/r"); res.Status != http.StatusOK || res.Body != "v1" {
			t.Fatalf("request %d: %d %q (%s), want the stale 200", i, res.Status, res.Body, res.CacheStatus)
		}
		clk.Advance(30 * time.Millisecond)
	}
	if n := o.count(); n != 1+3 {
		t.Errorf("origin requests = %d, want 4: one failed validation per second", n)
	}
}

// One client whose fields make a validation fail (the origin rejects
// them, and asks for 300 s of quiet) must not pin the stale answer on
// everyone: its flight asks again for everyone with nothing of that
// client's, and the next request gets the new answer at once.
func TestOneClientCannotPinAStaleAnswer(t *testing.T) {
	clk := newClock()
	var version atomic.Int64
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Bad") != "" {
			w.Header().Set("Retry-After", "300")
			http.Error(w, "bad", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1")
		fmt.Fprint(w, "v", version.Add(1))
	})
	p := newTestProxy(t, o, clk, Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}})
	get(p, "/pin")
	clk.Advance(1200 * time.Millisecond)
	if res, _ := get(p, "/pin", "X-Bad", "1"); res.Body != "v1" {
		t.Fatalf("the attacker's request: %q (%s)", res.Body, res.CacheStatus)
	}
	if res, _ := get(p, "/pin"); res.Body != "v2" {
		t.Errorf("after the failed validation, everyone still got %q (%s), want the origin's new answer", res.Body, res.CacheStatus)
	}
}

// One client sends no-cache and a field the origin refuses: its 400 is
// its own, and must not pass the key (hit-for-miss) for everyone, nor take
// the stored copy away. It did, for PassTTL, renewable by the attacker.
func TestOneClientsRefusedRequestDoesNotPassTheKey(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Bad") != "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Cache-Control", "max-age=10")
		w.Write([]byte("ok"))
	})
	p := newTestProxy(t, o, clk, Config{PassTTL: time.Hour})
	get(p, "/k")
	clk.Advance(2 * time.Second) // past -revalidate-interval: no-cache goes upstream
	if r, _ := get(p, "/k", "Cache-Control", "no-cache", "X-Bad", "1"); r.Status != http.StatusBadRequest {
		t.Fatalf("the attack did not reach the origin: %+v", r)
	}
	p.Wait()
	before := o.count()
	for range 20 {
		if r, _ := get(p, "/k"); r.Status != http.StatusOK || r.Body != "ok" {
			t.Fatalf("after one client's 400: %+v", r)
		}
	}
	if n := o.count() - before; n != 0 {
		t.Errorf("20 requests after one client's 400 made %d upstream requests, want 0: the copy still answers", n)
	}
}

// botOrigin answers a User-Agent that names a bot 503 with Retry-After:
// 300, as an origin refusing one client does, and everyone else
// cacheControl and the current version.
func botOrigin(t *testing.T, clk *clock, cacheControl string, version *atomic.Int64) *origin {
	return newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("User-Agent"), "bot") {
			w.Header().Set("Retry-After", "300")
			http.Error(w, "no bots", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Cache-Control", cacheControl)
		fmt.Fprint(w, "v", version.Load())
	})
}

// TestTwoFieldsOfOneUserPinNoStaleAnswer is the verification attack's
// third finding: one user's reloads, from two User-Agents the origin
// refuses with Retry-After: 300, confirmed each other's failure, and the
// back-off stopped every background refresh for the stale-while-
// revalidate window: the herd saw one version for 40 s. A failure that
// carried a client's fields backs no refresh off; only a refresh's own
// failure does.
func TestTwoFieldsOfOneUserPinNoStaleAnswer(t *testing.T) {
	clk := newClock()
	var version atomic.Int64
	version.Store(1)
	o := botOrigin(t, clk, "max-age=5, stale-while-revalidate=30", &version)
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/swr")
	clk.Advance(6 * time.Second)
	version.Store(2)
	for _, ua := range []string{"bot-1", "bot-2"} {
		get(p, "/swr", "User-Agent", ua, "Cache-Control", "no-cache")
	}
	if res, _ := get(p, "/swr", "User-Agent", "victim"); res.Body != "v1" {
		t.Fatalf("a stale hit got %q (%s), want the stale v1 while it refreshes", res.Body, res.CacheStatus)
	}
	p.Wait()
	if res, _ := get(p, "/swr", "User-Agent", "victim"); res.Body != "v2" {
		t.Errorf("after the stale hit's refresh, a client got %q (%s), want v2", res.Body, res.CacheStatus)
	}
}

// TestFailedValidationStillRefreshes is the same attack past the
// stale-while-revalidate window: the abuser's confirmed failures kept the
// stale copy standing in for a failing origin (stale-if-error), which the
// origin was not, for everyone, for as long as the abuser went on. A
// stored response that stands in for a recent failure starts a
// background refresh, which carries nothing of anyone's.
func TestFailedValidationStillRefreshes(t *testing.T) {
	clk := newClock()
	var version atomic.Int64
	version.Store(1)
	o := botOrigin(t, clk, "max-age=5", &version)
	p := newTestProxy(t, o, clk, Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}})
	get(p, "/sie")
	clk.Advance(6 * time.Second)
	version.Store(2)
	for _, ua := range []string{"bot-1", "bot-2"} {
		get(p, "/sie", "User-Agent", ua, "Cache-Control", "no-cache")
	}
	get(p, "/sie", "User-Agent", "victim")
	p.Wait()
	if res, _ := get(p, "/sie", "User-Agent", "victim"); res.Body != "v2" {
		t.Errorf("after the abuser's failures, a client got %q (%s), want v2", res.Body, res.CacheStatus)
	}
}
