// Package bench holds the loads corral is measured by: an origin that
// counts, delays and rate-limits, and a herd of polling clients. The
// benchmarks run them with go test -bench; corral -demo prints one run.
package bench

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Origin is an HTTP origin that answers every path with Body after
// Latency, and with 503 and Retry-After once more than RateLimit requests
// a second arrive. The zero Origin answers at once, without limit.
type Origin struct {
	Latency      time.Duration
	RateLimit    float64 // requests per second; zero means no limit
	CacheControl string  // sent with every 200
	Body         []byte

	// PathBody, when set, gives each path its own body in place of Body,
	// so that a front mixing up keys shows in what clients receive.
	PathBody func(path string) []byte

	limiter  atomic.Pointer[rate.Limiter]
	requests atomic.Int64
	rejected atomic.Int64
}

// Requests is how many requests the origin has received.
func (o *Origin) Requests() int64 { return o.requests.Load() }

// Rejected is how many of them it answered with 503.
func (o *Origin) Rejected() int64 { return o.rejected.Load() }

func (o *Origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.requests.Add(1)
	if o.RateLimit > 0 && !o.allow() {
		o.rejected.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "rate limited", http.StatusServiceUnavailable)
		return
	}
	if o.Latency > 0 {
		t := time.NewTimer(o.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	body := o.Body
	if o.PathBody != nil {
		body = o.PathBody(r.URL.Path)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if o.CacheControl != "" {
		h.Set("Cache-Control", o.CacheControl)
	}
	w.Write(body) //nolint:errcheck
}

func (o *Origin) allow() bool {
	l := o.limiter.Load()
	if l == nil {
		o.limiter.CompareAndSwap(nil, rate.NewLimiter(rate.Limit(o.RateLimit), max(int(o.RateLimit), 1)))
		l = o.limiter.Load()
	}
	return l.Allow()
}
