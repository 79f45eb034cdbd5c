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

// StateFor is State as a client's request directives narrow or widen it
// (RFC 9111 section 5.2.1): max-age and min-fresh ask for a younger
// response, max-stale accepts an older one where the response allows
// stale use at all. no-cache is left to the caller, which decides how far
// to honour it.
func (d Decision) StateFor(now time.Time, req RequestDirectives) State {
	s := d.State(now)
	age, ttl := d.Age(now), d.TTL(now)
	switch {
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
