package proxy

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// sink is a ResponseWriter that hashes what it is sent instead of keeping
// it, and samples the heap as the body streams through.
type sink struct {
	header   http.Header
	status   int
	n        int64
	h        io.Writer
	sum      func() []byte
	peakHeap uint64
	next     int64
}

func newSink() *sink {
	h := sha256.New()
	return &sink{header: http.Header{}, h: h, sum: func() []byte { return h.Sum(nil) }}
}

func (s *sink) Header() http.Header { return s.header }
func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
func (s *sink) Flush() {}
func (s *sink) Write(b []byte) (int, error) {
	s.WriteHeader(200)
	s.h.Write(b)
	s.n += int64(len(b))
	if s.n >= s.next {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s.peakHeap = max(s.peakHeap, ms.HeapAlloc)
		s.next += 4 << 20
	}
	return len(b), nil
}

// pattern writes n bytes of a repeating pattern to w.
func pattern(w io.Writer, n int64) {
	chunk := []byte(strings.Repeat("corral-", 4096))
	for n > 0 {
		k := min(n, int64(len(chunk)))
		w.Write(chunk[:k])
		n -= k
	}
}

func TestLargeBodyStreamsWithoutBuffering(t *testing.T) {
	const size, limit = 64 << 20, 1 << 20
	want := sha256.New()
	pattern(want, size)
	for _, declared := range []bool{true, false} {
		t.Run(fmt.Sprintf("Content-Length declared=%v", declared), func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Cache-Control", "max-age=60")
				if declared {
					w.Header().Set("Content-Length", strconv.Itoa(size))
				}
				pattern(w, size)
			})
			p := newTestProxy(t, o, clk, Config{MaxObjectBytes: limit})

			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			s := newSink()
			p.ServeHTTP(s, newRequest("GET", "/big"))

			if s.status != 200 || s.n != size || string(s.sum()) != string(want.Sum(nil)) {
				t.Fatalf("client got status %d and %d bytes (hash match %v), want 200 and the whole %d", s.status, s.n, string(s.sum()) == string(want.Sum(nil)), size)
			}
			if grew := int64(s.peakHeap) - int64(before.HeapAlloc); grew > 16<<20 {
				t.Errorf("heap grew by %d MiB while streaming %d MiB; the body was buffered", grew>>20, size>>20)
			}
			if got := s.header.Get("Cache-Status"); !strings.Contains(got, "detail=too-large") {
				t.Errorf("Cache-Status %q, want detail=too-large", got)
			}
			// The URL is now passed straight through: one upstream request each.
			before2 := o.count()
			s2 := newSink()
			p.ServeHTTP(s2, newRequest("GET", "/big"))
			if s2.n != size || o.count() != before2+1 {
				t.Errorf("second client got %d bytes with %d upstream requests, want %d with 1", s2.n, o.count()-before2, size)
			}
		})
	}
}

func TestMarkedURLBecomesCacheableAgain(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("private", "mine"))
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/x") // private: the URL is marked
	o.set(answer("max-age=60", "shared"))
	first, _ := get(p, "/x") // goes through on its own, and is stored on the way
	second, _ := get(p, "/x")
	if first.Body != "shared" || second.Body != "shared" || !strings.Contains(second.CacheStatus, "hit") {
		t.Errorf("got %q then %q (%s), want the new storable answer served from the cache", first.Body, second.Body, second.CacheStatus)
	}
	if c := o.count(); c != 2 {
		t.Errorf("origin saw %d requests, want 2", c)
	}
}
