package proxy

import (
	"corral/freshness"
	"corral/internal/testwait"
	"corral/proxy/cache"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Cache poisoning by denial of service (CPDoS): one client's field makes
// the origin answer an error or a redirect, or an answer it must not
// share, and the cache keeps that in place of the good answer everyone
// else gets. The verification attack on issue 23 did it with a field the
// origin answers 404 or 301 to, and with one it answers with Set-Cookie.

// cpdosOrigin answers "good" (max-age=1, stale-if-error=60) to every
// request, unless the request carries X-Bad: then what bad writes; or,
// once down is set, 500 to everyone.
func cpdosOrigin(t *testing.T, clk *clock, down *atomic.Bool, bad func(w http.ResponseWriter)) *origin {
	return newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case down.Load():
			w.WriteHeader(http.StatusInternalServerError)
		case r.Header.Get("X-Bad") != "":
			bad(w)
		default:
			w.Header().Set("Cache-Control", "max-age=1, stale-if-error=60")
			fmt.Fprint(w, "good")
		}
	})
}

func TestOneClientsErrorDoesNotReplaceEveryonesAnswer(t *testing.T) {
	for _, confirmFails := range []bool{false, true} {
		t.Run(fmt.Sprintf("confirmation fails %v", confirmFails), func(t *testing.T) {
			testOneClientsError(t, confirmFails)
		})
	}
}

func testOneClientsError(t *testing.T, confirmFails bool) {
	for _, bad := range []struct {
		name  string
		write func(w http.ResponseWriter)
	}{
		{"404 with max-age", func(w http.ResponseWriter) {
			w.Header().Set("Cache-Control", "max-age=60")
			http.Error(w, "no such thing", http.StatusNotFound)
		}},
		{"301 with max-age", func(w http.ResponseWriter) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Location", "https://elsewhere.example/")
			w.WriteHeader(http.StatusMovedPermanently)
		}},
		{"410, heuristically fresh", func(w http.ResponseWriter) {
			w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
			http.Error(w, "gone", http.StatusGone)
		}},
		{"200 with Set-Cookie", func(w http.ResponseWriter) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Set-Cookie", "session=abuser")
			fmt.Fprint(w, "yours")
		}},
		{"200, private", func(w http.ResponseWriter) {
			w.Header().Set("Cache-Control", "private, max-age=60")
			fmt.Fprint(w, "yours")
		}},
		{"200 with Vary: *", func(w http.ResponseWriter) {
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Vary", "*")
			fmt.Fprint(w, "yours")
		}},
	} {
		t.Run(bad.name, func(t *testing.T) {
			clk := newClock()
			var down atomic.Bool
			o := cpdosOrigin(t, clk, &down, bad.write)
			if confirmFails {
				// The request that carries nothing of one client's (Go's
				// own User-Agent) fails.
				good := o.handler.Load()
				o.set(func(w http.ResponseWriter, r *http.Request) {
					if strings.HasPrefix(r.Header.Get("User-Agent"), "Go-http-client") {
						w.WriteHeader(http.StatusServiceUnavailable)
						return
					}
					(*good)(w, r)
				})
			}
			p := newTestProxy(t, o, clk, Config{})
			victim := func(i int) response {
				r, _ := get(p, "/q", "User-Agent", fmt.Sprintf("victim/%d", i))
				return r
			}
			if r := victim(0); r.Body != "good" {
				t.Fatalf("warming: %+v", r)
			}
			clk.Advance(2 * time.Second) // stale

			// The abuser asks for a fresh answer with its field.
			a, _ := get(p, "/q", "User-Agent", "abuser", "X-Bad", "1", "Cache-Control", "no-cache")
			if a.Body == "good" {
				t.Errorf("the abuser got %+v, want the origin's answer to its own request", a)
			}
			p.Wait() // the confirmation, which carries nothing of the abuser's

			// The origin fails now: the good answer, stored, stands in.
			clk.Advance(2 * time.Second)
			down.Store(true)
			for i := 1; i <= 3; i++ {
				if r := victim(i); r.Status != 200 || r.Body != "good" || !strings.Contains(r.CacheStatus, "stale-if-error") {
					t.Errorf("victim %d during an outage after the abuser: %+v, want the good answer, stale", i, r)
				}
			}
			down.Store(false)
			clk.Advance(2 * time.Second)
			if r := victim(4); r.Status != 200 || r.Body != "good" {
				t.Errorf("victim after the outage: %+v, want the good answer", r)
			}
		})
	}
}

// When the answer really is everyone's (the resource is gone for every
// client, not for one client's field), the background request that
// carries nothing of one client's confirms it, and it is stored for
// everyone as before.
func TestAnErrorForEveryoneIsConfirmedAndStored(t *testing.T) {
	clk := newClock()
	var gone atomic.Bool
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		if gone.Load() {
			http.Error(w, "gone", http.StatusGone)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1")
		fmt.Fprint(w, "here")
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/q", "User-Agent", "a")
	clk.Advance(2 * time.Second)
	gone.Store(true)
	if r, _ := get(p, "/q", "User-Agent", "b"); r.Status != http.StatusGone {
		t.Fatalf("after the resource went: %+v, want 410", r)
	}
	p.Wait()
	before := o.count()
	if r, _ := get(p, "/q", "User-Agent", "c"); r.Status != http.StatusGone || !strings.HasPrefix(r.CacheStatus, "corral; hit") {
		t.Errorf("another client: %+v, want the 410, from the cache", r)
	}
	if o.count() != before {
		t.Errorf("the confirmed 410 cost another upstream request")
	}
}

// Issue 23, verification attack (inflight-hog): under
// -upstream-max-inflight, fetches a client started and left at a tarpit
// hold the slots, and everyone else's request for a URL with a stale copy
// waited in the queue for up to -upstream-timeout. A stale copy that may
// stand in for an unreachable origin stands in for full caps at once.
func TestFullCapsServeStaleAtOnce(t *testing.T) {
	clk := newClock()
	p := newHoggedProxy(t, clk, "max-age=1", 2*time.Second, Config{})
	victim := make(chan response, 1)
	go func() {
		r, _ := get(p, "/q", "User-Agent", "victim")
		victim <- r
	}()
	r := testwait.Receive(t, victim, "the victim's answer, while the caps are full")
	if r.Status != 200 || r.Body != "good" || !strings.Contains(r.CacheStatus, "detail=upstream-busy") {
		t.Errorf("victim while the caps are full: %+v, want the stale copy at once", r)
	}
}

// Issue 23, verification attack (tarpit-hangup): the clients of a URL
// whose first flight the origin holds (an abuser's field it tarpits) hedge
// after -hedge-after; once their own flights ended, the next client joined
// the held flight again and waited -hedge-after too, each time the abuser
// renewed it. While a first flight is known to be slow, a client with
// other fields than its leader's flies on its own at once.
func TestAHeldFlightHoldsOnlyItsFirstWaiters(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Bad") != "" {
			arrived <- struct{}{}
			<-release
		}
		w.Header().Set("Cache-Control", "max-age=1")
		fmt.Fprint(w, "good")
	})
	p := newTestProxy(t, o, clk, Config{HedgeAfter: 20 * time.Millisecond})
	get(p, "/q")
	clk.Advance(2 * time.Second)

	go get(p, "/q", "User-Agent", "abuser", "X-Bad", "1")
	testwait.Receive(t, arrived, "the abuser's fetch to be held")
	if r, _ := get(p, "/q", "User-Agent", "victim/1"); r.Body != "good" {
		t.Fatalf("the first victim: %+v, want its own answer after -hedge-after", r)
	}
	// From now on a client that still joined the held flight would wait
	// for ever.
	p.herds.hedgeAfter.Store(int64(time.Hour))
	clk.Advance(2 * time.Second)
	victim := make(chan response, 1)
	go func() {
		r, _ := get(p, "/q", "User-Agent", "victim/2")
		victim <- r
	}()
	if r := testwait.Receive(t, victim, "the second victim's answer"); r.Body != "good" {
		t.Errorf("the second victim: %+v, want its own answer", r)
	}
}

// Issue 23, verification attack (anon-swr): an abuser spent the origin's
// anonymous tier, so the background refreshes, which carry nothing of one
// client's, got 429, and the clients that send their own key were served
// the stale answer for the whole stale-while-revalidate window (25 s old
// data where the origin answered them fresh). Once a refresh is refused,
// a client that sends fields of its own fetches in the foreground.
func TestARefusedRefreshLetsKeyedClientsFetch(t *testing.T) {
	clk := newClock()
	var spent atomic.Bool
	var version atomic.Int64
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "" && spent.Load() {
			http.Error(w, "anonymous quota spent", http.StatusTooManyRequests)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-while-revalidate=30")
		fmt.Fprintf(w, "v%d", version.Add(1))
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/q", "X-Api-Key", "k1")
	spent.Store(true)
	clk.Advance(2 * time.Second)
	if r, _ := get(p, "/q", "X-Api-Key", "k2"); r.Body != "v1" {
		t.Fatalf("stale hit: %+v, want v1 while it refreshes", r)
	}
	p.Wait() // the refresh, refused
	if r, _ := get(p, "/q", "X-Api-Key", "k3"); r.Body != "v2" {
		t.Errorf("a keyed client after the refresh was refused: %+v, want v2, fetched with its key", r)
	}
	if r, _ := get(p, "/q"); r.Status != 200 || r.Body != "v2" {
		t.Errorf("an anonymous client then: %+v, want v2 from the cache", r)
	}
}

// Issue 23, verification attack (cold URL): with nothing stored, the
// abuser's 404 was the first answer, stored for everyone for its lifetime
// (as RFC 9111 lets a shared cache do); polling every 25 ms, the abuser
// was first again at each expiry, and the others never got the answer the
// origin gives them. When a request with one client's fields gets an error
// again in place of an error that one got, a refresh with nothing of any
// client's asks: the poison lasts one lifetime, not for as long as the
// abuser polls.
func TestOneClientsErrorOnAColdURLLastsOneLifetime(t *testing.T) {
	clk := newClock()
	var down atomic.Bool
	o := cpdosOrigin(t, clk, &down, func(w http.ResponseWriter) {
		w.Header().Set("Cache-Control", "max-age=60")
		http.Error(w, "no such thing", http.StatusNotFound)
	})
	p := newTestProxy(t, o, clk, Config{})
	abuser := []string{"User-Agent", "abuser", "X-Bad", "1"}
	for round := range 2 {
		if round > 0 {
			clk.Advance(61 * time.Second) // the first 404 expired
		}
		if r, _ := get(p, "/cold", abuser...); r.Status != http.StatusNotFound {
			t.Fatalf("the abuser, round %d: %+v, want its 404", round, r)
		}
		p.Wait()
	}
	for i := range 3 {
		if r, _ := get(p, "/cold", "User-Agent", fmt.Sprintf("victim/%d", i)); r.Status != 200 || r.Body != "good" {
			t.Errorf("victim %d after the abuser's second 404: %+v, want the good answer", i, r)
		}
	}
}

// Issue 23, second verification attack (expiry-race): a good answer with
// no stale window and no validators (s-maxage=2) left the store when it
// expired, so that the URL was cold again, and the abuser, first to ask
// at its expiry with the field the origin answers 404 to, had its 404
// (fresh for -default-ttl 30s) stored for everyone. A good answer is kept
// past its expiry, never served once stale, so that no client's error
// takes its place.
func TestAnExpiredGoodAnswerStillKeepsOneClientsErrorOut(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Bad") != "" {
			http.Error(w, "no such thing", http.StatusNotFound) // -default-ttl makes it fresh
			return
		}
		w.Header().Set("Cache-Control", "s-maxage=2")
		fmt.Fprint(w, "good")
	})
	// A store that expires entries by the test's clock.
	store := cache.NewMemory(cache.Config{MaxBytes: 1 << 20, Now: clk.Now})
	p := newTestProxy(t, o, clk, Config{Store: store, Policy: freshness.Policy{DefaultTTL: 30 * time.Second}})
	get(p, "/q", "User-Agent", "victim/0")
	clk.Advance(10 * time.Second) // long expired, no stale window
	if r, _ := get(p, "/q", "User-Agent", "abuser", "X-Bad", "1"); r.Status != http.StatusNotFound {
		t.Fatalf("the abuser: %+v, want its 404", r)
	}
	for i := 1; i <= 3; i++ {
		if r, _ := get(p, "/q", "User-Agent", fmt.Sprintf("victim/%d", i)); r.Status != 200 || r.Body != "good" {
			t.Errorf("victim %d after the abuser: %+v, want the good answer", i, r)
		}
	}
}

// Issue 23, second verification attack (inflight-hog-split): with the
// caps full, a failed fetch of a stale URL (turned away) made the next
// clients' hits start a background refresh, which waited in the queue,
// and each client that came next joined its flight and waited too. A
// refresh with a stale copy that may stand in is turned away at once, as
// a client's fetch is, and no client waits.
func TestFullCapsHoldNoClientOnARefresh(t *testing.T) {
	clk := newClock()
	// No hedging: a client that joined a queued flight would wait for
	// the queue, up to the upstream timeout.
	p := newHoggedProxy(t, clk, "max-age=1, stale-if-error=60", 0, Config{HedgeAfter: -1})
	for i := range 12 {
		clk.Advance(300 * time.Millisecond)
		victim := make(chan response, 1)
		go func() {
			r, _ := get(p, "/q", "X-Api-Key", fmt.Sprintf("good-%d", i))
			victim <- r
		}()
		if r := testwait.Receive(t, victim, fmt.Sprintf("victim %d's answer, while the caps are full", i)); r.Body != "good" {
			t.Errorf("victim %d: %+v, want the stale copy", i, r)
		}
	}
}

// newHoggedProxy returns a proxy with cfg, one upstream slot and a queue,
// in front of an origin that answers "good" with cacheControl, and holds
// a request for /hog until the test ends. It stores /q, lets age pass,
// and returns once an abuser's request for /hog holds the one slot.
func newHoggedProxy(t *testing.T, clk *clock, cacheControl string, age time.Duration, cfg Config) *Proxy {
	t.Helper()
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hog" {
			arrived <- struct{}{}
			<-release
		}
		w.Header().Set("Cache-Control", cacheControl)
		fmt.Fprint(w, "good")
	})
	cfg.UpstreamMaxInflight, cfg.UpstreamMaxQueue = 1, 1000
	p := newTestProxy(t, o, clk, cfg)
	t.Cleanup(func() { close(release) }) // first: the proxy's cleanup waits for the fetch
	get(p, "/q")
	clk.Advance(age)
	go get(p, "/hog", "User-Agent", "abuser")
	testwait.Receive(t, arrived, "the abuser's fetch to hold the one slot")
	return p
}
