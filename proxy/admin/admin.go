// Package admin serves an operator's endpoints for a proxy, on a listener
// of its own: health, readiness, metrics, purges and profiles. It decides who may
// call them (a bearer token, never asked of probes) and how a purge is
// spelled, and reaches the proxy through a small interface.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"corral/proxy/internal/target"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin serves an operator's endpoints for a Proxy, on a listener of its
// own, never the public one:
//
//	GET  /healthz                the process is up
//	GET  /readyz                 it can serve: not draining, and the upstream reachable or something cached
//	GET  /metrics                Prometheus metrics
//	POST /purge?url=/api/stats   drop one URL (all its variants)
//	POST /purge?prefix=/api/     drop every URL that starts with the prefix
//	POST /purge?all=1            drop everything
//	GET  /debug/pprof/           Go's profiles: CPU (profile?seconds=N), heap, goroutines, mutexes, blocking, trace
//
// With a token, /metrics, /purge and /debug/pprof/ require "Authorization: Bearer <token>";
// the health endpoints never do, so that probes need no secret.
type Admin struct {
	p        Proxy
	log      *slog.Logger
	token    string
	mux      *http.ServeMux
	reg      *prometheus.Registry
	draining atomic.Bool
}

// Proxy is what the admin endpoints need of a proxy.
type Proxy interface {
	// Ready reports why the proxy cannot serve, or nil when it can.
	Ready(ctx context.Context) error
	// Purge drops what is stored for uri, or with prefix for every URI
	// that starts with it, and reports how many entries it dropped.
	Purge(uri string, prefix bool) (int, error)
}

// New returns the admin handler for p, guarded by token if it is not
// empty, whose /metrics reports metrics (the proxy's own), the Go
// runtime's and the process's. Purges are logged to log.
func New(p Proxy, token string, log *slog.Logger, metrics prometheus.Collector) *Admin {
	a := &Admin{p: p, log: log, token: token, mux: http.NewServeMux()}
	reg := prometheus.NewRegistry()
	a.reg = reg
	reg.MustRegister(metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	a.mux.HandleFunc("GET /readyz", a.ready)
	a.mux.Handle("GET /metrics", a.guarded(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	a.mux.Handle("POST /purge", a.guarded(http.HandlerFunc(a.purge)))
	// Not net/http/pprof's Cmdline: the command line may hold secrets
	// (the Redis URL's password, the token itself).
	a.mux.Handle("GET /debug/pprof/", a.guarded(http.HandlerFunc(pprof.Index)))
	a.mux.Handle("GET /debug/pprof/profile", a.guarded(http.HandlerFunc(pprof.Profile)))
	a.mux.Handle("GET /debug/pprof/symbol", a.guarded(http.HandlerFunc(pprof.Symbol)))
	a.mux.Handle("POST /debug/pprof/symbol", a.guarded(http.HandlerFunc(pprof.Symbol)))
	a.mux.Handle("GET /debug/pprof/trace", a.guarded(http.HandlerFunc(pprof.Trace)))
	return a
}

// Register adds c to what /metrics reports, beside the proxy's own
// metrics: the shared tier's, for one. It fails as prometheus.Register
// does, with an AlreadyRegisteredError for a collector registered already.
func (a *Admin) Register(c prometheus.Collector) error { return a.reg.Register(c) }

func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Drain makes /readyz fail from now on, so that load balancers stop
// sending clients while the server shuts down.
func (a *Admin) Drain() { a.draining.Store(true) }

func (a *Admin) ready(w http.ResponseWriter, r *http.Request) {
	err := errDraining
	if !a.draining.Load() {
		err = a.p.Ready(r.Context())
	}
	if err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

var errDraining = fmt.Errorf("shutting down")

// guarded requires the bearer token, when there is one, before h.
func (a *Admin) guarded(h http.Handler) http.Handler {
	if a.token == "" {
		return h
	}
	want := []byte("Bearer " + a.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="corral admin"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// purge takes exactly one of url, prefix or all; url and prefix may be
// given more than once, and each is purged. A url or prefix may be a path
// with query, or an absolute URL, whose path and query are used; it is
// normalised as request-targets are, so that it names the keys they are
// stored under.
func (a *Admin) purge(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for name := range q {
		if name != "url" && name != "prefix" && name != "all" {
			// Most likely the rest of an unescaped query: /a?x=1&y=2
			// would otherwise purge /a?x=1 and say nothing.
			http.Error(w, fmt.Sprintf("unknown parameter %q; escape the URL's own query (url=/a%%3Fx%%3D1%%26y%%3D2)", name), http.StatusBadRequest)
			return
		}
	}
	if len(q) != 1 {
		http.Error(w, "give exactly one of url=, prefix= or all=1", http.StatusBadRequest)
		return
	}
	var (
		targets []string
		prefix  = !q.Has("url")
	)
	if q.Has("all") {
		if vs := q["all"]; len(vs) != 1 || (vs[0] != "1" && vs[0] != "true") {
			http.Error(w, fmt.Sprintf("all=%q: want all=1", strings.Join(vs, ",")), http.StatusBadRequest)
			return
		}
		targets = []string{""}
	}
	for _, raw := range append(q["url"], q["prefix"]...) {
		target, err := target.Purge(raw, prefix)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		targets = append(targets, target)
	}
	n, failed := 0, []string(nil)
	for _, target := range targets {
		m, err := a.p.Purge(target, prefix)
		a.log.Info("purged", "target", target, "prefix", prefix, "entries", m)
		n += m
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if failed != nil {
		// Purged here, but not across the fleet: the caller must know,
		// and try again.
		w.WriteHeader(http.StatusBadGateway)
	}
	json.NewEncoder(w).Encode(struct { //nolint:errcheck // the client may have gone
		Purged int      `json:"purged"`
		Errors []string `json:"errors,omitempty"`
	}{n, failed})
}
