package freshness

import (
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/pquerna/cachecontrol/cacheobject"
)

// RequestDirectives is a client's Cache-Control (RFC 9111 section 5.2.1),
// read one directive at a time like Directives. A malformed directive is
// dropped.
type RequestDirectives struct {
	NoCache, NoStore, OnlyIfCached bool
	MaxAge, MinFresh, StaleIfError int // seconds; -1 when absent
	MaxStale                       int // seconds; -1 when absent, MaxInt32 for a bare max-stale
}

// ParseRequest reads every Cache-Control field line of h, and Pragma:
// no-cache when there is no Cache-Control (RFC 9111 section 5.4).
func ParseRequest(h http.Header) RequestDirectives {
	d := RequestDirectives{MaxAge: unset, MinFresh: unset, StaleIfError: unset, MaxStale: unset}
	lines := h.Values("Cache-Control")
	for _, line := range lines {
		for _, piece := range splitList(line) {
			cd, err := cacheobject.ParseRequestCacheControl(piece)
			if err != nil {
				continue
			}
			d.NoCache = d.NoCache || cd.NoCache
			d.NoStore = d.NoStore || cd.NoStore
			d.OnlyIfCached = d.OnlyIfCached || cd.OnlyIfCached
			d.MaxAge = merge(d.MaxAge, int(cd.MaxAge))
			d.MinFresh = merge(d.MinFresh, int(cd.MinFresh))
			if name, _, _ := strings.Cut(piece, "="); strings.EqualFold(strings.TrimSpace(name), "stale-if-error") {
				// cacheobject leaves StaleIfError at 0, not -1, when the
				// directive is absent.
				d.StaleIfError = merge(d.StaleIfError, int(cd.StaleIfError))
			}
			if cd.MaxStaleSet {
				d.MaxStale = math.MaxInt32
			}
			d.MaxStale = merge(d.MaxStale, int(cd.MaxStale))
		}
	}
	if len(lines) == 0 {
		for _, v := range h.Values("Pragma") {
			for _, p := range splitList(v) {
				if strings.EqualFold(p, "no-cache") {
					d.NoCache = true
				}
			}
		}
	}
	return d
}

// Relaxed returns d without no-cache, max-age and min-fresh: the
// directives that ask for a younger response than the stored one, or one
// validated with the origin, and so send upstream a request that the
// stored response could answer. Request directives are advisory (RFC 9111
// section 5.2.1); what is left, max-stale, only-if-cached, no-store and
// stale-if-error, never makes a cache ask the origin when it has a
// response it may serve.
func (d RequestDirectives) Relaxed() RequestDirectives {
	d.NoCache, d.MaxAge, d.MinFresh = false, unset, unset
	return d
}

// narrows reports whether d has a directive that Relaxed drops: UseFor's
// fast path, since without one (every request without Cache-Control, on
// every hit) Relaxed would change nothing.
func (d RequestDirectives) narrows() bool {
	return d.NoCache || d.MaxAge != unset || d.MinFresh != unset
}

// StateFor is State as a client's request directives narrow or widen it
// (RFC 9111 section 5.2.1): no-cache and max-age=0 ask for a response
// validated with the origin (sections 5.2.1.4, 5.2.1.1), max-age and
// min-fresh for a younger one, and max-stale accepts an older one where
// the response allows stale use at all.
func (d Decision) StateFor(now time.Time, req RequestDirectives) State {
	// One clock subtraction for all three: this runs on every hit.
	ttl := d.TTL(now)
	age, s := d.Lifetime-ttl, d.stateAt(ttl)
	switch {
	case req.NoCache || req.MaxAge == 0:
		// max-age=0 even at age 0: it is what a reload sends.
		return Expired
	case req.MaxAge != unset && age > time.Duration(req.MaxAge)*time.Second:
		return Expired
	case req.MinFresh != unset && ttl < time.Duration(req.MinFresh)*time.Second:
		return Expired
	case s != Fresh && req.MaxStale != unset && !d.NoStale && !d.NoCache &&
		-ttl <= time.Duration(req.MaxStale)*time.Second:
		return StaleWhileRevalidate
	}
	return s
}

// Use is what a stored response is good for, for one request.
type Use struct {
	State State

	// Refused says that the request's no-cache, max-age or min-fresh
	// ruled out a response the cache could otherwise have served, Fresh
	// or StaleWhileRevalidate: Cache-Status fwd=request (RFC 9211
	// section 2.2).
	Refused bool

	// Recent says that they would have, but the response was validated
	// with the origin within the interval UseFor was given, so State is
	// what it would be without them.
	Recent bool
}

// UseFor is StateFor, except that a response validated with the origin
// (fetched, or refreshed by a 304: its ResponseTime) less than recent
// before now satisfies the request's no-cache, max-age and min-fresh.
// Those ask for a response the origin has vouched for lately, and request
// directives are advisory (RFC 9111 section 5.2.1): one vouched for within
// recent is as recent as a shared cache offers, so that a herd of reloads
// costs the origin one request per key per recent, not one after another
// without pause. Only the request's directives yield: a response's own
// no-cache (section 5.2.2.4), or must-revalidate once stale (section
// 5.2.2.2), still requires validation, however recent. A recent of zero or
// less relaxes nothing.
func (d Decision) UseFor(now time.Time, req RequestDirectives, recent time.Duration) Use {
	strict := d.StateFor(now, req)
	if !req.narrows() {
		return Use{State: strict}
	}
	own := d.StateFor(now, req.Relaxed())
	if strict == own || (own != Fresh && own != StaleWhileRevalidate) {
		return Use{State: strict}
	}
	if since := now.Sub(d.ResponseTime); since >= 0 && since < recent {
		return Use{State: own, Recent: true}
	}
	return Use{State: strict, Refused: true}
}

// UsableOnErrorFor is UsableOnError with the window widened to the
// request's own stale-if-error (RFC 5861 section 4) when it has one.
func (d Decision) UsableOnErrorFor(now time.Time, req RequestDirectives) bool {
	if req.StaleIfError != unset {
		w := time.Duration(req.StaleIfError) * time.Second
		if !d.NoStale && !d.NoCache && -d.TTL(now) < max(w, d.StaleIfError) {
			return true
		}
	}
	return d.UsableOnError(now)
}

// UsableDisconnected reports whether the response may be served stale,
// however old, while the cache cannot reach the origin (RFC 9111 section
// 4.2.4): unless it forbids stale use (must-revalidate, proxy-revalidate,
// s-maxage) or requires validation before every use (no-cache).
func (d Decision) UsableDisconnected() bool { return !d.NoStale && !d.NoCache }
