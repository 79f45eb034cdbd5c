package freshness

import (
	"math"
	"net/http"
	"strings"
)

// Targeted Cache-Control fields (RFC 9213) carry directives for one class of
// cache only. corral obeys two: CDN-Cache-Control (section 3), and its own,
// Corral-Cache-Control, which an origin can aim at corral alone.
const (
	CorralCacheControl = "Corral-Cache-Control"
	CDNCacheControl    = "CDN-Cache-Control"
)

// Source is the field whose directives decided a response's fate.
type Source uint8

const (
	FromCacheControl Source = iota // Cache-Control and Expires, or neither
	FromCDN                        // CDN-Cache-Control
	FromCorral                     // Corral-Cache-Control, as the origin sent it
	FromRule                       // the operator's rule, as Exchange.Rule gave it
)

// cdnKey is CDN-Cache-Control as http.Header keys it. Header.Values would
// canonicalise the name, allocating, on every response.
var cdnKey = http.CanonicalHeaderKey(CDNCacheControl)

var sourceNames = [...]string{"Cache-Control", CDNCacheControl, CorralCacheControl, "rule"}

func (s Source) String() string { return sourceNames[s] }

// directives returns the directives that decide for x, and their source.
//
// corral's target list (RFC 9213 section 2.2) is, most specific first,
// Corral-Cache-Control, then the operator's rule for the path, which stands
// in for a Corral-Cache-Control the origin did not send, then
// CDN-Cache-Control. The first of them that is present, valid and not empty
// wins outright: Cache-Control and Expires are then for the caches
// downstream, and corral ignores them. A targeted field that does not parse
// is ignored as a whole (section 2.1), as if it were absent.
//
// A rule decides how long an answer stays fresh, not whose it is: it
// carries the private of the field that would decide without it, so that
// an answer the origin marked private is not shared unless the rule says
// share-private, and the fields a qualified private names are never stored.
func directives(x Exchange) (Directives, Source) {
	if d, ok := parseTargeted(x.Header.Values(CorralCacheControl)); ok {
		return d, FromCorral
	}
	if x.Rule != "" {
		if d, ok := parseTargeted([]string{x.Rule}); ok {
			origin, _ := originDirectives(x)
			d.keepPrivate(origin)
			return d, FromRule
		}
	}
	return originDirectives(x)
}

// originDirectives returns the directives that decide for x when neither
// Corral-Cache-Control nor a rule does, and their source.
func originDirectives(x Exchange) (Directives, Source) {
	if d, ok := parseTargeted(x.Header[cdnKey]); ok {
		return d, FromCDN
	}
	return ParseResponse(x.Header), FromCacheControl
}

// keepPrivate adds the private of origin to d, a rule's directives:
// unqualified, the whole response is private, unless d says share-private;
// qualified, its field names join d's, share-private or not (the answer is
// shared either way, without the fields the origin named).
func (d *Directives) keepPrivate(origin Directives) {
	switch {
	case !origin.Private, d.Private && d.PrivateFields == nil:
	case origin.PrivateFields == nil:
		if !d.SharePrivate {
			d.Private, d.PrivateFields = true, nil
		}
	default:
		d.Private = true
		d.PrivateFields = append(d.PrivateFields, origin.PrivateFields...)
	}
}

// CheckTargeted reports what is wrong with v as the value of a targeted
// field, for an operator's rule: nil when every directive in it is one
// corral implements, with a value of the type RFC 9213 section 2.1 infers,
// or share-private, which only a rule carries.
func CheckTargeted(v string) error {
	d, ok := parseTargeted([]string{v})
	switch {
	case !ok && strings.TrimSpace(v) == "":
		return errString("no directives")
	case !ok:
		return errString("not a list of cache directives such as max-age=60, stale-while-revalidate=30 (a Structured Field Dictionary: lower-case names, no quotes around numbers)")
	case len(d.Ignored) > 0:
		return errString("unknown directive " + d.Ignored[0])
	case len(d.Malformed) > 0:
		return errString("bad value for " + d.Malformed[0])
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

// parseTargeted reads the field lines of a targeted field. ok is false when
// there are none, or they are empty or not a valid Dictionary: then the
// field does not count (RFC 9213 section 2.1).
//
// A member whose value is not of the type RFC 9213 section 2.1 infers for
// its directive ("max-age=1.5", "no-store=?0", "public=1") is read, like a
// malformed directive in Cache-Control, in the direction that shares less:
// a restrictive directive counts as present, a permissive one as absent,
// and a lifetime as zero. A member that is no directive corral knows is
// ignored (section 2.2), and so are parameters (section 2.1).
func parseTargeted(lines []string) (d Directives, ok bool) {
	if len(lines) == 0 {
		return Directives{}, false // the common case, without parsing
	}
	members, ok := parseDictionary(lines)
	if !ok || len(members) == 0 {
		return Directives{}, false
	}
	d = Directives{MaxAge: unset, SMaxAge: unset, StaleWhileRevalidate: unset, StaleIfError: unset}
	for _, m := range members {
		d.addMember(m)
	}
	return d, true
}

func (d *Directives) addMember(m sfMember) {
	flag := m.kind == sfBoolean && m.boolean // a directive without a value
	seconds := unset
	if m.kind == sfInteger && m.integer >= 0 {
		seconds = int(min(m.integer, math.MaxInt32))
	}
	malformed := false
	switch m.key {
	case "no-store":
		d.NoStore, malformed = true, !flag
	case "must-revalidate":
		d.MustRevalidate, malformed = true, !flag
	case "proxy-revalidate":
		d.ProxyRevalidate, malformed = true, !flag
	case "public":
		d.Public, malformed = flag, !flag
	case "immutable":
		d.Immutable, malformed = flag, !flag
	case "must-understand":
		d.MustUnderstand, malformed = flag, !flag
	case "no-transform":
		malformed = !flag
	case "share-private":
		// corral's own, read in a rule only (directives): the operator
		// says the origin's private answers on the path are everyone's.
		d.SharePrivate, malformed = flag, !flag
	case "private", "no-cache":
		// Bare, or a String listing field names (RFC 9213 section 2.1);
		// anything else is read as bare, which covers the whole response.
		var names []string
		if m.kind == sfString {
			names = fieldNames(m.str)
		} else {
			malformed = !flag
		}
		if m.key == "private" {
			d.Private, d.PrivateFields = true, names
		} else {
			d.NoCache, d.NoCacheFields = true, names
		}
	case "max-age", "s-maxage":
		malformed = seconds == unset
		if malformed {
			seconds = 0 // stale at once (RFC 9111 section 4.2.1)
		}
		if m.key == "max-age" {
			d.MaxAge = seconds
		} else {
			d.SMaxAge = seconds
		}
	case "stale-while-revalidate":
		d.StaleWhileRevalidate, malformed = seconds, seconds == unset
	case "stale-if-error":
		d.StaleIfError, malformed = seconds, seconds == unset
	default:
		d.Ignored = append(d.Ignored, m.key)
	}
	if malformed {
		d.Malformed = append(d.Malformed, m.key)
	}
}

// fieldNames reads the field names of a qualified private or no-cache.
func fieldNames(list string) []string {
	var names []string
	for _, f := range splitList(list) {
		names = append(names, http.CanonicalHeaderKey(f))
	}
	return names
}
