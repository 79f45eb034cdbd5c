package freshness

import (
	"net/http"
	"strings"

	"github.com/pquerna/cachecontrol/cacheobject"
)

// unset marks a delta-seconds directive that did not appear.
const unset = -1

// Directives is the response's Cache-Control, every field line joined
// (RFC 9110 section 5.3) and read one directive at a time.
//
// cacheobject stops at the first directive it cannot parse and returns
// nothing, so one bad directive would hide a valid "private" next to it.
// Parsing each directive on its own keeps the rest, and a bad directive is
// read in the direction that shares less: a malformed restrictive directive
// ("private=\"x", "no-store=1") counts as present, a malformed permissive one
// ("public=1", "stale-if-error=soon") as absent, and a malformed or
// duplicated lifetime ("max-age=abc", "max-age=1, max-age=60") as zero, which
// RFC 9111 section 4.2.1 allows ("considered stale").
type Directives struct {
	NoStore, NoCache, Private, Public  bool
	MustRevalidate, ProxyRevalidate    bool
	Immutable                          bool
	MustUnderstand                     bool     // section 5.2.2.3
	PrivateFields, NoCacheFields       []string // qualified forms, canonical names
	MaxAge, SMaxAge                    int      // seconds; -1 when absent
	StaleWhileRevalidate, StaleIfError int      // seconds; -1 when absent
	Malformed                          []string // directives that did not parse, as sent
	Ignored                            []string // in a targeted field: members that are no directive corral knows

	// SharePrivate is corral's own share-private, read in an operator's
	// rule only: the rule shares answers the origin marked private. The
	// origin needs no such directive: its Corral-Cache-Control decides
	// alone, private included.
	SharePrivate bool
}

// ParseResponse reads every Cache-Control field line of h.
func ParseResponse(h http.Header) Directives {
	d := Directives{MaxAge: unset, SMaxAge: unset, StaleWhileRevalidate: unset, StaleIfError: unset}
	for _, line := range h.Values("Cache-Control") {
		for _, piece := range splitList(line) {
			d.add(piece)
		}
	}
	return d
}

func (d *Directives) add(piece string) {
	name, _, _ := strings.Cut(piece, "=")
	name = strings.ToLower(strings.TrimSpace(name))
	cd, err := cacheobject.ParseResponseCacheControl(piece)
	if err != nil {
		d.Malformed = append(d.Malformed, piece)
		switch name {
		case "no-store":
			d.NoStore = true
		case "no-cache":
			d.NoCache = true
		case "private":
			d.Private = true
			d.PrivateFields = nil // unqualified: the whole response is private
		case "must-revalidate":
			d.MustRevalidate = true
		case "proxy-revalidate":
			d.ProxyRevalidate = true
		case "max-age":
			d.MaxAge = 0
		case "s-maxage":
			d.SMaxAge = 0
		}
		return
	}
	d.NoStore = d.NoStore || cd.NoStore
	d.Public = d.Public || cd.Public
	d.MustRevalidate = d.MustRevalidate || cd.MustRevalidate
	d.ProxyRevalidate = d.ProxyRevalidate || cd.ProxyRevalidate
	d.Immutable = d.Immutable || cd.Immutable
	// cacheobject keeps no record of must-understand. It takes no
	// argument; one with an argument is malformed, and would let a
	// response be stored that says no-store, so it does not count.
	d.MustUnderstand = d.MustUnderstand || name == "must-understand" && !strings.Contains(piece, "=")
	if cd.PrivatePresent {
		if len(cd.Private) == 0 || (d.Private && d.PrivateFields == nil) {
			d.PrivateFields = nil
		} else {
			d.PrivateFields = appendFields(d.PrivateFields, cd.Private)
		}
		d.Private = true
	}
	if cd.NoCachePresent {
		if len(cd.NoCache) == 0 || (d.NoCache && d.NoCacheFields == nil) {
			d.NoCacheFields = nil
		} else {
			d.NoCacheFields = appendFields(d.NoCacheFields, cd.NoCache)
		}
		d.NoCache = true
	}
	d.MaxAge = merge(d.MaxAge, int(cd.MaxAge))
	d.SMaxAge = merge(d.SMaxAge, int(cd.SMaxAge))
	d.StaleWhileRevalidate = merge(d.StaleWhileRevalidate, int(cd.StaleWhileRevalidate))
	d.StaleIfError = merge(d.StaleIfError, int(cd.StaleIfError))
}

// merge combines a directive seen before with a new occurrence: the same
// value twice is harmless, two different values are read as zero.
func merge(old, v int) int {
	switch {
	case v == unset:
		return old
	case old == unset || old == v:
		return v
	default:
		return 0
	}
}

func appendFields(dst []string, names cacheobject.FieldNames) []string {
	for n := range names {
		if n != "" {
			dst = append(dst, n)
		}
	}
	return dst
}

// splitList splits a comma-separated field value, leaving commas inside
// quoted strings alone, and drops empty elements (RFC 9110 section 5.6.1).
func splitList(v string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				out = appendTrimmed(out, v[start:i])
				start = i + 1
			}
		}
	}
	return appendTrimmed(out, v[min(start, len(v)):])
}

func appendTrimmed(out []string, s string) []string {
	if s = strings.TrimSpace(s); s != "" {
		out = append(out, s)
	}
	return out
}
