package proxy

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// These tests play an origin that asks for quiet with Retry-After (RFC 9110
// section 10.2.3) on some URLs, as issue 9 found it: one such answer paused
// every URL for as long as it asked. It must pause its own key only, and the
// whole origin only on evidence that the origin as a whole is overloaded.

// pausingOrigin answers the paths that start with /busy (/busy/a, /busy1)
// with status and, unless it is empty, Retry-After retry, whatever the
// method; anything else with a cacheable 200.
func pausingOrigin(status int, retry string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/busy") {
			if retry != "" {
				w.Header().Set("Retry-After", retry)
			}
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "ok "+r.URL.Path)
	}
}

// outcome is what a client saw of a pause: the status, who answered, and
// when to come back.
type outcome struct {
	Status      int
	CacheStatus string
	RetryAfter  string
}

func getOutcome(p http.Handler, path string, hdr ...string) outcome {
	r, h := get(p, path, hdr...)
	return outcome{r.Status, r.CacheStatus, h.Get("Retry-After")}
}

var (
	coldOK     = outcome{200, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60", ""}
	turnedAway = func(retry string) outcome {
		return outcome{503, "corral; fwd=uri-miss; detail=upstream-busy", retry}
	}
)

// TestOneTooManyRequestsPausesOnlyItsKey is the attack of issue 9: one
// anonymous request that the origin answers 429 with Retry-After: 300 made
// every uncached URL answer 503 for five minutes. A 429 (RFC 6585 section
// 4) to a request that carries nothing of one client's is corral's own
// quota for that URL: it pauses that URL alone, for at most
// UpstreamMaxPause. (One that carries a client's fields pauses nothing:
// TestSpentKeyFromTwoAddressesPausesNothing.)
func TestOneTooManyRequestsPausesOnlyItsKey(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, pausingOrigin(http.StatusTooManyRequests, "300"))
	p := newTestProxy(t, o, clk, Config{})
	if got, _ := get(p, "/busy/a"); got.Status != http.StatusTooManyRequests {
		t.Fatalf("the limited URL got %+v, want the origin's 429", got)
	}
	clk.Advance(time.Second)

	steps := []struct {
		name string
		path string
		want outcome
	}{
		{"another URL still goes upstream", "/b", coldOK},
		{"so does the limited path with another query: another key", "/busy/a?page=2",
			outcome{429, "corral; fwd=uri-miss; fwd-status=429; detail=error-status", "300"}},
		{"the limited URL waits out its pause, capped at 30s", "/busy/a", turnedAway("29")},
	}
	for _, s := range steps {
		if diff := cmp.Diff(s.want, getOutcome(p, s.path)); diff != "" {
			t.Errorf("%s: GET %s (-want +got):\n%s", s.name, s.path, diff)
		}
	}
	if n := o.count(); n != 3 {
		t.Errorf("origin saw %d requests, want 3: none for the paused URL", n)
	}
	clk.Advance(29 * time.Second)
	if got := getOutcome(p, "/busy/a"); got.Status != http.StatusTooManyRequests || o.count() != 4 {
		t.Errorf("after the pause the limited URL got %+v and the origin saw %d requests; want the origin's 429, 4", got, o.count())
	}
}

// TestOneBrokenEndpointPausesOnlyItself sends one endpoint that answers 503
// with Retry-After (RFC 9110 section 15.6.4) under ten queries: each is its
// own key and pauses only itself, and a client that varies the query cannot
// make the one broken endpoint look like an overloaded origin.
func TestOneBrokenEndpointPausesOnlyItself(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, pausingOrigin(http.StatusServiceUnavailable, "300"))
	p := newTestProxy(t, o, clk, Config{})
	for i := range 10 {
		path := "/busy/x?i=" + strconv.Itoa(i)
		if got := getOutcome(p, path); got.Status != 503 || got.CacheStatus != "corral; fwd=uri-miss; fwd-status=503; detail=error-status" {
			t.Errorf("GET %s got %+v, want the origin's own 503: no other key paused it", path, got)
		}
	}
	if diff := cmp.Diff(coldOK, getOutcome(p, "/b")); diff != "" {
		t.Errorf("a healthy URL after one endpoint's 503s (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(turnedAway("30"), getOutcome(p, "/busy/x?i=0")); diff != "" {
		t.Errorf("a broken key asked again (-want +got):\n%s", diff)
	}
	if n := o.count(); n != 11 {
		t.Errorf("origin saw %d requests, want 11", n)
	}
}

// TestOverloadOnSeveralPathsPausesTheOrigin checks the rule for an
// origin-wide pause: answers with Retry-After that say "overloaded" and
// paused their keys (503s and 429s to GETs that carried nothing of one
// client's) for three distinct endpoints (first path segments below the
// upstream's path) within ten seconds.
func TestOverloadOnSeveralPathsPausesTheOrigin(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		retry    string
		paths    []string
		gap      time.Duration // between the answers
		hdr      []string
		from     []string // the clients asking each path in turn; nil: one
		upstream string   // the upstream's path
		paused   bool
	}{
		{"503s on three endpoints within 10s", 503, "20", []string{"/busy1", "/busy2/a", "/busy3?q"}, 4 * time.Second, nil, nil, "", true},
		{"anonymous 429s on three endpoints within 10s", 429, "20", []string{"/busy1", "/busy2", "/busy3"}, 4 * time.Second, nil, nil, "", true},
		{"the same path asked three times is one endpoint", 503, "20", []string{"/busy1", "/busy1?a", "/busy1?b"}, 0, nil, nil, "", false},
		{"three paths under one first segment are one endpoint", 503, "20", []string{"/busy/1", "/busy/2", "/busy/3"}, 0, nil, nil, "", false},
		{"the upstream's own path is no endpoint", 503, "20", []string{"/busy1", "/busy2", "/busy3"}, 0, nil, nil, "/app/", true},
		{"three endpoints over more than 10s", 503, "20", []string{"/busy1", "/busy2", "/busy3"}, 6 * time.Second, nil, nil, "", false},
		{"429s to one user's credentials", 429, "20", []string{"/busy1", "/busy2", "/busy3"}, 0, []string{"Authorization", "Bearer greedy"}, []string{clientA, clientB}, "", false},
		{"503s without Retry-After", 503, "", []string{"/busy1", "/busy2", "/busy3"}, 0, nil, nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				r.URL.Path = strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(tt.upstream, "/"))
				pausingOrigin(tt.status, tt.retry)(w, r)
			})
			p := newTestProxy(t, o, clk, Config{Upstream: &url.URL{Path: tt.upstream}})
			from := tt.from
			if from == nil {
				from = []string{clientA}
			}
			for i, path := range tt.paths {
				if i > 0 {
					clk.Advance(tt.gap)
				}
				for _, client := range from {
					if got, _ := doFrom(p, client, http.MethodGet, path, tt.hdr...); got.Status != tt.status {
						t.Fatalf("GET %s from %s got %d (%s), want the origin's %d", path, client, got.Status, got.CacheStatus, tt.status)
					}
				}
			}
			before := o.count()
			got := getOutcome(p, "/cold")
			if !tt.paused {
				if diff := cmp.Diff(coldOK, got); diff != "" {
					t.Errorf("a cold URL afterwards (-want +got):\n%s", diff)
				}
				return
			}
			if diff := cmp.Diff(turnedAway("20"), got); diff != "" || o.count() != before {
				t.Errorf("a cold URL during the origin's pause (-want +got):\n%s\norigin saw %d requests, want none", diff, o.count()-before)
			}
			clk.Advance(20 * time.Second)
			if diff := cmp.Diff(coldOK, getOutcome(p, "/cold")); diff != "" {
				t.Errorf("a cold URL after the pause (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMaxPauseBoundsRetryAfter asks for an hour of quiet: the pause lasts
// UpstreamMaxPause at most, per key and origin-wide, and a negative
// UpstreamMaxPause never pauses.
func TestMaxPauseBoundsRetryAfter(t *testing.T) {
	tests := []struct {
		name     string
		maxPause time.Duration
		want     time.Duration // the pause; zero for none
	}{
		{"default", 0, 30 * time.Second},
		{"10s", 10 * time.Second, 10 * time.Second},
		{"never", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name+" per key", func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, pausingOrigin(http.StatusServiceUnavailable, "3600"))
			p := newTestProxy(t, o, clk, Config{UpstreamMaxPause: tt.maxPause})
			get(p, "/busy/a")
			got := getOutcome(p, "/busy/a")
			if tt.want == 0 {
				if got.Status != 503 || got.RetryAfter != "3600" || o.count() != 2 {
					t.Errorf("again at once got %+v, origin saw %d; want the origin's own 503, 2", got, o.count())
				}
				return
			}
			want := turnedAway(strconv.Itoa(int(tt.want.Seconds())))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("again at once (-want +got):\n%s", diff)
			}
			clk.Advance(tt.want - time.Second)
			if got := getOutcome(p, "/busy/a"); got.Status != 503 || got.RetryAfter != "1" {
				t.Errorf("a second before the cap got %+v, want corral's 503 with Retry-After 1", got)
			}
			clk.Advance(time.Second)
			if get(p, "/busy/a"); o.count() != 2 {
				t.Errorf("origin saw %d requests, want 2: one when the capped pause ended", o.count())
			}
		})
		t.Run(tt.name+" origin-wide", func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, pausingOrigin(http.StatusServiceUnavailable, "3600"))
			p := newTestProxy(t, o, clk, Config{UpstreamMaxPause: tt.maxPause})
			for _, path := range []string{"/busy1", "/busy2", "/busy3"} {
				get(p, path)
			}
			if tt.want == 0 {
				if diff := cmp.Diff(coldOK, getOutcome(p, "/cold")); diff != "" {
					t.Errorf("a cold URL, never pausing (-want +got):\n%s", diff)
				}
				return
			}
			if diff := cmp.Diff(turnedAway(strconv.Itoa(int(tt.want.Seconds()))), getOutcome(p, "/cold")); diff != "" {
				t.Errorf("a cold URL during the origin's pause (-want +got):\n%s", diff)
			}
			clk.Advance(tt.want)
			if diff := cmp.Diff(coldOK, getOutcome(p, "/cold")); diff != "" {
				t.Errorf("a cold URL once the capped pause ended (-want +got):\n%s", diff)
			}
		})
	}
}

// TestStaleServedDuringKeyPause: while one key is paused its stored
// response stands in for the origin (RFC 9111 section 4.2.4), unless
// must-revalidate forbids it (section 5.2.2.2).
func TestStaleServedDuringKeyPause(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		cc := "max-age=1"
		if r.URL.Path == "/strict" {
			cc += ", must-revalidate"
		}
		w.Header().Set("Cache-Control", cc)
		io.WriteString(w, "stored "+r.URL.Path)
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/s")
	get(p, "/strict")
	o.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/s" || r.URL.Path == "/strict" {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		answer("max-age=60", "ok "+r.URL.Path)(w, r)
	})
	clk.Advance(5 * time.Second)
	get(p, "/s")      // the origin's 503 pauses /s
	get(p, "/strict") // and /strict: two paths, not an overloaded origin
	before := o.count()

	tests := []struct {
		name string
		path string
		want response
	}{
		{"RFC 9111 4.2.4: stale served while its key is paused", "/s",
			response{Status: 200, Body: "stored /s", Age: "5", CacheStatus: "corral; hit; ttl=-4; detail=upstream-busy"}},
		{"RFC 9111 5.2.2.2: must-revalidate is not served stale", "/strict",
			response{Status: 503, Body: "Service Unavailable\n", CacheStatus: "corral; fwd=stale; detail=upstream-busy"}},
		{"another key goes upstream", "/other",
			response{Status: 200, Body: "ok /other", CacheStatus: "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}},
	}
	for _, tt := range tests {
		got, _ := get(p, tt.path)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
	if n := o.count() - before; n != 1 {
		t.Errorf("origin saw %d requests during the pauses, want 1: /other's", n)
	}
}

// TestPauseGauges follows the gauges through a key's pause, then the
// origin's. Their labels name a scope, never a URL.
func TestPauseGauges(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, pausingOrigin(http.StatusServiceUnavailable, "60"))
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "")
	gauges := func() map[string]float64 {
		got := scrape(t, a)
		return pick(got, "corral_upstream_paused")
	}
	want := func(origin, keys float64) map[string]float64 {
		return map[string]float64{`corral_upstream_paused{scope="origin"}`: origin, `corral_upstream_paused_keys`: keys}
	}
	if diff := cmp.Diff(want(0, 0), gauges()); diff != "" {
		t.Errorf("before any pause (-want +got):\n%s", diff)
	}
	get(p, "/busy/1")
	get(p, "/busy/1?page=2")
	if diff := cmp.Diff(want(0, 2), gauges()); diff != "" {
		t.Errorf("two keys paused (-want +got):\n%s", diff)
	}
	get(p, "/busy2")
	get(p, "/busy3")
	if diff := cmp.Diff(want(1, 4), gauges()); diff != "" {
		t.Errorf("three endpoints overloaded (-want +got):\n%s", diff)
	}
	get(p, "/cold")
	if n := scrape(t, a)["corral_upstream_throttled_total"]; n != 1 {
		t.Errorf("throttled counter %v, want 1: the cold request held back", n)
	}
	clk.Advance(30 * time.Second) // the default cap
	if diff := cmp.Diff(want(0, 0), gauges()); diff != "" {
		t.Errorf("after the pauses (-want +got):\n%s", diff)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOnlyGetAndHeadAnswersPause is the third attack of the review: a POST
// or OPTIONS that the origin answers 503 with Retry-After paused the GET
// key of its URL, and three of them the whole origin. An answer to another
// method speaks of that method's handler (a broken form, a CORS
// preflight), not of the resource every GET shares.
func TestOnlyGetAndHeadAnswersPause(t *testing.T) {
	for _, method := range []string{http.MethodPost, http.MethodOptions, http.MethodPut, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, pausingOrigin(http.StatusServiceUnavailable, "30"))
			p := newTestProxy(t, o, clk, Config{})
			for _, path := range []string{"/busy1", "/busy2", "/busy3"} {
				if got, _ := do(p, method, path); got.Status != 503 {
					t.Fatalf("%s %s got %d (%s), want the origin's 503", method, path, got.Status, got.CacheStatus)
				}
			}
			steps := []struct {
				name string
				path string
				want outcome
			}{
				{"GET of the same URL still goes upstream", "/busy1",
					outcome{503, "corral; fwd=uri-miss; fwd-status=503; detail=error-status", "30"}},
				{"and so does any other URL: the origin is not paused", "/cold", coldOK},
			}
			for _, s := range steps {
				if diff := cmp.Diff(s.want, getOutcome(p, s.path)); diff != "" {
					t.Errorf("%s: GET %s (-want +got):\n%s", s.name, s.path, diff)
				}
			}
			if n := o.count(); n != 5 {
				t.Errorf("origin saw %d requests, want 5: every one sent", n)
			}
		})
	}
}

// TestPathVariantsAreOneEndpoint is the first attack of the review: an
// origin that routes /broken, /broken/ and //broken alike (as many
// frameworks do) answered each 503 with Retry-After, and one client that
// asked for the three made them look like three paths failing at once:
// every uncached URL got 503. Evidence of an overloaded origin counts
// endpoints, the first path segment below the upstream's path, lower-cased,
// without ;params, however many slashes lead to it.
func TestPathVariantsAreOneEndpoint(t *testing.T) {
	tests := []struct {
		name  string
		paths []string
	}{
		{"trailing and doubled slashes", []string{"/broken", "/broken/", "//broken"}},
		{"letter case", []string{"/broken", "/Broken", "/BROKEN"}},
		{";params", []string{"/broken", "/broken;a", "/broken;b=1/"}},
		{"a catch-all route", []string{"/broken/a", "/broken/b", "/broken/c"}},
		{"encoded separators", []string{"/broken%2Fa", "/broken%3Bb", "/broken%2fc"}},
		{"all of it at once", []string{"///BROKEN;x//a", "/broken/", "/Broken%3b/b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(strings.ToLower(r.URL.Path), "broken") {
					w.Header().Set("Retry-After", "30")
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				answer("max-age=60", "ok "+r.URL.Path)(w, r)
			})
			p := newTestProxy(t, o, clk, Config{})
			for _, path := range tt.paths {
				if got, _ := get(p, path); got.Status != 503 || !strings.Contains(got.CacheStatus, "fwd-status=503") {
					t.Fatalf("GET %s got %d (%s), want the origin's 503", path, got.Status, got.CacheStatus)
				}
			}
			if diff := cmp.Diff(coldOK, getOutcome(p, "/cold")); diff != "" {
				t.Errorf("a cold URL after one endpoint's variants failed (-want +got):\n%s", diff)
			}
		})
	}
}

// Client addresses, as RemoteAddr gives them.
const (
	clientA = "192.0.2.1:1234" // httptest's default
	clientB = "198.51.100.7:4321"
	clientC = "[2001:db8::1]:443"
)

// TestOneClientsQuotaPausesNoOneElse is the second attack of the review:
// the origin answers 429 with Retry-After to one client's API key (or
// session cookie) and 200 to everyone else. One request with that key
// made everyone's request for the URL get 503, and three such URLs every
// uncached URL. A 429 that one client alone gets speaks of that client:
// it answers that client alone, and pauses nothing.
func TestOneClientsQuotaPausesNoOneElse(t *testing.T) {
	for _, hdr := range [][]string{{"X-Api-Key", "abuser"}, {"Cookie", "session=abuser"}} {
		t.Run(hdr[0], func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.Header.Get(hdr[0]), "abuser") {
					w.Header().Set("Retry-After", "30")
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				answer("max-age=60", "ok "+r.URL.Path)(w, r)
			})
			p := newTestProxy(t, o, clk, Config{})
			limited := outcome{429, "corral; fwd=uri-miss; fwd-status=429; detail=error-status", "30"}
			steps := []struct {
				name   string
				client string
				path   string
				hdr    []string
				want   outcome
			}{
				{"the abuser hits its quota", clientA, "/quota1", hdr, limited},
				{"and again: its own 429 from the origin", clientA, "/quota1", hdr, limited},
				{"from another address, the same key still goes upstream", clientB, "/quota1", nil,
					outcome{200, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60", ""}},
				{"the abuser's second endpoint", clientA, "/quota2", hdr, limited},
				{"the abuser's third endpoint", clientA, "/quota3", hdr, limited},
				{"the origin is not paused", clientB, "/cold", nil, coldOK},
			}
			for _, s := range steps {
				r, h := doFrom(p, s.client, http.MethodGet, s.path, s.hdr...)
				if diff := cmp.Diff(s.want, outcome{r.Status, r.CacheStatus, h.Get("Retry-After")}); diff != "" {
					t.Errorf("%s: GET %s (-want +got):\n%s", s.name, s.path, diff)
				}
			}
			if n := o.count(); n != 6 {
				t.Errorf("origin saw %d requests, want 6: every one sent", n)
			}
		})
	}
}

// TestBareRequestsPauseNoClientsFields is the verification attack's second
// finding: on an origin with an anonymous tier (requests that carry no key
// share one quota, corral's), an abuser spent it with requests that carry
// nothing at all, from three URLs; the 429s paused the whole origin, and
// the clients that send a key, which the origin would have answered, got
// 503 for every cold URL. A pause learned from a request that carried
// nothing of one client's holds back only requests that carry nothing
// either.
func TestBareRequestsPauseNoClientsFields(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "" {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		answer("max-age=60", "ok "+r.URL.Path)(w, r)
	})
	p := newTestProxy(t, o, clk, Config{})
	for _, path := range []string{"/a/1", "/b/1", "/c/1"} {
		if r, _ := get(p, path); r.Status != http.StatusTooManyRequests {
			t.Fatalf("bare GET %s got %+v, want the origin's 429", path, r)
		}
	}
	if s := p.guard.Stats(); !s.OriginPaused {
		t.Fatalf("guard %+v: want the origin paused for bare requests, as it asked", s)
	}
	for _, path := range []string{"/a/1", "/d/1"} {
		if r, _ := get(p, path, "X-Api-Key", "good"); r.Status != http.StatusOK || r.Body != "ok "+path {
			t.Errorf("keyed GET %s got %+v, want the origin's 200", path, r)
		}
	}
	if r, _ := get(p, "/e/1"); r.Status != http.StatusServiceUnavailable {
		t.Errorf("bare GET /e/1 got %+v, want 503: the pause holds bare requests", r)
	}
}
