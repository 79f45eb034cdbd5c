package proxy

import (
	"bufio"
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"corral/proxy/cache"
	"corral/proxy/internal/httprule"
)

// recordingTransport answers every upstream request with a cacheable 200
// that varies on one field, and keeps the requests it was sent.
type recordingTransport struct {
	mu   sync.Mutex
	vary string
	sent []*http.Request
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.sent = append(rt.sent, r)
	vary := rt.vary
	rt.mu.Unlock()
	h := http.Header{"Cache-Control": {"max-age=60"}, "Content-Type": {"text/plain"}}
	if vary != "" {
		h.Set("Vary", vary)
	}
	return &http.Response{
		StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader("ok")),
		ContentLength: 2, Request: r, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}, nil
}

func (rt *recordingTransport) take() []*http.Request {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := rt.sent
	rt.sent = nil
	return out
}

// FuzzUpstreamRequest sends fuzzed request-targets and header fields
// through the proxy and checks what went upstream: always the upstream's
// scheme and host, never userinfo, and every entry stored under the key
// of the request that fetched it, its variant keyed on the fields as they
// were sent.
func FuzzUpstreamRequest(f *testing.F) {
	for _, seed := range []struct{ method, target, name, value string }{
		{"GET", "/api/stats", "Accept", "*/*"},
		{"GET", "http:@127.0.0.1:6000/anything", "Accept", "*/*"},
		{"POST", "http:@127.0.0.1:6000/anything", "Content-Length", "0"},
		{"GET", "http://127.0.0.1:6000/abs?q=1", "Host", "evil.example"},
		{"GET", "http://user:pw@127.0.0.1:6000/x", "Accept", "*/*"},
		{"GET", "*", "Accept", "*/*"},
		{"OPTIONS", "*", "Accept", "*/*"},
		{"GET", "//evil.example/x", "Accept", "*/*"},
		{"GET", "/a/%2e%2e/b", "Accept", "*/*"},
		{"GET", "/keys/%64?x=%7e", "Accept-Language", "fr"},
		{"GET", "/v", "Connection", "Accept-Language"},
		{"GET", "/v", "X-Forwarded-Host", "evil.example"},
		{"GET", "/v", "X-Forwarded-User", "admin"},
		{"GET", "/v", "x-envoy-original-path", "/admin"},
		{"GET", "/v", "CF-Connecting-IP", "6.6.6.6"},
		{"GET", "/v", "X-HTTP-Method-Override", "DELETE"},
		{"HEAD", "/v?%zz", "Accept-Encoding", "gzip"},
		{"GET", "/v", "Accept-Language", "en;q=0.7, FR"},
		{"GET", "/v", "Accept-Encoding", "gzip;q=abc, br;q=0.50000, , identity;q=0"},
		{"GET", "/v", "Accept-Encoding", ""},
	} {
		f.Add(seed.method, seed.target, seed.name, seed.value)
	}
	clk := newClock()
	rt := &recordingTransport{}
	upstream, _ := url.Parse("http://origin.test:9000")
	store := &keyedMemory{Memory: NewMemory(256 << 20)}
	defer store.Close()
	p, err := New(Config{Upstream: upstream, Transport: rt, Now: clk.Now, Store: store})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Shutdown(f.Context()) //nolint:errcheck // nothing to drain

	f.Fuzz(func(t *testing.T, method, target, name, value string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: corral.test\r\n" + name + ": " + value + "\r\n\r\n"
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return // net/http's server answers 400 before any handler
		}
		for k, vs := range r.Header {
			for _, v := range vs {
				if !token(k) || strings.ContainsFunc(v, func(c rune) bool { return c < ' ' && c != '\t' || c == 0x7f }) {
					return // so does it for these
				}
			}
		}
		r.RemoteAddr = "192.0.2.1:4711"
		vary := ""
		if token(name) {
			vary = name
		}
		rt.mu.Lock()
		rt.vary = vary
		rt.mu.Unlock()

		clk.Advance(time.Hour) // past the purge below, and every entry stored before
		p.ServeHTTP(httptest.NewRecorder(), r)
		p.Wait()
		sent := rt.take()
		defer p.Purge("", true)

		keys := map[string]bool{}
		for _, out := range sent {
			u := out.URL
			if u.Scheme != upstream.Scheme || u.Host != upstream.Host || u.User != nil || (out.Host != "" && out.Host != upstream.Host) {
				t.Fatalf("%q went to %s (Host %q), not the upstream", raw, u, out.Host)
			}
			keys[u.RequestURI()] = true
		}
		for _, k := range store.Keys() {
			base, _, _ := strings.Cut(k, "\x00")
			if !keys[base] {
				t.Fatalf("%q stored an entry under %q, but fetched only %v", raw, k, keys)
			}
			e, _ := store.Get(t.Context(), k)
			if e == nil || len(e.Vary) == 0 || e.Kind != cache.Response || http.CanonicalHeaderKey(name) == "Via" {
				continue
			}
			if len(sent) != 1 || e.VaryKey != httprule.SentVaryKey(e.Vary, sent[0].Header) {
				t.Fatalf("%q stored a variant keyed %q, but sent %q", raw, e.VaryKey, sent[0].Header)
			}
		}
	})
}

// token reports whether s is an RFC 9110 token, as net/http's server
// requires of field names.
func token(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !(alnum || strings.IndexByte("-._~!#$%&'*+^`|", c) >= 0) {
			return false
		}
	}
	return true
}

// keyedMemory is a Memory store, as NewMemory makes, that remembers the
// keys written to it since it was last purged whole, for a test to walk.
type keyedMemory struct {
	*cache.Memory
	mu   sync.Mutex
	keys map[string]bool
}

func (m *keyedMemory) Set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, cond cache.Cond) error {
	m.mu.Lock()
	if m.keys == nil {
		m.keys = map[string]bool{}
	}
	m.keys[key] = true
	m.mu.Unlock()
	return m.Memory.Set(ctx, key, e, ttl, cond)
}

func (m *keyedMemory) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	if prefix && key == "" {
		m.mu.Lock()
		clear(m.keys)
		m.mu.Unlock()
	}
	return m.Memory.Purge(ctx, key, prefix, at)
}

// Keys returns the keys written since the last purge of everything.
func (m *keyedMemory) Keys() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Collect(maps.Keys(m.keys))
}
