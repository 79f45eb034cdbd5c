package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// nullWriter is a ResponseWriter that keeps nothing but its header, which
// reset empties without giving its memory back: what net/http hands each
// request, without net/http's own allocations.
type nullWriter struct {
	h      http.Header
	status int
}

func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) WriteHeader(code int)        { w.status = code }
func (w *nullWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nullWriter) reset()                      { clear(w.h); w.status = 0 }

// TestFreshHitAllocatesOnce pins the cost of corral's hot path: a fresh
// hit allocates once, the copy of the stored header that this client's
// handler may change (RFC 9111 section 4 leaves the stored one alone),
// and nothing else: no lookup, decision, Cache-Status or Age allocates.
// It was written before the package split of issue 17, which must keep it.
func TestFreshHitAllocatesOnce(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=3600", `{"visitors":1}`))
	p := newTestProxy(t, o, clk, Config{})
	req := httptest.NewRequest(http.MethodGet, "/api/stats", nil)
	w := &nullWriter{h: http.Header{}}
	p.ServeHTTP(w, req) // the miss that stores it
	w.reset()
	p.ServeHTTP(w, req) // the first hit formats the field values it keeps
	if got := w.h.Get("Cache-Status"); got != "corral; hit; ttl=3600" {
		t.Fatalf("the second request got Cache-Status %q, want a fresh hit", got)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		w.reset()
		p.ServeHTTP(w, req)
	})
	if allocs != 1 {
		t.Errorf("a fresh hit allocated %v times, want 1", allocs)
	}
}
