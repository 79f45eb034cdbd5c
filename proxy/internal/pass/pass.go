// Package pass sends a request upstream for its client alone, through
// httputil.ReverseProxy: it decides which of the client's fields go
// upstream (forward), stores an answer on the way when a shared fetch
// could have stored it, drops what a successful unsafe request
// invalidates, and answers a failed exchange.
package pass

import (
	"context"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/respond"
	"corral/proxy/internal/stored"
	"corral/proxy/internal/target"
	"corral/proxy/upstream"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"time"
)

// Passer passes requests upstream. Make one with New.
type Passer struct {
	rp          *httputil.ReverseProxy
	store       *stored.Store
	origin      target.Upstream
	copies      *body.Budget
	unstored    *body.Unstored
	maxObject   int64
	trusted     []netip.Prefix
	now         func() time.Time
	log         *slog.Logger
	count       func(status int, err error)
	invalidated func(target string, at time.Time)
}

// Config configures a Passer. Every field is required.
type Config struct {
	Store     *stored.Store
	Origin    target.Upstream
	Guard     *upstream.Guard // every passed request goes through it
	Copies    *body.Budget    // what the copies of answers stored on the way may take
	Unstored  *body.Unstored  // refs for the bodies stored on the way
	MaxObject int64           // the largest body stored on the way
	Trusted   []netip.Prefix  // proxies in front whose forwarding fields are kept (forward)
	Now       func() time.Time
	Log       *slog.Logger
	Count     func(status int, err error) // counts each upstream exchange by its result

	// Invalidate drops what is stored for target, which a successful
	// unsafe request invalidated at at: here at once, and across a fleet
	// in the background, for the client's answer does not wait on it.
	Invalidate func(target string, at time.Time)
}

// New returns a Passer for cfg.
func New(cfg Config) *Passer {
	ps := &Passer{
		store: cfg.Store, origin: cfg.Origin, copies: cfg.Copies, unstored: cfg.Unstored,
		maxObject: cfg.MaxObject, trusted: cfg.Trusted, now: cfg.Now, log: cfg.Log,
		count: cfg.Count, invalidated: cfg.Invalidate,
	}
	ps.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			info, _ := pr.In.Context().Value(passKey{}).(passed)
			pr.Out.URL = ps.origin.URL(info.uri)
			pr.Out.Host = ""
			ps.forward(pr.Out.Header, pr.In, httprule.MayStore(pr.In))
		},
		Transport:      streaming{cfg.Guard},
		ModifyResponse: ps.modifyPassed,
		ErrorHandler:   ps.passError,
	}
	return ps
}

// streaming sends passed-through requests through the guard. Such a
// request is its client's alone: the guard learns that its answer streams
// to that client, so that its slot is freed once the header is in. It is
// never neutral: its answer pauses nothing.
type streaming struct{ g *upstream.Guard }

func (s streaming) RoundTrip(req *http.Request) (*http.Response, error) {
	return s.g.RoundTrip(req.WithContext(upstream.WithStreaming(req.Context())))
}

type passKey struct{}

// passed is what a passed-through request carries to ModifyResponse.
type passed struct {
	st        cachestatus.Status
	host      string      // the Host the client asked
	uri       string      // the client's request URI
	reqHeader http.Header // the client's request header
	reqTime   time.Time
	mayStore  bool // the request went upstream as one whose answer may be stored
}

// Pass sends r, a request for target, upstream on its own and streams
// the answer back, never to another client. A complete GET answer that
// turns out storable is stored on the way, so that a URL marked
// uncacheable becomes cacheable again as soon as the origin says so. st
// says why r was passed, for Cache-Status. It reports busy when the
// upstream guard held r back, and answered 503.
func (ps *Passer) Pass(w http.ResponseWriter, r *http.Request, target string, st cachestatus.Status) (busy bool) {
	info := passed{st: st, host: r.Host, uri: target, reqHeader: r.Header, reqTime: ps.now(), mayStore: httprule.MayStore(r)}
	pw := &passWriter{ResponseWriter: w}
	ps.rp.ServeHTTP(pw, r.WithContext(context.WithValue(r.Context(), passKey{}, info)))
	return pw.busy
}

func (ps *Passer) modifyPassed(resp *http.Response) error {
	info, _ := resp.Request.Context().Value(passKey{}).(passed)
	ps.count(resp.StatusCode, nil)
	if !httprule.SafeMethod(resp.Request.Method) && resp.StatusCode >= 200 && resp.StatusCode < 400 {
		ps.invalidate(info, resp.Header)
	}
	st := info.st
	var e *stored.Entry
	switch {
	case resp.Request.Method == http.MethodGet && info.mayStore && !httprule.ConditionalOrRange(resp.Request.Header):
		// Stored only when it went upstream as a shared fetch would have
		// sent it, but for fields that the answer varies on: under the
		// forwarding policy for stored answers (forward), and without
		// the client's preconditions or range, whose answer (a 412, a
		// 206) is that client's alone.
		e = ps.storeOnTheWay(resp, info, info.reqTime)
	case resp.Request.Method == http.MethodPost && httprule.PostStorable(resp.Request.Header) && ps.namesItself(info, resp.Header.Get("Content-Location")):
		// RFC 9110 section 9.3.3: a POST answer with explicit freshness
		// and a Content-Location that is its own target may answer
		// later GETs for it. It is stored after the invalidation above,
		// which a moment later marks.
		e = ps.storeOnTheWay(resp, info, ps.now().Add(time.Nanosecond))
	}
	if e != nil {
		st.Field, st.Rule = e.DecidedBy()
	}
	delete(resp.Header, httprule.CorralOnly)
	st.FwdStatus = resp.StatusCode
	resp.Header.Add("Via", httprule.Via)
	resp.Header.Set("Cache-Status", st.String())
	return nil
}

// storeOnTheWay wraps resp's body so that, when the client has read all
// of it, the response is stored if the cache may store it. The copy holds
// at most MaxObjectBytes, and only what the buffer budget lets it: past
// either it lets go and the body only streams. It returns the entry as
// judged from the header.
func (ps *Passer) storeOnTheWay(resp *http.Response, info passed, since time.Time) *stored.Entry {
	// The answer is judged, and its variant keyed, by the request as it
	// went upstream. It is stored only if a shared fetch for the same
	// client request would have sent the fields the answer varies on
	// alike: otherwise it is an answer to a request no lookup makes.
	sent := resp.Request.Header
	header, respTime := resp.Header.Clone(), ps.now()
	e, _ := ps.store.NewEntry(resp.Request.Method, info.uri, sent, resp.StatusCode, header, nil, info.reqTime, respTime)
	if !e.Decision.Storable || resp.ContentLength > ps.maxObject {
		return e
	}
	if len(e.Vary) > 0 && e.VaryKey != httprule.VaryKey(e.Vary, info.reqHeader) {
		return e
	}

	t := body.NewTee(resp.Body, ps.copies, ps.maxObject, resp.ContentLength, func(b []byte) {
		// The client's context may end as soon as it has read the body.
		// Memory only: a passed-through answer was fetched for one
		// client, under no lease, and stays on this replica.
		ps.store.Put(context.WithoutCancel(resp.Request.Context()), info.uri, e.WithBody(b, ps.unstored.NewRef(b)), since, nil, nil)
	})
	if t == nil {
		return e // no room for the copy now: the body only streams
	}
	resp.Body = t
	return e
}

// namesItself reports whether a Content-Location names the target of the
// request info describes, as corral's clients or the origin spell it.
func (ps *Passer) namesItself(info passed, contentLocation string) bool {
	target, ok := ps.origin.Resolve(info.host, info.uri, contentLocation)
	return ok && target == info.uri
}

// invalidate drops what is stored for the target of a successful unsafe
// request, and for its Location and Content-Location when they are on the
// same origin (RFC 9111 section 4.4).
//
// Config.Invalidate drops them, and must not make the client's answer
// wait on the fleet.
func (ps *Passer) invalidate(info passed, h http.Header) {
	at := ps.now()
	targets := []string{info.uri}
	for _, f := range []string{"Location", "Content-Location"} {
		if target, ok := ps.origin.Resolve(info.host, info.uri, h.Get(f)); ok {
			targets = append(targets, target)
		}
	}
	for _, target := range targets {
		ps.invalidated(target, at)
	}
}

func (ps *Passer) passError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	info, _ := r.Context().Value(passKey{}).(passed)
	st := info.st
	status, d, busy := respond.Failure(err)
	if busy != nil {
		st.Detail = d
		respond.Busy503(w, busy.RetryAfter, st)
		if pw, ok := w.(*passWriter); ok {
			pw.busy = true // never sent: not a passed request
		}
		return
	}
	ps.count(0, err)
	if status != http.StatusBadGateway {
		// A 502 keeps the detail of why the request was passed.
		st.Detail = d
	}
	ps.log.Warn("upstream request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Cache-Status", st.String())
	w.Header().Add("Via", httprule.Via)
	http.Error(w, http.StatusText(status), status)
}

// passWriter is the ResponseWriter a passed-through request writes to. It
// filters interim responses, whose fields ReverseProxy copies as the origin
// sent them, and says whether passError answered 503 because the
// upstream guard held the request back.
type passWriter struct {
	http.ResponseWriter
	busy bool
}

func (w *passWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		httprule.FilterInterim(w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *passWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
