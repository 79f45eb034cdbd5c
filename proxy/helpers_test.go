package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"corral/proxy/internal/fakeclock"
)

// clock is a settable clock for Config.Now.
type clock = fakeclock.Clock

func newClock() *clock { return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)) }

// origin is an httptest origin that counts the requests it receives and
// stamps Date from the test's clock, so that ages come out as the test
// says.
type origin struct {
	*httptest.Server
	requests atomic.Int64
	handler  atomic.Pointer[http.HandlerFunc]
}

func newOrigin(t *testing.T, clk *clock, h http.HandlerFunc) *origin {
	t.Helper()
	o := &origin{}
	o.set(h)
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.requests.Add(1)
		w.Header().Set("Date", clk.Now().Format(http.TimeFormat))
		(*o.handler.Load())(w, r)
	}))
	t.Cleanup(o.Close)
	return o
}

// answer is an origin handler that sends cacheControl and body.
func answer(cacheControl, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", cacheControl)
		io.WriteString(w, body)
	}
}

// etagAnswer is an origin handler that sends cacheControl and the ETag
// "v1": a 304 to a request whose If-None-Match names it, else the body
// that body makes for r.
func etagAnswer(cacheControl string, body func(r *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", cacheControl)
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		io.WriteString(w, body(r))
	}
}

func (o *origin) set(h http.HandlerFunc) { o.handler.Store(&h) }

func (o *origin) count() int64 { return o.requests.Load() }

// newTestProxy returns a Proxy in front of o on clk, with cfg's other
// fields as given; a cfg.Upstream gives the upstream's path.
func newTestProxy(t *testing.T, o *origin, clk *clock, cfg Config) *Proxy {
	t.Helper()
	u, err := url.Parse(o.URL)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != nil {
		u.Path = cfg.Upstream.Path
	}
	cfg.Upstream = u
	cfg.Now = clk.Now
	tr := newTransport(time.Minute)
	if cfg.Transport == nil {
		cfg.Transport = tr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Wait()
		tr.CloseIdleConnections()
	})
	return p
}

// response is what a client saw, reduced to what the tests compare.
type response struct {
	Status      int
	Body        string
	CacheStatus string
	Age         string
}

func newRequest(method, path string) *http.Request { return httptest.NewRequest(method, path, nil) }

func get(p http.Handler, path string, hdr ...string) (response, http.Header) {
	return do(p, http.MethodGet, path, hdr...)
}

func do(p http.Handler, method, path string, hdr ...string) (response, http.Header) {
	return doFrom(p, "", method, path, hdr...)
}

// doFrom is do for a client at the RemoteAddr client; "" keeps
// httptest's 192.0.2.1:1234.
func doFrom(p http.Handler, client, method, path string, hdr ...string) (response, http.Header) {
	req := httptest.NewRequest(method, path, nil)
	if client != "" {
		req.RemoteAddr = client
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	return response{
		Status:      res.StatusCode,
		Body:        string(body),
		CacheStatus: res.Header.Get("Cache-Status"),
		Age:         res.Header.Get("Age"),
	}, res.Header
}
