package proxy

import (
	"net/http"
	"time"

	"corral/proxy/upstream"
)

// newGuard returns the upstream guard (package upstream) in front of next
// with cfg's caps, which every upstream request goes through, shared
// fetches and passed-through requests alike. What it holds back fails
// with an *upstream.BusyError, which the proxy answers with a stale
// response or a 503. A zero rps or
// inflight puts no cap on that dimension; UpstreamMaxQueue bounds the
// waiters when either is set, and maxWait how long each may wait.
func newGuard(next http.RoundTripper, cfg Config, maxWait time.Duration, now func() time.Time, observe func(time.Duration)) *upstream.Guard {
	var base string
	if cfg.Upstream != nil {
		base = cfg.Upstream.EscapedPath()
	}
	return upstream.New(upstream.Config{
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
	})
}
