package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/internal/testwait"
	"corral/proxy/admin"
)

// callAdmin sends method path to a's handler with the given Authorization
// header and returns the status and body.
func callAdmin(a http.Handler, method, path, auth string) (int, string) {
	req := httptest.NewRequest(method, path, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// scrape returns the corral_ samples of a's /metrics, keyed by name and
// labels as the exposition format writes them.
func scrape(t *testing.T, a http.Handler) map[string]float64 {
	t.Helper()
	code, body := callAdmin(a, http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics answered %d: %s", code, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "corral_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// pick returns the samples of m whose key starts with prefix.
func pick(m map[string]float64, prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

func TestMetricsCountKnownTraffic(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/private":
			w.Header().Set("Cache-Control", "private")
		case "/down":
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.Header().Set("Cache-Control", "max-age=60")
		}
		io.WriteString(w, "body")
	})
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "")

	get(p, "/a")                                    // miss
	get(p, "/a")                                    // hit
	get(p, "/a")                                    // hit
	do(p, http.MethodPost, "/a")                    // bypass; drops /a
	get(p, "/a")                                    // miss
	get(p, "/private")                              // miss, marks /private uncacheable
	get(p, "/private")                              // bypass
	get(p, "/down")                                 // miss: the shared 503
	clk.Advance(2 * time.Minute)                    // /a is stale, without stale windows
	get(p, "/a", "Cache-Control", "only-if-cached") // nothing usable: 504 by corral, not counted upstream

	got := scrape(t, a)
	want := map[string]float64{
		`corral_requests_total{outcome="hit"}`:             2,
		`corral_requests_total{outcome="miss"}`:            4,
		`corral_requests_total{outcome="bypass"}`:          2,
		`corral_requests_total{outcome="stale"}`:           0,
		`corral_requests_total{outcome="revalidated"}`:     0,
		`corral_requests_total{outcome="coalesced"}`:       0,
		`corral_requests_total{outcome="stale_if_error"}`:  0,
		`corral_requests_total{outcome="stale_busy"}`:      0,
		`corral_requests_total{outcome="error"}`:           1,
		`corral_requests_total{outcome="busy"}`:            0,
		`corral_requests_total{outcome="abandoned"}`:       0,
		`corral_upstream_requests_total{result="2xx"}`:     5,
		`corral_upstream_requests_total{result="3xx"}`:     0,
		`corral_upstream_requests_total{result="4xx"}`:     0,
		`corral_upstream_requests_total{result="5xx"}`:     1,
		`corral_upstream_requests_total{result="timeout"}`: 0,
		`corral_upstream_requests_total{result="error"}`:   0,
		`corral_purged_entries_total`:                      1,
		`corral_background_refreshes_total`:                0,
		`corral_upstream_throttled_total`:                  0,
	}
	for _, prefix := range []string{"corral_requests_total", "corral_upstream_requests_total", "corral_purged", "corral_background", "corral_upstream_throttled"} {
		for k, v := range pick(got, prefix) {
			if _, ok := want[k]; !ok {
				want[k] = v // a new label: shown in the diff below only if asserted
			}
		}
	}
	gotCounters := map[string]float64{}
	for k := range want {
		gotCounters[k] = got[k]
	}
	if diff := cmp.Diff(want, gotCounters); diff != "" {
		t.Errorf("counters after known traffic (-want +got):\n%s", diff)
	}
	outcomes := 0.0
	for _, v := range pick(got, "corral_requests_total") {
		outcomes += v
	}
	if outcomes != 9 {
		t.Errorf("outcomes add up to %v, want 9: each request counted once", outcomes)
	}
	if n := got["corral_request_duration_seconds_count"]; n != 9 {
		t.Errorf("client latency histogram counted %v requests, want 9", n)
	}
	if n := got["corral_upstream_duration_seconds_count"]; n != 6 {
		t.Errorf("upstream latency histogram counted %v exchanges, want 6", n)
	}
	if o.count() != 6 {
		t.Errorf("origin saw %d requests, want 6", o.count())
	}
}

func TestPurgeDuringFetchLeavesNoWriteBack(t *testing.T) {
	tests := []struct {
		name  string
		purge string
	}{
		{"one URL", "/purge?url=/a"},
		{"absolute URL", "/purge?url=http://corral.example/a"},
		{"prefix", "/purge?prefix=/"},
		{"everything", "/purge?all=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			arrived, release := make(chan struct{}), make(chan struct{})
			o := newOrigin(t, clk, holding(arrived, release, answer("max-age=60", "old")))
			p := newTestProxy(t, o, clk, Config{})
			a := newAdmin(p, "")

			first := make(chan response)
			go func() { r, _ := get(p, "/a"); first <- r }()
			testwait.Receive(t, arrived, "the fetch to reach the origin")
			if code, body := callAdmin(a, http.MethodPost, tt.purge, ""); code != http.StatusOK {
				t.Fatalf("purge answered %d: %s", code, body)
			}
			close(release)
			if got := testwait.Receive(t, first, "the first answer"); got.Body != "old" || strings.Contains(got.CacheStatus, "stored") {
				t.Errorf("in-flight fetch answered %+v; want its body, not stored", got)
			}

			o.set(answer("max-age=60", "new"))
			clk.Advance(time.Second) // a fetch that starts after the purge
			got, _ := get(p, "/a")
			want := response{Status: 200, Body: "new", CacheStatus: "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("after the purge (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPurgeEndpoint(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "s3cret")
	const auth = "Bearer s3cret"
	for _, path := range []string{"/api/a", "/api/a?x=1", "/api/b", "/other"} {
		get(p, path)
	}

	tests := []struct {
		name     string
		method   string
		path     string
		auth     string
		wantCode int
		wantBody string
	}{
		{"no token", http.MethodPost, "/purge?all=1", "", 401, "missing or wrong bearer token\n"},
		{"wrong token", http.MethodPost, "/purge?all=1", "Bearer guess", 401, "missing or wrong bearer token\n"},
		{"nothing named", http.MethodPost, "/purge", auth, 400, "give exactly one of url=, prefix= or all=1\n"},
		{"two named", http.MethodPost, "/purge?url=/a&all=1", auth, 400, "give exactly one of url=, prefix= or all=1\n"},
		{"unescaped query", http.MethodPost, "/purge?url=/a?x=1&y=2", auth, 400, `unknown parameter "y"; escape the URL's own query (url=/a%3Fx%3D1%26y%3D2)` + "\n"},
		{"all=0 is no purge", http.MethodPost, "/purge?all=0", auth, 400, `all="0": want all=1` + "\n"},
		{"not a path", http.MethodPost, "/purge?url=api/a", auth, 400, `"api/a" is not a URL path (such as /api/stats) or an absolute URL` + "\n"},
		{"GET is not a purge", http.MethodGet, "/purge?all=1", auth, 405, "Method Not Allowed\n"},
		{"one URL, query included", http.MethodPost, "/purge?url=" + "/api/a%3Fx%3D1", auth, 200, `{"purged":1}` + "\n"},
		{"prefix", http.MethodPost, "/purge?prefix=/api/", auth, 200, `{"purged":2}` + "\n"},
		{"gone already", http.MethodPost, "/purge?url=/api/b", auth, 200, `{"purged":0}` + "\n"},
		{"everything", http.MethodPost, "/purge?all=1", auth, 200, `{"purged":1}` + "\n"},
		{"health needs no token", http.MethodGet, "/healthz", "", 200, "ok\n"},
		{"metrics need the token", http.MethodGet, "/metrics", "", 401, "missing or wrong bearer token\n"},
	}
	for _, tt := range tests {
		code, body := callAdmin(a, tt.method, tt.path, tt.auth)
		if diff := cmp.Diff([]any{tt.wantCode, tt.wantBody}, []any{code, body}); diff != "" {
			t.Errorf("%s: %s %s (-want +got):\n%s", tt.name, tt.method, tt.path, diff)
		}
	}
	before := o.count()
	get(p, "/other")
	if o.count() != before+1 {
		t.Errorf("/other was served from the cache after purging everything")
	}
}

// Profiles are an operator's, like /metrics: behind the token on the
// admin listener, and never on the client port, where the path is just
// another URL of the origin's.
func TestProfilingEndpoint(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "s3cret")
	const auth = "Bearer s3cret"
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/profile?seconds=1"} {
		if code, body := callAdmin(a, http.MethodGet, path, ""); code != 401 {
			t.Errorf("GET %s without the token: %d %q, want 401", path, code, body)
		}
	}
	if code, body := callAdmin(a, http.MethodGet, "/debug/pprof/", auth); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("GET /debug/pprof/ with the token: %d, want 200 listing the profiles; got %.200q", code, body)
	}
	if code, body := callAdmin(a, http.MethodGet, "/debug/pprof/goroutine?debug=1", auth); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1 with the token: %d, want 200 and the goroutines; got %.200q", code, body)
	}
	if code, body := callAdmin(a, http.MethodGet, "/debug/pprof/cmdline", auth); code != 404 {
		t.Errorf("GET /debug/pprof/cmdline: %d %.100q, want 404: the command line may hold the Redis password", code, body)
	}
	before := o.count()
	if res, _ := get(p, "/debug/pprof/"); o.count() != before+1 || res.Body != "x" {
		t.Errorf("GET /debug/pprof/ on the client port: origin asked %d times, body %.100q; want the origin's answer", o.count()-before, res.Body)
	}
}

func TestReadiness(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "")
	if code, body := callAdmin(a, http.MethodGet, "/readyz", ""); code != 200 {
		t.Errorf("origin up: /readyz %d %q, want 200", code, body)
	}
	o.Close() // refuses connections from now on
	if code, body := callAdmin(a, http.MethodGet, "/readyz", ""); code != 503 || !strings.Contains(body, "upstream unreachable") {
		t.Errorf("origin down, nothing cached: /readyz %d %q, want 503 saying why", code, body)
	}

	o2 := newOrigin(t, clk, answer("max-age=60", "x"))
	p2 := newTestProxy(t, o2, clk, Config{})
	a2 := newAdmin(p2, "")
	get(p2, "/x")
	o2.Close()
	clk.Advance(time.Minute) // the last answer is old news
	if code, body := callAdmin(a2, http.MethodGet, "/readyz", ""); code != 200 {
		t.Errorf("origin down, a response cached: /readyz %d %q, want 200", code, body)
	}
	a2.Drain()
	if code, body := callAdmin(a2, http.MethodGet, "/readyz", ""); code != 503 || body != "not ready: shutting down\n" {
		t.Errorf("draining: /readyz %d %q, want 503", code, body)
	}
	if code, _ := callAdmin(a2, http.MethodGet, "/healthz", ""); code != 200 {
		t.Errorf("draining: /healthz %d, want 200: the process is still up", code)
	}
}

// TestUpstreamRateCapAcrossKeys sends 1,000 cold keys at once through a
// proxy capped at 5 requests a second with room for 10 to wait: the origin
// must never see more than 5 in a second, and every client turned away
// must get a 503 with Retry-After, at once.
func TestUpstreamRateCapAcrossKeys(t *testing.T) {
	const (
		rps   = 5
		queue = 10
		keys  = 1000
	)
	clk := newClock()
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, r.URL.Path)
	})
	// Departures are timed where corral hands a request to its
	// transport, past the guard: no loopback delay blurs them.
	tr := newTransport(time.Minute)
	t.Cleanup(tr.CloseIdleConnections)
	sent := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		return tr.RoundTrip(r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamMaxRPS: rps, UpstreamMaxQueue: queue, Transport: sent})

	start := make(chan struct{})
	type result struct {
		status     int
		retryAfter string
	}
	results := make([]result, keys)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, h := get(p, "/k/"+strconv.Itoa(i))
			results[i] = result{r.Status, h.Get("Retry-After")}
		}()
	}
	began := time.Now()
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	testwait.Receive(t, done, "the 1,000 requests")
	// On a loaded machine the herd reaches the guard over a while, and
	// the queue lets more through as tokens come: rps a second of it.
	through := 1 + queue + int(time.Since(began).Seconds()*rps)

	ok, busy := 0, 0
	for _, r := range results {
		switch {
		case r.status == http.StatusOK:
			ok++
		case r.status == http.StatusServiceUnavailable && r.retryAfter != "" && r.retryAfter != "0":
			busy++
		default:
			t.Errorf("client got %d with Retry-After %q; want 200, or 503 with Retry-After", r.status, r.retryAfter)
		}
	}
	if ok != int(o.count()) || ok > through || ok+busy != keys {
		t.Errorf("%d answered 200, %d turned away, origin saw %d; want at most %d through, the rest turned away", ok, busy, o.count(), through)
	}
	// Requests leave 1/rps apart, rps+1 of them a second apart; allow
	// 400ms for the scheduler between the token and the departure. A
	// limiter that lets a burst through sends many within milliseconds.
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	for i := 0; i+rps < len(arrivals); i++ {
		if d := arrivals[i+rps].Sub(arrivals[i]); d < time.Second-400*time.Millisecond {
			t.Errorf("corral sent %d requests within %s (arrivals %d to %d); the cap is %d a second", rps+1, d, i, i+rps, rps)
		}
	}
}

func TestInflightCapTurnsAwayAtOnce(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}), make(chan struct{})
	hold := holding(arrived, release, answer("max-age=60", "x"))
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			hold(w, r)
			return
		}
		answer("max-age=60", "x")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamMaxInflight: 1})
	slow := make(chan response)
	go func() { r, _ := get(p, "/slow"); slow <- r }()
	testwait.Receive(t, arrived, "the slow fetch")

	got, h := get(p, "/other")
	want := response{Status: 503, Body: "Service Unavailable\n", CacheStatus: "corral; fwd=uri-miss; detail=upstream-busy"}
	if diff := cmp.Diff(want, got); diff != "" || h.Get("Retry-After") != "1" {
		t.Errorf("second request while the only slot is taken (-want +got):\n%s\nRetry-After %q", diff, h.Get("Retry-After"))
	}
	close(release)
	if r := testwait.Receive(t, slow, "the slow answer"); r.Status != 200 {
		t.Errorf("slow request got %d", r.Status)
	}
	if got, _ := get(p, "/other"); got.Status != 200 {
		t.Errorf("with the slot free again, got %d, want 200", got.Status)
	}
}

// TestOriginWidePauseHoldsEveryKey has three endpoints answer 429 with
// Retry-After at once to requests that carry nothing of one client's: the
// origin's limit is corral's, not one URL's or one client's, and every key
// waits it out (one path's answer pauses only its own key, and one
// client's 429s nothing, as security_pause_test.go checks).
func TestOriginWidePauseHoldsEveryKey(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/limited1", "/limited2", "/limited3":
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		case "/strict":
			w.Header().Set("Cache-Control", "max-age=1, must-revalidate")
		default:
			w.Header().Set("Cache-Control", "max-age=1")
		}
		io.WriteString(w, "stored "+r.URL.Path)
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/stale")
	get(p, "/strict")
	for _, path := range []string{"/limited1", "/limited2", "/limited3"} {
		for _, client := range []string{"192.0.2.1:1", "198.51.100.7:1"} {
			doFrom(p, client, http.MethodGet, path) // the origin asks for 30 s of quiet
		}
	}
	clk.Advance(5 * time.Second)
	before := o.count()

	tests := []struct {
		name       string
		path       string
		want       response
		retryAfter string
	}{
		{"RFC 9111 4.2.4: stale served while held back", "/stale",
			response{Status: 200, Body: "stored /stale", Age: "5", CacheStatus: "corral; hit; ttl=-4; detail=upstream-busy"}, ""},
		{"RFC 9111 5.2.2.2: must-revalidate is not served stale", "/strict",
			response{Status: 503, Body: "Service Unavailable\n", CacheStatus: "corral; fwd=stale; detail=upstream-busy"}, "25"},
		{"a miss is turned away for what is left of the pause", "/cold",
			response{Status: 503, Body: "Service Unavailable\n", CacheStatus: "corral; fwd=uri-miss; detail=upstream-busy"}, "25"},
	}
	for _, tt := range tests {
		got, h := get(p, tt.path)
		if diff := cmp.Diff(tt.want, got); diff != "" || h.Get("Retry-After") != tt.retryAfter {
			t.Errorf("%s (-want +got):\n%s\nRetry-After %q, want %q", tt.name, diff, h.Get("Retry-After"), tt.retryAfter)
		}
	}
	if o.count() != before {
		t.Errorf("origin saw %d requests during its pause, want none", o.count()-before)
	}
	// A request that carries a client's own fields, or is answered for
	// one client, is not held back: what the origin refused a request
	// without them it may give one with them (see
	// TestBareRequestsPauseNoClientsFields).
	if got, _ := do(p, http.MethodPost, "/form"); got.Status != 200 || o.count() != before+1 {
		t.Errorf("POST during the pause: %d, origin saw %d; want 200 and one request", got.Status, o.count()-before)
	}
	clk.Advance(30 * time.Second)
	if got, _ := get(p, "/cold"); got.Status != 200 || o.count() != before+2 {
		t.Errorf("after the pause: %d, origin saw %d; want 200 and one request more", got.Status, o.count()-before)
	}
}

func TestRequestLogAtDebug(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "hello"))
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := newTestProxy(t, o, clk, Config{Logger: log})
	get(p, "/a?b=1")
	get(p, "/a?b=1")

	mu.Lock()
	defer mu.Unlock()
	type line struct {
		Msg, Method, URI, CacheStatus string `json:",omitempty"`
		Status, Bytes                 int
	}
	var got []line
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		if m["msg"] != "request" {
			continue
		}
		got = append(got, line{Msg: "request", Method: m["method"].(string), URI: m["uri"].(string),
			CacheStatus: m["cache_status"].(string), Status: int(m["status"].(float64)), Bytes: int(m["bytes"].(float64))})
	}
	want := []line{
		{"request", "GET", "/a?b=1", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60", 200, 5},
		{"request", "GET", "/a?b=1", "corral; hit; ttl=60", 200, 5},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request log lines (-want +got):\n%s", diff)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func TestShutdownWaitsForAbandonedFetch(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}), make(chan struct{})
	o := newOrigin(t, clk, holding(arrived, release, answer("max-age=60", "late")))
	p := newTestProxy(t, o, clk, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan struct{})
	go func() {
		p.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/a", nil).WithContext(ctx))
		close(left)
	}()
	testwait.Receive(t, arrived, "the fetch")
	cancel()
	testwait.Receive(t, left, "the client to leave")

	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	if err := p.Shutdown(short); err == nil {
		t.Errorf("Shutdown returned nil while a fetch still ran")
	}
	close(release)
	if err := p.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after the fetch ended: %v", err)
	}
	if got, _ := get(p, "/a"); got.Body != "late" || got.CacheStatus != "corral; hit; ttl=60" {
		t.Errorf("the abandoned fetch's answer was not stored: %+v", got)
	}
}

// holding is an origin handler that signals arrived, waits for release to
// close, then answers with h: a fetch the test can catch in flight.
func holding(arrived chan<- struct{}, release <-chan struct{}, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		h(w, r)
	}
}

// headerSignal is a ResponseWriter that closes wrote when the header is
// written, and discards the body.
type headerSignal struct {
	h     http.Header
	wrote chan struct{}
}

func (w *headerSignal) Header() http.Header         { return w.h }
func (w *headerSignal) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerSignal) WriteHeader(int)             { close(w.wrote) }
func (w *headerSignal) Flush()                      {}

func TestPassedThroughStreamDoesNotHoldASlot(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-release // the body goes on and on
			return
		}
		answer("max-age=60", "x")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamMaxInflight: 1})
	sw := &headerSignal{h: http.Header{}, wrote: make(chan struct{})}
	streamed := make(chan struct{})
	go func() {
		p.ServeHTTP(sw, httptest.NewRequest(http.MethodPost, "/stream", nil))
		close(streamed)
	}()
	testwait.Receive(t, sw.wrote, "the stream's header")

	if got, _ := get(p, "/other"); got.Status != 200 {
		t.Errorf("a fetch while one client's stream runs got %d (%s), want 200: the stream kept the only slot", got.Status, got.CacheStatus)
	}
	close(release)
	testwait.Receive(t, streamed, "the stream's end")
}

// TestQueuedRequestsHonourALaterPause queues a request behind one that
// carries nothing of a client's and that the origin answers 503 with
// Retry-After: when it leaves the queue, it is sent if it is for another
// URL, or if it carries a client's fields (here its own flight, for it
// carries credentials), which the pause does not hold back (see
// TestBareRequestsPauseNoClientsFields).
func TestQueuedRequestsHonourALaterPause(t *testing.T) {
	tests := []struct {
		name     string
		path     string
		hdr      []string
		want     response
		upstream int64
	}{
		{"the paused URL, for one client", "/first", []string{"Authorization", "Bearer someone"},
			response{Status: 503, CacheStatus: "corral; fwd=uri-miss; fwd-status=503; detail=authorization"}, 2},
		{"another URL", "/second", nil,
			response{Status: 200, Body: "x", CacheStatus: "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			arrived, release := make(chan struct{}, 2), make(chan struct{})
			hold := holding(arrived, release, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(http.StatusServiceUnavailable)
			})
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/first" {
					hold(w, r)
					return
				}
				answer("max-age=60", "x")(w, r)
			})
			p := newTestProxy(t, o, clk, Config{UpstreamMaxInflight: 1, UpstreamMaxQueue: 10})
			second := queueBehindFirst(t, p, arrived, tt.path, tt.hdr...)
			close(release) // the 503 with Retry-After frees the slot for the queued one
			got := testwait.Receive(t, second, "the queued request")
			if diff := cmp.Diff(tt.want, got); diff != "" || o.count() != tt.upstream {
				t.Errorf("queued request (-want +got):\n%s\norigin saw %d requests, want %d", diff, o.count(), tt.upstream)
			}
		})
	}
}

func TestOneUsersTooManyRequestsPausesNoOneElse(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		answer("max-age=60", "x")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{})
	if got, _ := get(p, "/mine", "Authorization", "Bearer greedy"); got.Status != 429 {
		t.Fatalf("the greedy user got %d, want the origin's 429", got.Status)
	}
	if got, _ := get(p, "/shared"); got.Status != 200 {
		t.Errorf("another client got %d (%s) after one user's 429, want 200", got.Status, got.CacheStatus)
	}
}

// TestPurgedVariantsStayGone follows a Vary marker that is replaced by a
// pass mark before the purge: the variants stored under it must not come
// back when a new marker appears.
func TestPurgedVariantsStayGone(t *testing.T) {
	clk := newClock()
	version := "old"
	var mu sync.Mutex
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Vary", "X-A")
		if r.Header.Get("X-A") == "b" && version == "old" {
			w.Header().Set("Cache-Control", "private")
		} else {
			w.Header().Set("Cache-Control", "max-age=600")
		}
		io.WriteString(w, version+"-"+r.Header.Get("X-A"))
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/x", "X-A", "a") // stored under a marker
	get(p, "/x", "X-A", "b") // private: the marker becomes a pass mark
	if n, _ := p.Purge("/x", false); n != 1 {
		t.Errorf("purge dropped %d entries, want 1", n)
	}
	mu.Lock()
	version = "new"
	mu.Unlock()
	clk.Advance(time.Second)
	get(p, "/x", "X-A", "b") // a new marker
	got, _ := get(p, "/x", "X-A", "a")
	if got.Body != "new-a" {
		t.Errorf("after the purge, variant a answered %q (%s), want the origin's new-a", got.Body, got.CacheStatus)
	}
}

// TestRevalidationDoesNotBringBackAPurgedBody purges a stale response
// while its revalidation is at the origin: the 304 still answers the
// client that asked, but the old body is not stored again.
func TestRevalidationDoesNotBringBackAPurgedBody(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}), make(chan struct{})
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=1")
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") != "" {
			arrived <- struct{}{}
			<-release
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, "old body")
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/x")
	clk.Advance(5 * time.Second) // stale: the next request revalidates
	first := make(chan response)
	go func() { r, _ := get(p, "/x"); first <- r }()
	testwait.Receive(t, arrived, "the revalidation")
	p.Purge("/x", false)
	close(release)
	if got := testwait.Receive(t, first, "the revalidated answer"); got.Body != "old body" || strings.Contains(got.CacheStatus, "stored") {
		t.Errorf("the revalidating client got %q (%s); want the body, not stored", got.Body, got.CacheStatus)
	}
	o.set(answer("max-age=60", "new body"))
	if got, _ := get(p, "/x"); got.Body != "new body" {
		t.Errorf("after the purge got %q (%s), want the origin's new body", got.Body, got.CacheStatus)
	}
}

// TestQueueWaitDoesNotAgeTheAnswer holds a fetch in the guard's queue
// while the clock moves: the answer's age counts from when the request
// left, not from when it started waiting (RFC 9111 section 4.2.3).
func TestQueueWaitDoesNotAgeTheAnswer(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}), make(chan struct{})
	hold := holding(arrived, release, answer("max-age=60", "first"))
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/first" {
			hold(w, r)
			return
		}
		answer("max-age=60", "second")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{UpstreamMaxInflight: 1, UpstreamMaxQueue: 1})
	second := queueBehindFirst(t, p, arrived, "/second")
	clk.Advance(10 * time.Second) // time spent in the queue
	close(release)
	want := response{Status: 200, Body: "second", CacheStatus: "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}
	if diff := cmp.Diff(want, testwait.Receive(t, second, "the queued request")); diff != "" {
		t.Errorf("answer fetched after a wait in the queue (-want +got):\n%s", diff)
	}
}

// queueBehindFirst sends GET /first through p, waits for it at the origin
// (arrived) so that it holds p's only upstream slot, then sends GET path
// with the header fields hdr and returns once that one waits in the
// guard's queue. The second answer arrives on the channel returned.
func queueBehindFirst(t *testing.T, p *Proxy, arrived <-chan struct{}, path string, hdr ...string) <-chan response {
	t.Helper()
	go get(p, "/first")
	testwait.Receive(t, arrived, "the first fetch")
	second := make(chan response, 1)
	go func() { r, _ := get(p, path, hdr...); second <- r }()
	// A queued request has no channel to say so: watch the guard's own
	// count.
	testwait.Until(t, "the second request to queue", func() bool { return p.guard.Stats().Queued == 1 })
	return second
}

// TestEachRequestCountedOnce checks, over traffic of every kind, that
// each request is counted in exactly one outcome: a passed request that
// the upstream guard turns away is busy, not passed as well.
func TestEachRequestCountedOnce(t *testing.T) {
	clk := newClock()
	arrived, release := make(chan struct{}), make(chan struct{})
	hold := holding(arrived, release, answer("max-age=60", "x"))
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			hold(w, r)
		case "/private":
			answer("private", "x")(w, r)
		default:
			answer("max-age=60", "x")(w, r)
		}
	})
	p := newTestProxy(t, o, clk, Config{UpstreamMaxInflight: 1})
	slow := make(chan response)
	go func() { r, _ := get(p, "/slow"); slow <- r }()
	testwait.Receive(t, arrived, "the slow fetch")

	if r, _ := get(p, "/other"); r.Status != http.StatusServiceUnavailable {
		t.Errorf("GET while the only slot is taken: %d, want 503", r.Status)
	}
	if r, _ := do(p, http.MethodPost, "/other"); r.Status != http.StatusServiceUnavailable {
		t.Errorf("POST while the only slot is taken: %d, want 503", r.Status)
	}
	close(release)
	testwait.Receive(t, slow, "the slow answer")
	get(p, "/slow")                                       // hit
	get(p, "/private")                                    // miss
	get(p, "/private")                                    // passed
	get(p, "/nothing", "Cache-Control", "only-if-cached") // error
	get(p, "http:@other:6000/")                           // rejected

	s := p.Stats()
	counted := map[string]int64{
		"hits": s.Hits.Load(), "stale": s.StaleHits.Load(), "misses": s.Misses.Load(),
		"revalidated": s.Revalidated.Load(), "coalesced": s.Coalesced.Load(),
		"stale-on-error": s.StaleOnError.Load(), "passed": s.Passed.Load(), "errors": s.Errors.Load(),
		"abandoned": s.Abandoned.Load(), "stale-on-busy": s.StaleOnBusy.Load(), "busy": s.Busy.Load(),
		"rejected": s.Rejected.Load(),
	}
	want := map[string]int64{
		"hits": 1, "stale": 0, "misses": 2, "revalidated": 0, "coalesced": 0, "stale-on-error": 0,
		"passed": 1, "errors": 1, "abandoned": 0, "stale-on-busy": 0, "busy": 2, "rejected": 1,
	}
	if diff := cmp.Diff(want, counted); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	var sum int64
	for _, n := range counted {
		sum += n
	}
	if n := s.Requests.Load(); sum != n {
		t.Errorf("outcomes add up to %d, want %d: each request counted once", sum, n)
	}
}

// newAdmin returns the admin endpoints for p, as main wires them.
func newAdmin(p *Proxy, token string) *admin.Admin {
	return admin.New(p, token, p.log, p.Metrics())
}
