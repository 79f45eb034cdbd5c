package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"corral/internal/testwait"
)

// exportOrigin serves /export/... as a slow export: it declares size bytes,
// sends sent of them at once, and the rest once release is closed; and
// /stats as a small cacheable answer, held until stats is closed. It
// counts the requests for /stats apart.
type exportOrigin struct {
	*origin
	stats   atomic.Int64
	exports atomic.Int64
}

func newExportOrigin(t *testing.T, clk *clock, size, sent int, release, stats <-chan struct{}) *exportOrigin {
	t.Helper()
	eo := &exportOrigin{}
	eo.origin = newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		if strings.HasPrefix(r.URL.Path, "/export/") {
			eo.exports.Add(1)
			w.Header().Set("Content-Length", strconv.Itoa(size))
			w.Write(bytes.Repeat([]byte("e"), sent))
			w.(http.Flusher).Flush()
			<-release
			w.Write(bytes.Repeat([]byte("e"), size-sent))
			return
		}
		eo.stats.Add(1)
		<-stats
		w.Write(bytes.Repeat([]byte("s"), 16<<10))
	})
	return eo
}

// startExports asks for n distinct exports, from the client addresses
// given in turn, each on its own goroutine; the answers arrive on the
// returned channel once the exports are released.
func startExports(p http.Handler, n int, clients ...string) <-chan *http.Response {
	out := make(chan *http.Response, n)
	for i := range n {
		req := newRequest(http.MethodGet, "/export/"+strconv.Itoa(i))
		req.RemoteAddr = clients[i%len(clients)]
		go func() {
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, req)
			out <- rec.Result()
		}()
	}
	return out
}

// coldHerdCost sends a herd of n cold requests for /stats, released
// together and held at the origin until all have entered the proxy, and
// returns the origin's requests for /stats; every client must get the
// whole answer.
func coldHerdCost(t *testing.T, p http.Handler, eo *exportOrigin, n int, stats chan struct{}) int64 {
	t.Helper()
	entered := releaseWhenEntered(n, stats)
	for i, r := range herd(t, p, n, "/stats", nil, entered) {
		if r.Status != 200 || len(r.Body) != 16<<10 {
			t.Errorf("herd client %d got %d with %d bytes (%s), want 200 and 16 KiB", i, r.Status, len(r.Body), r.CacheStatus)
		}
	}
	return eo.stats.Load()
}

// TestSlowExportsReserveOnlyWhatArrived is issue 23's fifth finding: one
// client asked for ten slow exports, each declaring its length, and the
// fetches reserved every declared length up front: the buffer budget was
// spent on bytes that had not arrived, and a cold herd of 40 on another
// URL then cost 41 upstream requests instead of 1. A body reserves the
// budget as its bytes arrive.
func TestSlowExportsReserveOnlyWhatArrived(t *testing.T) {
	clk := newClock()
	release, stats := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	eo := newExportOrigin(t, clk, 256<<10, 1<<10, release, stats)
	p := newTestProxy(t, eo.origin, clk, Config{BufferBytes: 1 << 20, MaxObjectBytes: 256 << 10})

	var addrs []string // one client from many addresses: a share each
	for i := range 10 {
		addrs = append(addrs, fmt.Sprintf("203.0.113.%d:40000", 10+i))
	}
	exports := startExports(p, 10, addrs...)
	testwait.Until(t, "the exports' first bytes to be buffered", func() bool {
		return eo.exports.Load() >= 10 && p.fetcher.Buffers.InUse() >= 10*(1<<10)
	})
	if n := coldHerdCost(t, p, eo, 40, stats); n != 1 {
		t.Errorf("a cold herd of 40 during ten slow exports cost %d upstream requests, want 1", n)
	}
	once.Do(func() { close(release) })
	for range 10 {
		if r := testwait.Receive(t, exports, "an export"); r.StatusCode != 200 {
			t.Errorf("an export got %d, want 200", r.StatusCode)
		}
	}
}

// TestOneClientsExportsLeaveRoomForAHerd is issue 23's fifth finding with
// exports that do send their bytes: one client's ten exports, each most of
// the way through and then slow, held the whole budget as their bytes
// came. The fetches a client's requests lead hold at most its share (a
// quarter of the budget, or one object): its other exports go upstream on
// their own, and a cold herd on another URL still shares one fetch.
func TestOneClientsExportsLeaveRoomForAHerd(t *testing.T) {
	clk := newClock()
	release, stats := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	eo := newExportOrigin(t, clk, 128<<10, 120<<10, release, stats)
	p := newTestProxy(t, eo.origin, clk, Config{BufferBytes: 1 << 20, MaxObjectBytes: 128 << 10})

	exports := startExports(p, 10, "203.0.113.9:40000")
	testwait.Until(t, "the exports' bytes to be buffered or passed", func() bool {
		return eo.exports.Load() >= 10 && p.fetcher.Buffers.InUse() >= 120<<10
	})
	if n := coldHerdCost(t, p, eo, 40, stats); n != 1 {
		t.Errorf("a cold herd of 40 during one client's ten exports cost %d upstream requests, want 1", n)
	}
	once.Do(func() { close(release) })
	for range 10 {
		if r := testwait.Receive(t, exports, "an export"); r.StatusCode != 200 {
			t.Errorf("an export got %d, want 200", r.StatusCode)
		}
	}
}

// TestHerdSharesOneExchangeWithTheBudgetSpent is issue 23's fifth finding
// with the budget spent after all: one client, from ten addresses (a
// share each), holds every byte of it with exports that come most of the
// way and then slow down. A cold herd on another URL, whose fetch finds no
// room, still shares one upstream exchange: the body streams to every
// client of the flight through one small window, rather than each going
// upstream on its own.
func TestHerdSharesOneExchangeWithTheBudgetSpent(t *testing.T) {
	clk := newClock()
	release, stats := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	eo := newExportOrigin(t, clk, 128<<10, 120<<10, release, stats)
	p := newTestProxy(t, eo.origin, clk, Config{BufferBytes: 1 << 20, MaxObjectBytes: 128 << 10})

	var addrs []string
	for i := range 10 {
		addrs = append(addrs, fmt.Sprintf("203.0.113.%d:40000", 10+i))
	}
	exports := startExports(p, 10, addrs...)
	testwait.Until(t, "the exports to spend the budget", func() bool {
		return eo.exports.Load() >= 10 && p.fetcher.Buffers.InUse() > 1<<20-128<<10
	})
	if n := coldHerdCost(t, p, eo, 40, stats); n != 1 {
		t.Errorf("a cold herd of 40 with the budget spent cost %d upstream requests, want 1", n)
	}
	if n := p.fetcher.Buffers.Peak(); n > 1<<20 {
		t.Errorf("the buffers peaked at %d bytes, over the budget", n)
	}
	once.Do(func() { close(release) })
	for range 10 {
		r := testwait.Receive(t, exports, "an export")
		if body, _ := io.ReadAll(r.Body); r.StatusCode != 200 || len(body) != 128<<10 {
			t.Errorf("an export got %d with %d bytes, want 200 and 128 KiB", r.StatusCode, len(body))
		}
	}
	p.Wait()
	testwait.Until(t, "every byte of the budget to be given back", func() bool { return p.fetcher.Buffers.InUse() == 0 })
}

// TestStreamedBodyOutlivesTheUpstreamTimeout is the second attack pass's
// third finding, without an abuser: a body streamed to a herd (too large
// to store) was cut for every client at the upstream timeout, which bounds
// a buffered fetch whole. Like a passed-through answer, a streamed one is
// bounded until its header arrives, then by its readers' pace.
func TestStreamedBodyOutlivesTheUpstreamTimeout(t *testing.T) {
	clk := newClock()
	const chunks, chunk = 40, 4 << 10
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Length", strconv.Itoa(chunks*chunk))
		for range chunks {
			w.Write(bytes.Repeat([]byte("x"), chunk))
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond) // an export that takes its time: 400 ms in all
		}
	})
	p := newTestProxy(t, o, clk, Config{MaxObjectBytes: 16 << 10, UpstreamTimeout: 200 * time.Millisecond})
	srv := httptest.NewServer(p) // a cut body is a connection cut short
	defer srv.Close()
	type got struct {
		status int
		n      int
		err    error
	}
	results := make(chan got, 3)
	for range 3 {
		go func() {
			resp, err := srv.Client().Get(srv.URL + "/export")
			if err != nil {
				results <- got{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			results <- got{resp.StatusCode, len(b), err}
		}()
	}
	for i := range 3 {
		if r := testwait.Receive(t, results, "a client"); r.status != http.StatusOK || r.n != chunks*chunk || r.err != nil {
			t.Errorf("client %d got %d with %d of %d bytes (%v)", i, r.status, r.n, chunks*chunk, r.err)
		}
	}
}
