package bench

// Load comparisons: each scenario runs against the origin itself
// (direct), the naive proxy (naive) and corral, and reports what matters
// for it with b.ReportMetric. Compare runs with benchstat (see Makefile).
//
// Every load is bounded: an op is one request, one poll or one stampede,
// and the loops that pace clients stop at a deadline as well.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"corral/proxy"
	"corral/proxy/cache"
)

// runLimit bounds any one run of a paced load, whatever b.N asks for.
const runLimit = 30 * time.Second

// BenchmarkDashboard: a herd of dashboards polls one key that the origin
// lets caches keep for a second and serve stale for ten more while they
// refresh, through an origin that allows 5 requests a second. An op is one
// poll. upstream-req/window is what the origin sees per max-age (1 s) once
// the first answer is in.
func BenchmarkDashboard(b *testing.B) {
	const (
		clients  = 200
		interval = 100 * time.Millisecond // each client's polling period
		maxAge   = time.Second
	)
	for _, f := range fronts {
		b.Run(f.name, func(b *testing.B) {
			origin := DemoOrigin(DemoCacheControl)
			fu, _ := start(b, origin, f)
			// The first answer: corral and naive store it.
			pollWindows(b, origin, fu+"/api/stats", 1, clients, interval, maxAge)
		})
	}
}

// pollWindows has a herd of clients poll u every interval for b.N polls,
// after warm requests that fill the caches, and reports the upstream
// requests origin saw per maxAge window, and the clients' latencies.
func pollWindows(b *testing.B, origin *Origin, u string, warm, clients int, interval, maxAge time.Duration) {
	client := NewClient(clients)
	ctx, cancel := context.WithTimeout(context.Background(), runLimit)
	defer cancel()
	for range warm {
		get(ctx, client, u)
	}
	base := origin.Requests()
	var lat latencies
	b.ResetTimer()
	began := time.Now()
	pollHerd(ctx, client, u, clients, interval, b.N, &lat)
	elapsed := time.Since(began)
	b.StopTimer()
	windows := elapsed.Seconds() / maxAge.Seconds()
	b.ReportMetric(float64(origin.Requests()-base)/windows, "upstream-req/window")
	lat.report(b)
}

// pollHerd runs clients that each poll u, wait out the rest of interval,
// and poll again, until polls polls have been made or ctx ends. Clients
// start spread over the first interval.
func pollHerd(ctx context.Context, client *http.Client, u string, clients int, interval time.Duration, polls int, lat *latencies) {
	var budget atomic.Int64
	budget.Store(int64(polls))
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			var ds []time.Duration
			errs := 0
			defer func() { lat.add(ds, errs) }()
			t := time.NewTimer(interval * time.Duration(i) / time.Duration(clients))
			defer t.Stop()
			for budget.Add(-1) >= 0 {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				began := time.Now()
				if !get(ctx, client, u) {
					errs++
				}
				d := time.Since(began)
				ds = append(ds, d)
				t.Reset(max(interval-d, 0))
			}
		})
	}
	wg.Wait()
}

// BenchmarkStampede: stampede clients ask at once for a key nobody has
// asked for yet, behind an origin that takes 20 ms. An op is one stampede
// on a fresh key. corral must make exactly one upstream request per op;
// p99/origin-rtt is the slowest client's wait in origin round trips.
func BenchmarkStampede(b *testing.B) {
	const stampede = 200
	for _, f := range fronts {
		b.Run(f.name, func(b *testing.B) {
			origin := &Origin{Latency: 20 * time.Millisecond, CacheControl: "max-age=60", PathBody: pathBody}
			u, ou := start(b, origin, f)
			client := NewClient(stampede)
			ctx, cancel := context.WithTimeout(context.Background(), runLimit)
			defer cancel()

			rtt := roundTrip(ctx, client, ou+"/rtt")
			var lat latencies
			run := func(key string) {
				release := make(chan struct{})
				var wg sync.WaitGroup
				for range stampede {
					wg.Go(func() {
						<-release
						began := time.Now()
						ok := get(ctx, client, u+key)
						d := time.Since(began)
						errs := 0
						if !ok {
							errs = 1
						}
						lat.add([]time.Duration{d}, errs)
					})
				}
				close(release)
				wg.Wait()
			}
			run("/warm") // open the connections outside the timing
			lat = latencies{}
			base := origin.Requests()
			b.ResetTimer()
			for i := range b.N {
				run(fmt.Sprintf("/stampede/%d", i))
			}
			b.StopTimer()
			b.ReportMetric(float64(origin.Requests()-base)/float64(b.N), "upstream-req/op")
			lat.report(b)
			b.ReportMetric(float64(Percentile(lat.all, 0.99))/float64(rtt), "p99/origin-rtt")
		})
	}
}

// roundTrip is the median time of a few requests straight to u.
func roundTrip(ctx context.Context, client *http.Client, u string) time.Duration {
	ds := make([]time.Duration, 5)
	for i := range ds {
		began := time.Now()
		get(ctx, client, u)
		ds[i] = time.Since(began)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// hotFronts are the fronts of the hot-hit scenario: the three, and the
// ceiling a handler writing corral's answer from memory reaches.
func hotFronts(body []byte, cacheControl string) []front {
	return append(slices.Clip(fronts), front{name: "ceiling", handler: func(testing.TB, *url.URL) (http.Handler, func()) {
		return newCeiling(body, cacheControl), func() {}
	}})
}

// BenchmarkHotHit: parallel clients hammer one fresh key over loopback
// HTTP. An op is one request; client and server share the 2 cores.
func BenchmarkHotHit(b *testing.B) {
	body := pathBody("/hot")
	const cacheControl = "max-age=3600"
	for _, f := range hotFronts(body, cacheControl) {
		b.Run(f.name, func(b *testing.B) {
			origin := &Origin{CacheControl: cacheControl, Body: body}
			fu, _ := start(b, origin, f)
			u := fu + "/hot"
			client := NewClient(64)
			ctx, cancel := context.WithTimeout(context.Background(), runLimit)
			defer cancel()
			get(ctx, client, u)
			base := origin.Requests()
			var lat latencies
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var ds []time.Duration
				errs := 0
				for pb.Next() {
					began := time.Now()
					if !get(ctx, client, u) {
						errs++
					}
					ds = append(ds, time.Since(began))
				}
				lat.add(ds, errs)
			})
			b.StopTimer()
			b.ReportMetric(float64(origin.Requests()-base)/float64(b.N), "upstream-req/op")
			lat.report(b)
		})
	}
}

// inProcess returns f's handler in front of origin, reached through a
// transport that calls origin directly: no sockets anywhere.
func inProcess(tb testing.TB, f front, origin http.Handler) http.Handler {
	upstream := &url.URL{Scheme: "http", Host: "127.0.0.1"} // never dialled
	switch f.name {
	case "direct":
		return origin
	case "naive":
		return &Naive{Upstream: upstream, Client: &http.Client{Transport: handlerTransport{origin}}}
	case "corral":
		p, release := newCorralWith(tb, proxy.Config{Upstream: upstream, Transport: handlerTransport{origin}})
		tb.Cleanup(release)
		return p
	}
	h, release := f.handler(tb, upstream)
	tb.Cleanup(release)
	return h
}

// BenchmarkHotHitInProcess is BenchmarkHotHit with the handler called
// directly, as net/http's server would, without sockets: the proxy's own
// cost per hit, allocations included.
func BenchmarkHotHitInProcess(b *testing.B) {
	body := pathBody("/hot")
	const cacheControl = "max-age=3600"
	for _, f := range hotFronts(body, cacheControl) {
		b.Run(f.name, func(b *testing.B) {
			origin := &Origin{CacheControl: cacheControl, Body: body}
			h := inProcess(b, f, origin)
			h.ServeHTTP(&discard{h: http.Header{}}, httptest.NewRequest(http.MethodGet, "/hot", nil))
			base := origin.Requests()
			var errs atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := httptest.NewRequest(http.MethodGet, "/hot", nil)
				w := &discard{h: http.Header{}}
				for pb.Next() {
					w.reset()
					h.ServeHTTP(w, r)
					if w.status != http.StatusOK {
						errs.Add(1)
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(origin.Requests()-base)/float64(b.N), "upstream-req/op")
			b.ReportMetric(float64(errs.Load())/float64(b.N), "client-errors/op")
		})
	}
}

// Zipf workloads pick among zipfKeyCount keys with exponent zipfS: a few
// keys take most requests and a long tail is asked for rarely.
const (
	zipfKeyCount = 10_000
	zipfS        = 1.1
)

func newZipf(seed uint64) *rand.Zipf {
	return rand.NewZipf(rand.New(rand.NewPCG(seed, 0x636f7272616c)), zipfS, 1, zipfKeyCount-1)
}

// BenchmarkManyKeys: parallel clients over loopback ask for Zipf-chosen
// keys out of 10,000 that the origin (1 ms) lets caches keep for 5 s,
// from a cold cache. An op is one request.
func BenchmarkManyKeys(b *testing.B) {
	keys := zipfKeys(zipfKeyCount)
	for _, f := range fronts {
		b.Run(f.name, func(b *testing.B) {
			origin := &Origin{Latency: time.Millisecond, CacheControl: "max-age=5", PathBody: pathBody}
			u, _ := start(b, origin, f)
			urls := make([]string, len(keys))
			for i, k := range keys {
				urls[i] = u + k
			}
			client := NewClient(64)
			ctx, cancel := context.WithTimeout(context.Background(), runLimit)
			defer cancel()
			var seed atomic.Uint64
			var lat latencies
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				z := newZipf(seed.Add(1))
				var ds []time.Duration
				errs := 0
				for pb.Next() {
					began := time.Now()
					if !get(ctx, client, urls[z.Uint64()]) {
						errs++
					}
					ds = append(ds, time.Since(began))
				}
				lat.add(ds, errs)
			})
			b.StopTimer()
			upstream := float64(origin.Requests()) / float64(b.N)
			b.ReportMetric(upstream, "upstream-req/op")
			b.ReportMetric(1-upstream, "hit-ratio")
			lat.report(b)
		})
	}
}

// BenchmarkStoreOverhead (issue 4): what corral's store spends per entry
// beyond the body, after 10,000 entries of 512-byte bodies went through
// the proxy and were each hit once, as an entry in use is.
// accounted-B/entry is what the store's budget counts
// (Memory.Bytes); heap-B/entry is what the Go heap grew by. An op fills
// one fresh proxy.
func BenchmarkStoreOverhead(b *testing.B) {
	const entries = 10_000
	keys := zipfKeys(entries)
	origin := &Origin{CacheControl: "max-age=3600", PathBody: pathBody}
	upstream := &url.URL{Scheme: "http", Host: "127.0.0.1"} // never dialled
	var accounted, heap float64
	for range b.N {
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()

		mem := proxy.NewMemory(1 << 30)
		p, release := newCorralWith(b, proxy.Config{Upstream: upstream, Store: mem, Transport: handlerTransport{origin}})
		w := &discard{h: http.Header{}}
		for range 2 { // a miss, then a hit
			for _, k := range keys {
				w.reset()
				p.ServeHTTP(w, httptest.NewRequest(http.MethodGet, k, nil))
			}
		}

		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := mem.Len(); n != entries {
			b.Fatalf("store holds %d entries, want %d", n, entries)
		}
		accounted += float64(mem.Bytes()-entries*bodySize) / entries
		heap += (float64(after.HeapAlloc) - float64(before.HeapAlloc) - entries*bodySize) / entries
		runtime.KeepAlive(p)
		release()
		b.StartTimer()
	}
	b.ReportMetric(accounted/float64(b.N), "accounted-B/entry")
	b.ReportMetric(heap/float64(b.N), "heap-B/entry")
}

// BenchmarkZipfBudget (issue 4): hit ratio under the Zipf workload when
// the cache holds about 10% of the keys, corral's store against a plain
// LRU holding as many entries, both behind the same proxy. An op is one
// request, after a warm-up of zipfWarmup requests.
func BenchmarkZipfBudget(b *testing.B) {
	const (
		capacity   = zipfKeyCount / 10
		zipfWarmup = 30_000
	)
	keys := zipfKeys(zipfKeyCount)
	weight := entryWeight(b, keys[0])
	stores := []struct {
		name string
		new  func() (cache.Store, func() int)
	}{
		{"corral", func() (cache.Store, func() int) {
			m := proxy.NewMemory(weight * capacity)
			return m, m.Len
		}},
		{"lru", func() (cache.Store, func() int) {
			s := newLRUStore(capacity)
			return s, func() int { s.mu.Lock(); defer s.mu.Unlock(); return s.ll.Len() }
		}},
	}
	for _, s := range stores {
		b.Run(s.name, func(b *testing.B) {
			origin := &Origin{CacheControl: "max-age=3600", PathBody: pathBody}
			store, size := s.new()
			p, release := newCorralWith(b, proxy.Config{
				Upstream:  &url.URL{Scheme: "http", Host: "127.0.0.1"}, // never dialled
				Store:     store,
				Transport: handlerTransport{origin},
			})
			defer release()
			reqs := make([]*http.Request, len(keys))
			for i, k := range keys {
				reqs[i] = httptest.NewRequest(http.MethodGet, k, nil)
			}
			z := newZipf(1)
			w := &discard{h: http.Header{}}
			for range zipfWarmup {
				w.reset()
				p.ServeHTTP(w, reqs[z.Uint64()])
			}
			base := origin.Requests()
			b.ResetTimer()
			for range b.N {
				w.reset()
				p.ServeHTTP(w, reqs[z.Uint64()])
			}
			b.StopTimer()
			b.ReportMetric(1-float64(origin.Requests()-base)/float64(b.N), "hit-ratio")
			b.ReportMetric(float64(size()), "entries")
		})
	}
}

// entryWeight is what one entry of the Zipf workloads weighs in corral's
// store: all of them weigh the same, their keys and bodies being of one
// length.
func entryWeight(tb testing.TB, key string) int64 {
	mem := proxy.NewMemory(1 << 20)
	origin := &Origin{CacheControl: "max-age=3600", PathBody: pathBody}
	p, release := newCorralWith(tb, proxy.Config{
		Upstream:  &url.URL{Scheme: "http", Host: "127.0.0.1"}, // never dialled
		Store:     mem,
		Transport: handlerTransport{origin},
	})
	defer release()
	p.ServeHTTP(&discard{h: http.Header{}}, httptest.NewRequest(http.MethodGet, key, nil))
	if mem.Len() != 1 {
		tb.Fatalf("store holds %d entries, want 1", mem.Len())
	}
	return mem.Bytes()
}
