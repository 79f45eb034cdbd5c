// Package rules holds the operator's freshness rules: for a request path,
// the cache directives corral reads as if the origin had sent them in
// Corral-Cache-Control. Of the rules that cover the path, the one with the
// longest prefix wins.
package rules

import (
	"errors"
	"fmt"
	"strings"

	"corral/freshness"
)

// Rule is one rule, as the operator writes it: "PATH-PREFIX DIRECTIVES".
type Rule struct {
	// Prefix is matched against the start of the request path, never
	// the query: /api/ matches /api/stats, /api matches /apis too. A
	// prefix that ends in "/" also matches the path without that slash:
	// /api/ matches /api. Match compares byte for byte; the proxy gives
	// it paths (and prefixes) in one canonical form, decoded and
	// lower-cased.
	Prefix string

	// Directives are response cache directives, such as
	// "max-age=1, stale-while-revalidate=10".
	Directives string
}

func (r Rule) String() string { return r.Prefix + " " + r.Directives }

// Parse reads a rule: a path prefix, white space, then the directives. The
// directives must be ones corral implements, written as a targeted field
// takes them (RFC 9213 section 2.1): a typo is an error, not a rule that
// quietly does nothing.
func Parse(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return Rule{}, errors.New("want PATH-PREFIX DIRECTIVES, e.g. /api/stats/ max-age=1, stale-while-revalidate=10")
	}
	r := Rule{Prefix: s[:i], Directives: strings.TrimSpace(s[i:])}
	if err := checkPrefix(r.Prefix); err != nil {
		return Rule{}, err
	}
	if err := freshness.CheckTargeted(r.Directives); err != nil {
		return Rule{}, fmt.Errorf("directives %q: %v", r.Directives, err)
	}
	return r, nil
}

// checkPrefix accepts what may stand in a request path (RFC 3986 section
// 3.3): a prefix with a query, a fragment or a raw space could match
// nothing.
func checkPrefix(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("prefix %q must be a path starting with /", p)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return fmt.Errorf("prefix %q: %% must start an escape such as %%20", p)
			}
			i += 2
		case !pathByte(c):
			return fmt.Errorf("prefix %q: %q cannot stand in a path; percent-encode it", p, c)
		}
	}
	return nil
}

// pathByte reports whether c may appear unescaped in a path: unreserved,
// sub-delims, ":", "@" and "/" (RFC 3986 section 3.3).
func pathByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Match returns the rule of rs that covers path with the longest prefix,
// and false when none does. Prefixes are distinct, so there is no tie:
// for /api/stats, a rule for /api/stats/ wins over one for /api/stats.
func Match(rs []Rule, path string) (Rule, bool) {
	best, found := Rule{}, false
	for _, r := range rs {
		if covers(r.Prefix, path) && (!found || len(r.Prefix) > len(best.Prefix)) {
			best, found = r, true
		}
	}
	return best, found
}

// covers reports whether a rule for prefix speaks of path: path starts
// with prefix, or prefix is path and a final "/". Origins commonly serve
// /admin and /admin/ alike (one redirects to the other, or both reach one
// handler), so '/admin/ no-store' must keep /admin out of the cache too,
// not leave it to a broader rule.
func covers(prefix, path string) bool {
	if strings.HasPrefix(path, prefix) {
		return true
	}
	n := len(prefix) - 1
	return n > 0 && prefix[n] == '/' && path == prefix[:n]
}
