package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/freshness"
	"corral/internal/testwait"
)

// These tests play one user who wants to hurt the others (issue 23): with
// a spent quota, a field the origin refuses, and as many addresses as it
// likes. The invariant: nothing one user does makes corral give the others
// errors, older data or less coalescing than the origin itself would give
// them.

// spentKeyOrigin answers requests that carry X-Api-Key: spent with status
// and Retry-After: 30, as an origin does to one user whose quota is spent,
// and everything else with a cacheable 200 that names the path.
func spentKeyOrigin(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "spent" {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(status)
			return
		}
		answer("max-age=60", "ok "+r.URL.Path)(w, r)
	}
}

// TestSpentKeyFromTwoAddressesPausesNothing is issue 23's first finding:
// one API key whose quota is spent, sent from two addresses to three
// endpoints (six requests), paused every URL: other users' cold GETs got
// 503 for 30 s, renewable. A 429 speaks of whoever asked, and a request
// that carries a client's fields is that client's: its answer pauses
// nothing, whatever the status, and counts toward no origin-wide pause.
func TestSpentKeyFromTwoAddressesPausesNothing(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, spentKeyOrigin(status))
			p := newTestProxy(t, o, clk, Config{})
			for _, path := range []string{"/a/1", "/b/1", "/c/1"} {
				for _, client := range []string{"127.0.0.2:40000", "127.0.0.5:40000"} {
					clk.Advance(2 * time.Second) // past -revalidate-interval: no-cache goes upstream
					doFrom(p, client, http.MethodGet, path, "X-Api-Key", "spent", "Cache-Control", "no-cache")
				}
			}
			if n := o.count(); n != 6 {
				t.Fatalf("origin saw %d requests, want the abuser's 6", n)
			}
			type seen struct {
				Status      int
				CacheStatus string
			}
			for path, want := range map[string]seen{
				"/d/1": {200, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"},
				"/a/1": {200, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"},
			} {
				got, _ := doFrom(p, clientC, http.MethodGet, path)
				if diff := cmp.Diff(want, seen{got.Status, got.CacheStatus}); diff != "" {
					t.Errorf("another user's GET %s after the abuser's answers (-want +got):\n%s", path, diff)
				}
			}
			if s := p.guard.Stats(); s.OriginPaused || s.PausedKeys != 0 {
				t.Errorf("the guard paused the origin (%v) or %d keys for one user's answers; want nothing", s.OriginPaused, s.PausedKeys)
			}
		})
	}
}

// versionedOrigin answers a cacheable 200 whose body counts the answers
// it gave ("v1", "v2", ...) with cacheControl, and a request with X-Api-Key:
// spent with status and Retry-After: 30 (the answer to one user's spent
// quota, or, as a 500, to a field that makes the origin fail). A request
// for /held waits for release first, when release is not nil.
type versionedOrigin struct {
	*origin
}

func newVersionedOrigin(t *testing.T, clk *clock, cacheControl string, status int, arrived chan<- struct{}, release <-chan struct{}) *versionedOrigin {
	t.Helper()
	var mu sync.Mutex
	version := 0
	vo := &versionedOrigin{}
	vo.origin = newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "spent" {
			if arrived != nil {
				arrived <- struct{}{}
				<-release
			}
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(status)
			io.WriteString(w, "not you")
			return
		}
		mu.Lock()
		version++
		v := version
		mu.Unlock()
		w.Header().Set("Cache-Control", cacheControl)
		fmt.Fprintf(w, "v%d", v)
	})
	return vo
}

// TestSpentKeyLeaderGivesNoOneElseItsAnswer is issue 23's second finding:
// a user with a spent key looped Cache-Control: no-cache on a URL stored
// with max-age=1, and led the fetches that the others' stale requests
// joined: they got its 429 (fwd-status=429; collapsed) though their own
// requests would have got 200. An answer that speaks of the leader's
// request is the leader's: the others get the answer to a request that
// carries nothing of any one client's, asked once for all of them.
func TestSpentKeyLeaderGivesNoOneElseItsAnswer(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusForbidden, http.StatusBadRequest, http.StatusInternalServerError} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			clk := newClock()
			arrived, release := make(chan struct{}), make(chan struct{})
			o := newVersionedOrigin(t, clk, "max-age=1", status, arrived, release)
			p := newTestProxy(t, o.origin, clk, Config{})
			if got, _ := get(p, "/q"); got.Body != "v1" {
				t.Fatalf("first GET got %+v, want v1", got)
			}
			clk.Advance(2 * time.Second) // stale for everyone

			abuser := make(chan response, 1)
			go func() {
				r, _ := doFrom(p, "127.0.0.2:40000", http.MethodGet, "/q", "X-Api-Key", "spent", "Cache-Control", "no-cache")
				abuser <- r
			}()
			testwait.Receive(t, arrived, "the abuser's fetch to reach the origin")
			const n = 50
			entered := releaseWhenEntered(n, release)
			victims := herd(t, p, n, "/q", func(int) []string { return []string{"User-Agent", "victim"} }, entered)
			if got := testwait.Receive(t, abuser, "the abuser's answer"); got.Status != status {
				t.Errorf("the abuser got %d (%s), want its own %d", got.Status, got.CacheStatus, status)
			}
			for i, v := range victims {
				if v.Status != 200 || v.Body != "v2" && v.Body != "v3" {
					t.Fatalf("victim %d got %d %q (%s); want 200 v2 (or v3, see below), what the origin answers anyone but the abuser", i, v.Status, v.Body, v.CacheStatus)
				}
			}
			// A victim that arrives between the end of the abuser's
			// flight and the start of the victims' own may start a first
			// flight of its own: one more request, rarely.
			if c := o.count(); c < 3 || c > 4 {
				t.Errorf("origin saw %d requests, want 3: v1, the abuser's, and one for every victim (4 at most)", c)
			}
		})
	}
}

// TestRefusedFieldPinsNoStaleAnswer is issue 23's third finding, in the
// foreground: a client whose field the origin answers 500 to led the fetch
// of a stale URL, and its failure set the back-off that answers everyone
// from the stale copy without asking the origin: the victims saw one
// version for as long as the client kept it up. A failure that speaks of
// one client's request must not hold back an answer that would succeed.
func TestRefusedFieldPinsNoStaleAnswer(t *testing.T) {
	clk := newClock()
	o := newVersionedOrigin(t, clk, "max-age=1", http.StatusInternalServerError, nil, nil)
	// With corral's default stale-if-error, as main sets it.
	p := newTestProxy(t, o.origin, clk, Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}})
	get(p, "/q")
	for i := range 5 {
		clk.Advance(2 * time.Second)
		doFrom(p, "127.0.0.2:40000", http.MethodGet, "/q", "X-Api-Key", "spent")
		got, _ := get(p, "/q")
		if want := fmt.Sprintf("v%d", i+2); got.Body != want {
			t.Errorf("round %d: a victim right after the abuser got %q (%s), want %q: the origin would answer it", i, got.Body, got.CacheStatus, want)
		}
	}
}

// TestStaleHitRefreshCarriesNothingOfItsClient is issue 23's third
// finding, in the background: the stale hits of a client whose field the
// origin answers 500 (with Retry-After: 300) started the background
// refreshes with that field, and each failed refresh held back the next
// one for everyone: one version in 16 s. A refresh serves everyone: it
// carries nothing of the client whose stale hit started it but the fields
// the response varies on.
func TestStaleHitRefreshCarriesNothingOfItsClient(t *testing.T) {
	clk := newClock()
	seen := make(chan http.Header, 10)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		if r.Header.Get("X-Api-Key") == "spent" {
			w.Header().Set("Retry-After", "300")
			http.Error(w, "not you", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=60")
		w.Header().Set("Vary", "Accept-Language")
		io.WriteString(w, "hello "+r.Header.Get("Accept-Language"))
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/q", "Accept-Language", "fr")
	<-seen
	clk.Advance(2 * time.Second)
	if got, _ := get(p, "/q", "Accept-Language", "fr", "X-Api-Key", "spent", "User-Agent", "abuser"); got.CacheStatus != "corral; hit; ttl=-1; detail=stale-while-revalidate" {
		t.Fatalf("the abuser's request got %+v, want a stale hit that starts a refresh", got)
	}
	p.Wait()
	if n := o.count(); n != 2 {
		t.Fatalf("origin saw %d requests, want 2: the first, and one refresh", n)
	}
	h := <-seen
	got := map[string]string{}
	for _, name := range []string{"Accept-Language", "X-Api-Key", "User-Agent"} {
		got[name] = h.Get(name)
	}
	want := map[string]string{"Accept-Language": "fr", "X-Api-Key": "", "User-Agent": "Go-http-client/1.1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the refresh's fields at the origin (-want +got):\n%s", diff)
	}
	if got, _ := get(p, "/q", "Accept-Language", "fr"); got.CacheStatus != "corral; hit; ttl=1" {
		t.Errorf("a victim after the refresh got %+v, want a fresh hit", got)
	}
}

// TestSpentKeyOnVaryingURLsPausesNothing is the second attack pass's first
// finding: on URLs that vary on the key field (Vary: X-Api-Key), the
// abuser's request carried nothing but a field the response varies on, and
// was taken for one that carries nothing of one client's: its 429 paused
// three URLs, then the origin, and every other user got 503. A field the
// response varies on is still one client's value: only a request that
// carries no client field at all pauses anything.
func TestSpentKeyOnVaryingURLsPausesNothing(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "X-Api-Key")
		spentKeyOrigin(http.StatusTooManyRequests)(w, r)
	})
	p := newTestProxy(t, o, clk, Config{})
	paths := []string{"/a/1", "/b/1", "/c/1", "/d/1"}
	for _, path := range paths {
		get(p, path, "X-Api-Key", "alice") // the URLs are known to vary
	}
	clk.Advance(2 * time.Second)
	for _, path := range paths[:3] {
		if r, _ := get(p, path, "X-Api-Key", "spent"); r.Status != http.StatusTooManyRequests {
			t.Fatalf("the abuser's GET %s got %+v, want the origin's 429", path, r)
		}
	}
	if s := p.guard.Stats(); s.OriginPaused || s.PausedKeys != 0 {
		t.Errorf("one user's 429s paused the origin (%v) or %d keys", s.OriginPaused, s.PausedKeys)
	}
	for _, path := range paths {
		if r, _ := get(p, path, "X-Api-Key", "carol"); r.Status != http.StatusOK {
			t.Errorf("another user's GET %s got %+v, want 200", path, r)
		}
	}
}

// TestTarpittedFieldHoldsNoHerd is the second attack pass's second
// finding: an origin that holds one client's requests (a spent key it
// tarpits, or a rate limiter's queue) held the cold fetch that client led,
// and every client coalesced on it waited for the upstream timeout, then
// got 504. A client waits on a flight another's request leads for a
// quarter of the upstream timeout at most, then flies with its own.
func TestTarpittedFieldHoldsNoHerd(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	defer close(release)
	arrived := make(chan struct{}, 1)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "spent" {
			arrived <- struct{}{}
			<-release // the tarpit
			return
		}
		answer("max-age=60", "ok")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 2 * time.Second})
	go get(p, "/cold", "X-Api-Key", "spent")
	testwait.Receive(t, arrived, "the abuser's fetch to reach the origin")
	for i, r := range herd(t, p, 10, "/cold", func(int) []string { return []string{"X-Api-Key", "good"} }, nil) {
		if r.Status != http.StatusOK || r.Body != "ok" {
			t.Errorf("victim %d got %+v, want 200 ok", i, r)
		}
	}
	if n := o.count(); n != 2 {
		t.Errorf("origin saw %d requests, want 2: the abuser's, and one for the victims", n)
	}
}

// TestFailingOriginCostsOneRequestPerFlight is the second attack pass's
// fifth finding: with the origin failing, each cold URL's flight cost two
// upstream requests (the leader's, then one for everyone else). A shared
// fetch asks once.
func TestFailingOriginCostsOneRequestPerFlight(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	})
	p := newTestProxy(t, o, clk, Config{})
	for i := range 5 {
		if r, _ := get(p, "/cold/"+strconv.Itoa(i), "User-Agent", "poller", "Cookie", "s=1"); r.Status != http.StatusInternalServerError {
			t.Fatalf("GET got %+v, want the origin's 500", r)
		}
	}
	if n := o.count(); n != 5 {
		t.Errorf("five cold flights cost %d upstream requests, want 5", n)
	}
}

// TestSecondStuckKeyLeadsNoVictims is the verification attack's first
// finding: the origin tarpits two spent keys; the second joined the first
// one's flight before the victims, so it gave up waiting on it first, led
// the flight that followed, and the victims, who waited on that one with
// no patience, got 504 at the upstream timeout. A client that gives up on
// another's flight flies with the clients that send what it sends, never
// behind someone else's fields again.
func TestSecondStuckKeyLeadsNoVictims(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	defer close(release)
	arrived := make(chan string, 4)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if key := r.Header.Get("X-Api-Key"); strings.HasPrefix(key, "spent") {
			arrived <- key
			<-release // the tarpit
			return
		}
		answer("max-age=60", "ok")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 2 * time.Second})
	go get(p, "/cold", "X-Api-Key", "spent-a")
	if got := testwait.Receive(t, arrived, "the first abuser's fetch to reach the origin"); got != "spent-a" {
		t.Fatalf("the origin saw %s first, want spent-a", got)
	}
	go get(p, "/cold", "X-Api-Key", "spent-b")
	// spent-b gives up on spent-a's flight, and flies again, before any
	// victim comes.
	if got := testwait.Receive(t, arrived, "the second abuser's own fetch to reach the origin"); got != "spent-b" {
		t.Fatalf("the origin saw %s second, want spent-b", got)
	}
	for i, r := range herd(t, p, 10, "/cold", func(int) []string { return []string{"X-Api-Key", "good"} }, nil) {
		if r.Status != http.StatusOK || r.Body != "ok" {
			t.Errorf("victim %d got %+v, want 200 ok", i, r)
		}
	}
	if n := o.count(); n != 3 {
		t.Errorf("origin saw %d requests, want 3: each abuser's, and one for the victims", n)
	}
}

// TestHedgerTakesTheFirstAnswer is the verification attack's sixth
// finding: on an origin slow for everyone, a client that gave up on the
// flight another's request led waited for its own flight, ignoring the
// first one's answer when it came. It takes whichever comes first.
func TestHedgerTakesTheFirstAnswer(t *testing.T) {
	clk := newClock()
	first := make(chan struct{})
	never := make(chan struct{})
	defer close(never)
	arrived := make(chan string, 8)
	var mu sync.Mutex
	n := 0
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		hold := never
		if n == 1 {
			hold = first
		}
		mu.Unlock()
		arrived <- r.Header.Get("User-Agent")
		<-hold // slow for everyone; the hedges slower still
		answer("max-age=60", "ok")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 2 * time.Second})
	lead := make(chan response, 1)
	go func() { r, _ := get(p, "/slow", "User-Agent", "a"); lead <- r }()
	testwait.Receive(t, arrived, "the first fetch to reach the origin")
	out := make(chan response, 4)
	for i := range 4 {
		go func() { r, _ := get(p, "/slow", "User-Agent", "b"+strconv.Itoa(i)); out <- r }()
	}
	testwait.Receive(t, arrived, "a hedge to reach the origin")
	close(first)
	if r := testwait.Receive(t, lead, "the leader's answer"); r.Status != http.StatusOK {
		t.Errorf("leader got %+v, want 200", r)
	}
	for i := range 4 {
		if r := testwait.Receive(t, out, "a hedger's answer"); r.Status != http.StatusOK || r.Body != "ok" {
			t.Errorf("hedger %d got %+v, want the first flight's 200 ok", i, r)
		}
	}
}
