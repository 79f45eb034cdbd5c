package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"corral/proxy"
	"corral/proxy/cache"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// BenchmarkFleet measures what the shared tier is for: three replicas
// behind one address, alone and sharing one redis-server.
//
// Window: a herd polls /api/stats, max-age=1 and nothing else, round robin
// over the replicas; an op is one poll, and upstream-req/window is what
// the origin sees per max-age: about 3 alone, about 1 sharing (goal: at
// most 1.1). SharedHit: the latency of an answer from the shared tier
// (memory missed, Redis fresh), in process, for a 1 KiB and a 64 KiB body
// (goal: p99 under 2 ms on loopback).
func BenchmarkFleet(b *testing.B) {
	srv := redistest.Start(b, false)
	b.Run("Window", func(b *testing.B) {
		for _, shared := range []bool{false, true} {
			b.Run(map[bool]string{false: "alone", true: "shared"}[shared], func(b *testing.B) {
				benchmarkFleetWindow(b, srv, shared)
			})
		}
	})
	b.Run("SharedHit", func(b *testing.B) {
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
				benchmarkSharedHit(b, srv, size)
			})
		}
	})
}

var fleetPrefixes atomic.Int64

// newReplica returns a corral in front of upstream, sharing srv's Redis
// when srv is not nil, under prefix; store, when not nil, is its memory.
func newReplica(tb testing.TB, upstream *url.URL, srv *redistest.Server, prefix string, store cache.Store) *proxy.Proxy {
	cfg := proxy.Config{Upstream: upstream, Store: store}
	if srv != nil {
		f, err := fleet.New(fleet.Config{Addr: srv.URL, Prefix: prefix})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { f.Close() })
		cfg.Fleet = f
	}
	p, release := newCorralWith(tb, cfg)
	tb.Cleanup(release)
	return p
}

// roundRobin hands each request to the next of its handlers, as a load
// balancer in front of replicas does.
type roundRobin struct {
	hs []http.Handler
	n  atomic.Uint64
}

func (rr *roundRobin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rr.hs[rr.n.Add(1)%uint64(len(rr.hs))].ServeHTTP(w, r)
}

func benchmarkFleetWindow(b *testing.B, srv *redistest.Server, shared bool) {
	const (
		clients  = 150
		interval = 100 * time.Millisecond
		maxAge   = time.Second
	)
	origin := &Origin{Latency: 20 * time.Millisecond, CacheControl: "max-age=1"}
	ou, stopOrigin, err := serve(origin)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stopOrigin)
	if !shared {
		srv = nil
	}
	prefix := fmt.Sprintf("bench%d:", fleetPrefixes.Add(1))
	rr := &roundRobin{}
	for range 3 {
		rr.hs = append(rr.hs, newReplica(b, ou, srv, prefix, nil))
	}
	fu, stopFront, err := serve(rr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stopFront)
	// Round robin: three warm requests, one for each replica.
	pollWindows(b, origin, fu.String()+"/api/stats", 3, clients, interval, maxAge)
}

// forgetful is a memory that keeps nothing: every request to a replica on
// it misses memory and goes to the shared tier.
type forgetful struct{}

func (forgetful) Get(context.Context, string) (*cache.Entry, error) { return nil, cache.ErrNotFound }
func (forgetful) Set(context.Context, string, *cache.Entry, time.Duration, cache.Cond) error {
	return nil
}
func (forgetful) Delete(context.Context, string) error { return nil }
func (forgetful) Purge(context.Context, string, bool, time.Time) (int, error) {
	return 0, nil
}

func benchmarkSharedHit(b *testing.B, srv *redistest.Server, size int) {
	body := strings.Repeat("x", size)
	origin := &Origin{CacheControl: "max-age=3600", Body: []byte(body)}
	ou, stopOrigin, err := serve(origin)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stopOrigin)
	prefix := fmt.Sprintf("bench%d:", fleetPrefixes.Add(1))
	writer := newReplica(b, ou, srv, prefix, nil)
	reader := newReplica(b, ou, srv, prefix, forgetful{})
	req := httptest.NewRequest(http.MethodGet, "/hit", nil)
	writer.ServeHTTP(httptest.NewRecorder(), req)
	base := origin.Requests()
	ds := make([]time.Duration, 0, b.N)
	// As net/http's server does, the writer sends the body on rather than
	// keep it (a recorder's growing buffer would be most of what is
	// measured).
	w := &counted{discard: discard{h: http.Header{}}}
	b.ResetTimer()
	for range b.N {
		w.reset()
		w.n = 0
		began := time.Now()
		reader.ServeHTTP(w, req)
		ds = append(ds, time.Since(began))
		if w.status != http.StatusOK || w.n != size {
			b.Fatalf("%d, %d bytes", w.status, w.n)
		}
	}
	b.StopTimer()
	if n := origin.Requests() - base; n != 0 {
		b.Fatalf("%d upstream requests: the reader did not answer from the shared tier", n)
	}
	slices.Sort(ds)
	b.ReportMetric(float64(Percentile(ds, 0.50)), "p50-ns")
	b.ReportMetric(float64(Percentile(ds, 0.99)), "p99-ns")
}

// counted is discard that counts the body's bytes.
type counted struct {
	discard
	n int
}

func (c *counted) Write(b []byte) (int, error) {
	c.n += len(b)
	return c.discard.Write(b)
}
