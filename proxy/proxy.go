// Package proxy is corral's HTTP frontend: a handler in front of one
// upstream that stores what RFC 9111 lets a shared cache store, asks the
// origin at most once per key at a time, and serves stale responses while
// it revalidates them, so that a herd of pollers costs the origin about one
// request per key per freshness lifetime.
package proxy

import (
	"log/slog"
	"net/http"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/fetch"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/pass"
	"corral/proxy/internal/respond"
	"corral/proxy/internal/stored"
	"corral/proxy/internal/target"
	"corral/proxy/metrics"
	"corral/proxy/upstream"
)

// Proxy is a caching reverse proxy for one upstream.
type Proxy struct {
	store    *stored.Store
	fetcher  *fetch.Fetcher  // the shared fetches
	passer   *pass.Passer    // the requests that go upstream on their own
	herds    herds           // how the clients of one key share fetches
	guard    *upstream.Guard // every upstream request goes through it
	requests requestBodies   // how request bodies are read
	unstored *body.Unstored  // the share of the buffer budget bodies being written that the store does not hold may take

	requestNoCache RequestNoCache
	now            func() time.Time
	fakeClock      bool // now is not time.Now
	log            *slog.Logger
	logRequests    bool // a line per request, at debug level
	stats          Stats
	metrics        *metrics.Metrics
	stops          []func() // what Shutdown stops, last first
}

// ServeHTTP answers r from the cache when it can, and otherwise from the
// origin, and counts what became of it: each request once, in exactly one
// outcome, which the handlers below return rather than count.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.stats.Requests.Add(1)
	start := time.Now()
	if p.logRequests {
		lw := &respond.Logged{ResponseWriter: w, Status: http.StatusOK}
		w = lw
		defer func() {
			p.log.Debug("request", "method", r.Method, "uri", r.URL.RequestURI(), "status", lw.Status,
				"bytes", lw.Bytes, "cache_status", lw.Header().Get("Cache-Status"), "duration", time.Since(start))
		}()
	}
	defer func() { p.metrics.Client.Observe(time.Since(start).Seconds()) }()
	o := p.handle(w, r, start)
	o.count(&p.stats)
	if o == outCut {
		// net/http closes the connection, or resets the stream, so
		// that the client sees the body end early (a chunked one would
		// otherwise look whole).
		panic(http.ErrAbortHandler)
	}
}

// handle answers r: it refuses a request it will not forward, passes one
// the cache stays out of, and answers the others from the store or a
// fetch (answer). It is the one place that answers a request again.
func (p *Proxy) handle(w http.ResponseWriter, r *http.Request, start time.Time) requestOutcome {
	key, err := target.Of(r)
	if err != nil {
		respond.Status(w, http.StatusBadRequest, cachestatus.Status{Detail: cachestatus.BadRequestTarget})
		return outRejected
	}
	if up := r.Header["Upgrade"]; up != nil && !httprule.WebSocketUpgrade(up) {
		// Only WebSocket is tunnelled. Any other upgrade, h2c above
		// all, would open a tunnel to the origin past every rule here
		// (h2c smuggling): the field is hop-by-hop, and a proxy may
		// ignore it (RFC 9110 section 7.8), so the request goes on as
		// an ordinary one.
		delete(r.Header, "Upgrade")
	}
	if hasBody(r) {
		release, o := p.requests.buffer(w, r, p.passer.ClientAddr(r))
		if release == nil {
			return o // refused, and answered
		}
		defer release() // or once the body has gone upstream whole
	}
	if fwd, d := httprule.Bypass(r); fwd != "" {
		return p.passThrough(w, r, key, fwd, d)
	}
	req := p.requestDirectives(r)
	now := start // one clock read for the hit path
	if p.fakeClock {
		now = p.now()
	}
	o := p.answer(w, r, req, key, now)
	if o == outOtherVariant {
		// The shared answer turned out to vary, and to be for another
		// variant than r's: look again, now that the store knows what
		// the response varies on, and join the variant's own flight.
		// Should that answer too be for another variant, r goes
		// upstream on its own.
		if o = p.answer(w, r, req, key, p.now()); o == outOtherVariant {
			o = p.passThrough(w, r, key, cachestatus.FwdVaryMiss, "")
		}
	}
	return o
}

// answer looks r up, decides what the store's answer is good for, and
// dispatches: to serving it, serving it stale while refreshing it, passing
// r upstream on its own, or fetching. It returns outOtherVariant, with
// nothing written to w, when the fetch answered another variant than r's.
func (p *Proxy) answer(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, key string, now time.Time) requestOutcome {
	e, vkey, vary := p.store.Lookup(r.Context(), key, r.Header)
	v := p.decide(r, req, key, e, vkey, now)
	switch v.do {
	case doServe:
		if v.refresh || v.hit == outHit && p.fetcher.Ahead && e.RefreshAhead(now) {
			// A fresh hit in the entry's last moments refreshes it
			// ahead, so that the requests after it do not wait for
			// its refetch.
			p.refresh(r, key, vkey, e) // first, as below
		}
		return p.serveStored(w, r, e, v.detail, now, v.hit)
	case doServeStale:
		// The refresh starts first: nothing here may keep e, and its
		// body, alive while a slow client is written it (see body.Ref).
		p.refresh(r, key, vkey, e)
		return p.serveStored(w, r, e, cachestatus.StaleWhileRevalidate, now, outStale)
	case doPass:
		return p.passThrough(w, r, key, v.fwd, v.detail)
	case doRefuse:
		respond.Status(w, http.StatusGatewayTimeout, cachestatus.Status{Detail: v.detail})
		return outError
	}
	return p.fetchAndServe(w, r, req, p.fetcher.NewFlight(r, req, key, vkey, vary, e, p.passer.ClientAddr(r)), v.fwd)
}

// verdict is what decide made of a request and what the store holds for
// it.
type verdict struct {
	do     action
	fwd    cachestatus.Fwd    // why the request goes upstream (doPass, doFetch)
	detail cachestatus.Detail // for Cache-Status
	hit    requestOutcome     // which kind of hit serving the stored response is (doServe)
	// refresh says to refresh the stored response in the background
	// too (doServe), as doServeStale does.
	refresh bool
}

// action is what the flow does with a request.
type action uint8

const (
	doFetch      action = iota // ask the origin, coalesced with the requests for the same variant
	doServe                    // serve the stored response
	doServeStale               // serve the stored response stale, and refresh it in the background
	doPass                     // send the request upstream on its own
	doRefuse                   // answer 504: only-if-cached, and nothing usable is stored
)

// decide says what to do with r, given e, what lookup found for it under
// vkey (nil for nothing), at now. It writes nothing and counts nothing.
func (p *Proxy) decide(r *http.Request, req freshness.RequestDirectives, key string, e *stored.Entry, vkey string, now time.Time) verdict {
	if e != nil && e.Kind == cache.PassMark {
		return verdict{do: doPass, fwd: cachestatus.FwdMiss, detail: cachestatus.Uncacheable}
	}
	fwd := cachestatus.FwdURIMiss
	if e != nil {
		switch use := e.Decision.UseFor(now, req, p.fetcher.Revalidate); {
		case use.State == freshness.Fresh:
			v := verdict{do: doServe, hit: outHit}
			if use.Recent {
				v.detail = cachestatus.RevalidatedRecently // the client asked for a fresher one
			}
			return v
		case use.State == freshness.StaleWhileRevalidate && !(e.Refused.Load() && carriesFields(r, e)):
			// (Unless its refresh was refused, and r may fare better
			// with fields of its own: then it fetches, below.)
			return verdict{do: doServeStale}
		case use.Refused && e.FailedRecently(now, fetch.RefreshBackoff):
			// The client asked for a fresher answer, but the last
			// attempt to validate this one failed moments ago: perhaps
			// for one client's fields, so a refresh, which carries
			// none, asks again (unless it failed too).
			return verdict{do: doServe, hit: outHit, detail: cachestatus.RevalidationFailed, refresh: true}
		case use.Refused:
			fwd = cachestatus.FwdRequest // the client asked for a fresher answer
		case e.FailedRecently(now, fetch.RefreshBackoff) && e.Decision.UsableOnErrorFor(now, req):
			// Its validation failed moments ago, and it may stand in
			// for a failing origin: serve it, rather than ask the
			// origin again for every request until it recovers, and
			// refresh it, as above.
			return verdict{do: doServe, hit: outStaleOnError, detail: cachestatus.StaleIfError, refresh: true}
		default:
			fwd = cachestatus.FwdStale
		}
	} else if vkey != key {
		fwd = cachestatus.FwdVaryMiss
	}
	switch {
	case req.OnlyIfCached:
		// RFC 9111 section 5.2.1.7: nothing usable is stored.
		return verdict{do: doRefuse, detail: cachestatus.OnlyIfCached}
	case r.Header.Get("Range") != "" && e == nil:
		// With nothing stored, the range goes upstream as it is. A
		// stored response that needs validating is revalidated whole,
		// coalesced, and the range served from it: a pass-through
		// would leave it unvalidated, and the next ranged reload
		// upstream too.
		return verdict{do: doPass, fwd: fwd, detail: cachestatus.Range}
	case req.NoStore:
		// The answer may not be stored (RFC 9111 section 5.2.1.5),
		// so it could not be shared with a herd either.
		return verdict{do: doPass, fwd: fwd, detail: cachestatus.RequestNoStore}
	}
	return verdict{do: doFetch, fwd: fwd}
}

// carriesFields reports whether r sends upstream fields of its client's
// beyond those e varies on.
func carriesFields(r *http.Request, e *stored.Entry) bool {
	return !httprule.OnlyFields(httprule.SharedFetchHeader(r.Header), e.Vary)
}

// requestDirectives reads r's Cache-Control and Pragma. Under
// RequestNoCacheIgnore, every directive that asks for a fresher answer
// than the one stored (no-cache, max-age, min-fresh: what a reload button
// sends, and more) is dropped: the shield holds.
func (p *Proxy) requestDirectives(r *http.Request) freshness.RequestDirectives {
	// Indexed rather than Get: the server has canonicalised the names,
	// and this runs on every hit.
	if r.Header["Cache-Control"] == nil && r.Header["Pragma"] == nil {
		return noDirectives // the common case, without parsing
	}
	req := freshness.ParseRequest(r.Header)
	if p.requestNoCache == RequestNoCacheIgnore {
		req = req.Relaxed()
	}
	return req
}

var noDirectives = freshness.ParseRequest(nil)

// serve writes e to w with header h (see respond.Entry), and returns o,
// what serving e is, or outBusy when it answered 503 instead.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, e *stored.Entry, h http.Header, st cachestatus.Status, now time.Time, o requestOutcome) requestOutcome {
	switch respond.Entry(w, r, e, h, st, now, p.unstored) {
	case respond.Busy:
		return outBusy
	case respond.Cut:
		p.stats.Cut.Add(1)
	}
	return o
}

// serveStored serves e, stored, as a hit of kind o (a fresh hit, or a
// stale copy standing in), with detail d in its Cache-Status.
func (p *Proxy) serveStored(w http.ResponseWriter, r *http.Request, e *stored.Entry, d cachestatus.Detail, now time.Time, o requestOutcome) requestOutcome {
	return p.serve(w, r, e, e.Header, hitStatus(e, d, now), now, o)
}

// hitStatus is the Cache-Status of an answer from e, with detail d.
func hitStatus(e *stored.Entry, d cachestatus.Detail, now time.Time) cachestatus.Status {
	return cachestatus.Status{Hit: true, TTL: e.Decision.TTL(now), HasTTL: true, Detail: d}
}

// serveBusy answers 503 with the guard's Retry-After.
func (p *Proxy) serveBusy(w http.ResponseWriter, busy *upstream.BusyError, st cachestatus.Status) requestOutcome {
	respond.Busy503(w, busy.RetryAfter, st)
	return outBusy
}

// passThrough sends r upstream on its own (see pass.Passer.Pass), for
// the reason fwd and detail give in Cache-Status.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, target string, fwd cachestatus.Fwd, detail cachestatus.Detail) requestOutcome {
	if p.passer.Pass(w, r, target, cachestatus.Status{Fwd: fwd, Detail: detail}) {
		return outBusy
	}
	return outPassed
}
