package proxy

import (
	"net/http"
	"time"

	"corral/proxy/upstream"
)

// guard is the proxy's side of its upstream guard (package upstream),
// which every upstream request goes through, shared fetches and
// passed-through requests alike. It tells the guard what the guard needs
// to know of a passed-through request. What the guard holds back fails
// with an *upstream.BusyError, which the proxy answers with a stale
// response or a 503.
type guard struct {
	*upstream.Guard
}

// newGuard returns a guard in front of next with cfg's caps. A zero rps or
// inflight puts no cap on that dimension; UpstreamMaxQueue bounds the
// waiters when either is set, and maxWait how long each may wait.
func newGuard(next http.RoundTripper, cfg Config, maxWait time.Duration, now func() time.Time, observe func(time.Duration)) *guard {
	var base string
	if cfg.Upstream != nil {
		base = cfg.Upstream.EscapedPath()
	}
	return &guard{upstream.New(upstream.Config{
		Transport:   next,
		MaxRPS:      cfg.UpstreamMaxRPS,
		MaxInflight: cfg.UpstreamMaxInflight,
		MaxQueue:    cfg.UpstreamMaxQueue,
		MaxWait:     maxWait,
		MaxPause:    cfg.UpstreamMaxPause,
		BasePath:    base,
		Now:         now,
		Observe:     observe,
		Logger:      cfg.Logger,
	})}
}

// RoundTrip sends a passed-through request, for httputil.ReverseProxy.
// Such a request is its client's alone: the guard learns that its answer
// streams to that client, so that its slot is freed once the header is in.
// It is never neutral: its answer pauses nothing.
func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	return g.Guard.RoundTrip(req.WithContext(upstream.WithStreaming(req.Context())))
}
