package bench

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"corral/proxy"
	"corral/proxy/cache"
)

// A front is what clients talk to in a scenario: the origin itself, the
// naive proxy, or corral, in front of an origin at upstream.
type front struct {
	name string
	// handler returns the front's handler and a function that releases
	// it once its server has stopped; nil means the origin itself.
	handler func(tb testing.TB, upstream *url.URL) (h http.Handler, release func())
}

// fronts are the three every scenario runs against.
var fronts = []front{
	{name: "direct"},
	{name: "naive", handler: newNaive},
	{name: "corral", handler: newCorral},
}

func newNaive(_ testing.TB, upstream *url.URL) (http.Handler, func()) {
	return &Naive{Upstream: upstream, Client: NewClient(512)}, func() {}
}

func newCorral(tb testing.TB, upstream *url.URL) (http.Handler, func()) {
	return newCorralWith(tb, proxy.Config{Upstream: upstream})
}

func newCorralWith(tb testing.TB, cfg proxy.Config) (*proxy.Proxy, func()) {
	cfg.Logger = slog.New(slog.DiscardHandler)
	p, err := proxy.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return p, p.Wait
}

// start serves origin and, in front of it, f on loopback ports, and
// returns the front's URL and the origin's. Both stop when tb ends.
func start(tb testing.TB, origin http.Handler, f front) (frontURL, originURL string) {
	tb.Helper()
	ou, stopOrigin, err := serve(origin)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stopOrigin)
	if f.handler == nil {
		return ou.String(), ou.String()
	}
	h, release := f.handler(tb, ou)
	fu, stopFront, err := serve(h)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stopFront(); release() }) // runs before stopOrigin
	return fu.String(), ou.String()
}

// get fetches url with client, reads the body, and reports whether the
// answer was a complete 200.
func get(ctx context.Context, client *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK
}

// latencies collects request durations from many goroutines.
type latencies struct {
	mu   sync.Mutex
	all  []time.Duration
	errs int
}

func (l *latencies) add(ds []time.Duration, errs int) {
	l.mu.Lock()
	l.all = append(l.all, ds...)
	l.errs += errs
	l.mu.Unlock()
}

// report sends p50 and p99 to b, and the errors per op.
func (l *latencies) report(b *testing.B) {
	slices.Sort(l.all)
	b.ReportMetric(float64(Percentile(l.all, 0.50)), "p50-ns")
	b.ReportMetric(float64(Percentile(l.all, 0.99)), "p99-ns")
	b.ReportMetric(float64(l.errs)/float64(b.N), "client-errors/op")
}

// handlerTransport is a RoundTripper that answers from a handler in the
// same process, so that a benchmark measures the proxy and not loopback.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// discard is a ResponseWriter that keeps one header map and drops the
// rest, standing in for net/http's server in in-process benchmarks.
type discard struct {
	h      http.Header
	status int
}

func (d *discard) Header() http.Header { return d.h }
func (d *discard) WriteHeader(code int) {
	if d.status == 0 {
		d.status = code
	}
}
func (d *discard) Write(b []byte) (int, error) {
	d.WriteHeader(http.StatusOK)
	return len(b), nil
}

// reset readies d for the next request: an empty header, as each request
// gets from net/http, without giving the map's memory back.
func (d *discard) reset() {
	clear(d.h)
	d.status = 0
}

// ceiling is the fastest a handler can answer the hot hit: the bytes corral
// sends, headers included, written from memory with nothing decided.
type ceiling struct {
	header map[string][]string
	body   []byte
}

// newCeiling answers like corral's hit on origin's body.
func newCeiling(body []byte, cacheControl string) *ceiling {
	return &ceiling{
		header: map[string][]string{
			"Content-Type":   {"application/json"},
			"Cache-Control":  {cacheControl},
			"Date":           {time.Now().UTC().Format(http.TimeFormat)},
			"Age":            {"0"},
			"Via":            {"1.1 corral"},
			"Cache-Status":   {"corral; hit; ttl=3600"},
			"Content-Length": {strconv.Itoa(len(body))},
		},
		body: body,
	}
}

func (c *ceiling) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	for k, vs := range c.header {
		h[k] = vs
	}
	w.WriteHeader(http.StatusOK)
	w.Write(c.body) //nolint:errcheck
}

// lruStore is a cache.Store with a plain LRU policy over at most
// maxEntries entries, to compare corral's admission policy against. It
// keeps no purge records (Cond.Since is ignored): the benchmarks never
// purge.
type lruStore struct {
	maxEntries int

	mu    sync.Mutex
	ll    *list.List // front is most recent
	items map[string]*list.Element
}

type lruItem struct {
	key     string
	e       *cache.Entry
	expires time.Time
}

func newLRUStore(maxEntries int) *lruStore {
	return &lruStore{maxEntries: maxEntries, ll: list.New(), items: map[string]*list.Element{}}
}

func (s *lruStore) Get(_ context.Context, key string) (*cache.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return nil, cache.ErrNotFound
	}
	it := el.Value.(*lruItem)
	if time.Now().After(it.expires) {
		s.ll.Remove(el)
		delete(s.items, key)
		return nil, cache.ErrNotFound
	}
	s.ll.MoveToFront(el)
	return it.e, nil
}

func (s *lruStore) Set(_ context.Context, key string, e *cache.Entry, ttl time.Duration, cond cache.Cond) error {
	if ttl <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	el, found := s.items[key]
	if found && time.Now().After(el.Value.(*lruItem).expires) {
		s.ll.Remove(el)
		delete(s.items, key)
		el, found = nil, false
	}
	if cond.IfAbsent && found || cond.IfID != 0 && (!found || el.Value.(*lruItem).e.ID != cond.IfID) {
		return cache.ErrConflict
	}
	it := &lruItem{key: key, e: e, expires: time.Now().Add(ttl)}
	if found {
		el.Value = it
		s.ll.MoveToFront(el)
		return nil
	}
	s.items[key] = s.ll.PushFront(it)
	for s.ll.Len() > s.maxEntries {
		el := s.ll.Back()
		s.ll.Remove(el)
		delete(s.items, el.Value.(*lruItem).key)
	}
	return nil
}

func (s *lruStore) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.items[key]; ok {
		s.ll.Remove(el)
		delete(s.items, key)
	}
	return nil
}

func (s *lruStore) Purge(_ context.Context, key string, prefix bool, _ time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, el := range s.items {
		if k == key || prefix && strings.HasPrefix(k, key) {
			s.ll.Remove(el)
			delete(s.items, k)
			n++
		}
	}
	return n, nil
}

// zipfKeys are the paths of the many-keys workloads: fixed width, so that
// every entry weighs the same, each with its own body of bodySize bytes.
func zipfKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("/k/%05d", i)
	}
	return keys
}

const bodySize = 512

// pathBody is an Origin.PathBody: bodySize bytes that start with the path.
func pathBody(path string) []byte {
	b := make([]byte, bodySize)
	for i := range b {
		b[i] = ' '
	}
	copy(b, `{"path":"`+path+`"}`)
	return b
}
