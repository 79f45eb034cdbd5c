package proxy

import (
	"context"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
	"errors"
	"fmt"
	"net/http"
	"time"
)

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

// passThrough sends r upstream on its own and streams the answer back,
// never to another client. A complete GET answer that turns out storable
// is stored on the way, so that a URL marked uncacheable becomes cacheable
// again as soon as the origin says so. fwd and detail go to Cache-Status.
// It returns outPassed, or outBusy when the upstream guard held r back.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, target string, fwd cachestatus.Fwd, detail cachestatus.Detail) requestOutcome {
	info := passed{st: cachestatus.Status{Fwd: fwd, Detail: detail}, host: r.Host, uri: target, reqHeader: r.Header, reqTime: p.now(), mayStore: httprule.MayStore(r)}
	pw := &passWriter{ResponseWriter: w, outcome: outPassed}
	p.pass.ServeHTTP(pw, r.WithContext(context.WithValue(r.Context(), passKey{}, info)))
	return pw.outcome
}

func (p *Proxy) modifyPassed(resp *http.Response) error {
	info, _ := resp.Request.Context().Value(passKey{}).(passed)
	p.stats.upstream(resp.StatusCode, nil)
	if !httprule.SafeMethod(resp.Request.Method) && resp.StatusCode >= 200 && resp.StatusCode < 400 {
		p.invalidate(info, resp.Header)
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
		e = p.storeOnTheWay(resp, info, info.reqTime)
	case resp.Request.Method == http.MethodPost && httprule.PostStorable(resp.Request.Header) && p.namesItself(info, resp.Header.Get("Content-Location")):
		// RFC 9110 section 9.3.3: a POST answer with explicit freshness
		// and a Content-Location that is its own target may answer
		// later GETs for it. It is stored after the invalidation above,
		// which a moment later marks.
		e = p.storeOnTheWay(resp, info, p.now().Add(time.Nanosecond))
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
func (p *Proxy) storeOnTheWay(resp *http.Response, info passed, since time.Time) *stored.Entry {
	// The answer is judged, and its variant keyed, by the request as it
	// went upstream. It is stored only if a shared fetch for the same
	// client request would have sent the fields the answer varies on
	// alike: otherwise it is an answer to a request no lookup makes.
	sent := resp.Request.Header
	header, respTime := resp.Header.Clone(), p.now()
	e, _ := p.store.NewEntry(resp.Request.Method, info.uri, sent, resp.StatusCode, header, nil, info.reqTime, respTime)
	if !e.Decision.Storable || resp.ContentLength > p.maxObject {
		return e
	}
	if len(e.Vary) > 0 && e.VaryKey != httprule.VaryKey(e.Vary, info.reqHeader) {
		return e
	}

	t := body.NewTee(resp.Body, p.copyBuffers, p.maxObject, resp.ContentLength, func(b []byte) {
		// The client's context may end as soon as it has read the body.
		// Memory only: a passed-through answer was fetched for one
		// client, under no lease, and stays on this replica.
		p.store.Put(context.WithoutCancel(resp.Request.Context()), info.uri, e.WithBody(b, p.unstored.NewRef(b)), since, nil, nil)
	})
	if t == nil {
		return e // no room for the copy now: the body only streams
	}
	resp.Body = t
	return e
}

// Purge drops what is stored for the request URI uri (path and query),
// or with prefix for every URI that starts with uri ("" for all), and
// keeps the fetches for them already under way from storing their
// answers afterwards. It reports how many entries it dropped here.
//
// In a fleet, the purge reaches the shared tier too, and every other
// replica drops its copies. Should the shared tier fail, the purge holds
// on this replica alone (it refuses the shared tier's copies fetched
// before it), and Purge returns the error: the others may serve the
// purged response until it expires, or until a purge that succeeds.
func (p *Proxy) Purge(uri string, prefix bool) (int, error) {
	at := p.now()
	n, err := p.purgeHere(uri, prefix, at)
	if p.fleet != nil {
		if _, ferr := p.fleet.Purge(context.Background(), uri, prefix, at); ferr != nil {
			p.log.Warn("purge of the shared tier failed; other replicas may serve the purged response until it expires", "uri", uri, "prefix", prefix, "err", ferr)
			err = errors.Join(err, fmt.Errorf("purging the shared tier: %w", ferr))
		}
	}
	return n, err
}

// purgeHere purges this replica's store, as Purge describes, at at, and
// counts and logs it.
func (p *Proxy) purgeHere(uri string, prefix bool, at time.Time) (int, error) {
	n, err := p.store.Purge(uri, prefix, at)
	if err != nil {
		p.log.Warn("cache purge failed", "uri", uri, "prefix", prefix, "err", err)
	}
	p.stats.Purged.Add(int64(n))
	return n, err
}

// namesItself reports whether a Content-Location names the target of the
// request info describes, as corral's clients or the origin spell it.
func (p *Proxy) namesItself(info passed, contentLocation string) bool {
	target, ok := p.origin.Resolve(info.host, info.uri, contentLocation)
	return ok && target == info.uri
}

// invalidate drops what is stored for the target of a successful unsafe
// request, and for its Location and Content-Location when they are on the
// same origin (RFC 9111 section 4.4).
//
// This replica's memory is purged at once; the fleet, in the background
// (fleet.Announce): the client's answer does not wait on Redis.
func (p *Proxy) invalidate(info passed, h http.Header) {
	at := p.now()
	targets := []string{info.uri}
	for _, f := range []string{"Location", "Content-Location"} {
		if target, ok := p.origin.Resolve(info.host, info.uri, h.Get(f)); ok {
			targets = append(targets, target)
		}
	}
	for _, target := range targets {
		p.purgeHere(target, false, at) //nolint:errcheck // logged; the client's answer stands
		if p.fleet != nil {
			p.fleet.Announce(target, false, at)
		}
	}
}

func (p *Proxy) passError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	info, _ := r.Context().Value(passKey{}).(passed)
	st := info.st
	status, d, busy := upstreamFailure(err)
	if busy != nil {
		st.Detail = d
		o := p.serveBusy(w, busy, st)
		if pw, ok := w.(*passWriter); ok {
			pw.outcome = o // never sent: not a passed request
		}
		return
	}
	p.stats.upstream(0, err)
	if status != http.StatusBadGateway {
		// A 502 keeps the detail of why the request was passed.
		st.Detail = d
	}
	p.log.Warn("upstream request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Cache-Status", st.String())
	w.Header().Add("Via", httprule.Via)
	http.Error(w, http.StatusText(status), status)
}

// purgedElsewhere drops this replica's copies of what another replica
// purged at at.
func (p *Proxy) purgedElsewhere(key string, prefix bool, at time.Time) {
	p.purgeHere(key, prefix, at) //nolint:errcheck // logged
}
