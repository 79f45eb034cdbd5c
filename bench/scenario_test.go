package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"corral/proxy"
	"corral/proxy/cache"
	"corral/proxy/rules"
)

// The benchmarks' claims rest on these: corral collapses a stampede into
// one upstream request, and the naive baseline is the cache it claims to
// be, no better and no worse.

func TestStampedeThroughCorralMakesOneUpstreamRequest(t *testing.T) {
	const stampede = 50
	origin := &Origin{Latency: 20 * time.Millisecond, CacheControl: "max-age=60", PathBody: pathBody}
	u, _ := start(t, origin, front{name: "corral", handler: newCorral})
	client := NewClient(stampede)
	release := make(chan struct{})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range stampede {
		wg.Go(func() {
			<-release
			resp, err := client.Get(u + "/k/00042")
			if err != nil {
				bad.Add(1)
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), `{"path":"/k/00042"}`) {
				bad.Add(1)
			}
		})
	}
	close(release)
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Errorf("%d of %d clients got no complete 200 for their path", n, stampede)
	}
	if n := origin.Requests(); n != 1 {
		t.Errorf("origin saw %d requests for one stampede, want 1", n)
	}
}

func TestNaiveStoresFirstOKAnswerPerPath(t *testing.T) {
	var requests atomic.Int64
	origin := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if r.URL.Path == "/fail" {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write(pathBody(r.URL.Path))
	})
	u, _ := start(t, origin, front{name: "naive", handler: newNaive})
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(u + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		path     string
		status   int
		upstream int64 // origin requests so far
	}{
		{"/a", 200, 1},
		{"/a", 200, 1}, // stored
		{"/b", 200, 2}, // its own key
		{"/fail", 503, 3},
		{"/fail", 503, 4}, // errors are not stored
		{"/b", 200, 4},
	} {
		status, body := get(tc.path)
		if status != tc.status {
			t.Errorf("GET %s: status %d, want %d", tc.path, status, tc.status)
		}
		if status == http.StatusOK && body != string(pathBody(tc.path)) {
			t.Errorf("GET %s: body %.30q..., want the path's own", tc.path, body)
		}
		if n := requests.Load(); n != tc.upstream {
			t.Errorf("after GET %s: origin saw %d requests, want %d", tc.path, n, tc.upstream)
		}
	}
}

func TestLRUStoreEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := t.Context()
	s := newLRUStore(2)
	e := &cache.Entry{Status: http.StatusOK}
	s.Set(ctx, "a", e, time.Hour, cache.Cond{})
	s.Set(ctx, "b", e, time.Hour, cache.Cond{})
	s.Get(ctx, "a") // b is now the least recently used
	s.Set(ctx, "c", e, time.Hour, cache.Cond{})
	for key, want := range map[string]bool{"a": true, "b": false, "c": true} {
		if _, err := s.Get(ctx, key); (err == nil) != want {
			t.Errorf("Get(%q) found=%v, want %v", key, err == nil, want)
		}
	}
	s.Set(ctx, "d", e, -time.Second, cache.Cond{})
	if _, err := s.Get(ctx, "d"); err == nil {
		t.Error("an expired entry was served")
	}
}

// TestInProcessFrontsAnswerTheHotKey checks the in-process harness: every
// front answers 200, and only the first request goes upstream through a
// cache.
func TestInProcessFrontsAnswerTheHotKey(t *testing.T) {
	body := pathBody("/hot")
	for _, f := range hotFronts(body, "max-age=3600") {
		t.Run(f.name, func(t *testing.T) {
			origin := &Origin{CacheControl: "max-age=3600", Body: body}
			h := inProcess(t, f, origin)
			for range 3 {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/hot", nil))
				if rec.Code != http.StatusOK || rec.Body.String() != string(body) {
					t.Fatalf("status %d, body %.30q...; want 200 and the origin's body", rec.Code, rec.Body.String())
				}
			}
			want := map[string]int64{"direct": 3, "naive": 1, "corral": 1, "ceiling": 0}[f.name]
			if n := origin.Requests(); n != want {
				t.Errorf("origin saw %d requests, want %d", n, want)
			}
		})
	}
}

// TestPollHerdStopsAtItsBudget checks that a paced load is bounded by its
// poll count.
func TestPollHerdStopsAtItsBudget(t *testing.T) {
	origin := &Origin{CacheControl: "max-age=60"}
	u, _ := start(t, origin, fronts[0])
	var lat latencies
	pollHerd(context.Background(), NewClient(4), u, 4, time.Millisecond, 10, &lat)
	if len(lat.all) != 10 || lat.errs != 0 {
		t.Errorf("herd made %d polls with %d errors, want 10 and 0", len(lat.all), lat.errs)
	}
}

// TestRuleShieldsNoCacheOrigin is the demo with -demo-origin-cc no-cache
// and a rule, shortened: the origin says no-cache and allows 5 requests a
// second, a herd polls it for 3 s through corral with
// -rule '/api/ max-age=1, stale-while-revalidate=10'. Every poll is
// answered, and the origin is asked about once a second: the first miss,
// then at most one refresh per max-age window.
func TestRuleShieldsNoCacheOrigin(t *testing.T) {
	const (
		clients = 100
		d       = 3 * time.Second
	)
	r, err := rules.Parse("/api/ max-age=1, stale-while-revalidate=10")
	if err != nil {
		t.Fatal(err)
	}
	origin := DemoOrigin("no-cache")
	u, _ := start(t, origin, front{name: "corral", handler: func(tb testing.TB, upstream *url.URL) (http.Handler, func()) {
		return newCorralWith(tb, proxy.Config{Upstream: upstream, Rules: []rules.Rule{r}})
	}})
	res := Herd{Clients: clients, Interval: time.Second, Duration: d, URL: u + "/api/stats", Client: NewClient(clients)}.Run(context.Background())
	if res.Errors != 0 || res.Requests < clients {
		t.Errorf("%d polls, %d errors; want at least %d, none failed", res.Requests, res.Errors, clients)
	}
	if n, most := origin.Requests(), int64(d/time.Second)+2; n > most {
		t.Errorf("origin saw %d requests in %s, want at most %d", n, d, most)
	}
	if n := origin.Rejected(); n != 0 {
		t.Errorf("origin rejected %d requests, want none", n)
	}
}
