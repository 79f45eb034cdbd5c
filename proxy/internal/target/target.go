// Package target decides what a request names: the normal request-target
// (path and query) that is both the cache key and what goes upstream, for
// requests, purges and the references in the origin's answers alike; the
// URL of an upstream request, assembled, never concatenated; and the form
// of a path that the operator's rules match.
package target

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// ErrBad is the answer to a request-target corral does not forward.
var ErrBad = errors.New("request-target must be a path such as /api/stats, or an absolute http(s) URL")

// Of returns the request-target of r in normal origin-form (path
// and query): what goes upstream and, for a GET, the cache key. It accepts
// origin-form (RFC 9112 section 3.2.1) and absolute-form (section 3.2.2)
// with an http or https scheme and no userinfo, whose authority is the
// request's Host and whose path and query alone are used; anything else,
// "*" and authority-form included, is an error. No request can reach a
// scheme, host or port other than the upstream's: the outgoing URL is
// assembled from the upstream's and this result, never concatenated with
// what the client sent.
//
// Percent-encoding is normalised (RFC 3986 section 6.2.2): unreserved
// characters are decoded, other escapes upper-cased, bytes that may not
// appear raw escaped, and an empty query dropped, so that /keys/%64 and /keys/d are one key and one
// upstream request. Dot segments are refused rather than resolved: a
// client that sends them is not a browser, and an origin behind a path
// prefix must not be walked out of it.
func Of(r *http.Request) (string, error) {
	raw := r.RequestURI
	if raw == "" { // a request made in process rather than read from a client
		if r.URL == nil || r.URL.Opaque != "" || r.URL.User != nil {
			return "", ErrBad
		}
		raw = r.URL.RequestURI()
	}
	if !strings.HasPrefix(raw, "/") {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.Opaque != "" {
			return "", ErrBad
		}
		// Host, not the Host header: net/http has already made the
		// absolute-form's authority the request's Host (RFC 9112
		// section 3.2.2) and dropped the header.
		if !strings.EqualFold(u.Host, r.Host) {
			return "", ErrBad
		}
		return fromURL(u)
	}
	return Normalize(raw)
}

// Normalize normalises an origin-form request-target (path and
// optional query, no fragment) as requestTarget describes. Purges go
// through it too, so that they name the keys requests are stored under.
func Normalize(s string) (string, error) {
	if !strings.HasPrefix(s, "/") {
		return "", ErrBad
	}
	if i := strings.IndexByte(s, '?'); i == len(s)-1 {
		s = s[:i] // an empty query is no query: /a? is /a
	}
	if clean(s) {
		return s, nil // the common case, without allocating
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || unhex(s[i+1]) < 0 || unhex(s[i+2]) < 0 {
				return "", errors.New("malformed percent-encoding in request-target")
			}
			d := byte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			if unreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteByte('%')
				b.WriteByte(upperHex[d>>4])
				b.WriteByte(upperHex[d&15])
			}
			i += 2
		case c == '#':
			return "", ErrBad // a fragment never belongs in a request
		case c == '?' || allowedRaw(c):
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&15])
		}
	}
	out := b.String()
	if dotSegment(out) {
		return "", errors.New("dot segments in request-target")
	}
	// Escaped separators are kept escaped, and so distinct, but an
	// origin that decodes them (or takes a backslash for a slash) would
	// walk /..%2Fadmin out of the upstream's path prefix.
	path, _, _ := strings.Cut(out, "?")
	if decoded, err := url.PathUnescape(path); err == nil && decoded != path {
		if dotSegment(strings.ReplaceAll(decoded, `\`, "/")) {
			return "", errors.New("escaped dot segments in request-target")
		}
		if strings.ContainsRune(decoded, 0) {
			return "", errors.New("NUL in request-target") // C-based origins stop reading there
		}
	}
	return out, nil
}

// clean reports whether s is already in normal form: no escapes, no byte
// that needs one, no fragment, no dot segment.
func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '%' || c == '#' || (!allowedRaw(c) && c != '?') {
			return false
		}
	}
	return !dotSegment(s)
}

// dotSegment reports whether the path of target has a "." or ".." segment.
func dotSegment(target string) bool {
	path, _, _ := strings.Cut(target, "?")
	for seg := range strings.SplitSeq(path, "/") {
		// "..;x" is ".." to Tomcat and Spring, which drop a segment's
		// parameters before resolving it.
		seg, _, _ = strings.Cut(seg, ";")
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

const upperHex = "0123456789ABCDEF"

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// unreserved are the characters RFC 3986 section 2.3 says mean the same
// escaped or not.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// allowedRaw are the bytes a path or query may hold unescaped
// (RFC 3986 section 3.3 pchar, and "/" and "?"; "?" is handled apart).
func allowedRaw(c byte) bool {
	if unreserved(c) {
		return true
	}
	switch c {
	case '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@', '/':
		return true
	}
	return false
}

// RulePath is the form of a path that the operator's rules match: decoded,
// lower-cased, with backslashes as slashes, runs of slashes as one, and
// ";params" and then trailing dots and spaces cut from each segment. An
// origin may read /ADMIN/me, /admin%2Fme, //admin/me, /admin;x/me,
// /admin./me or /admin%20/me as /admin/me (IIS and Windows drop a name's
// trailing dots and spaces; Tomcat and Spring a segment's parameters), and
// a rule such as '/admin/ no-store' must keep all of them out of a broader
// rule's reach. Only matching uses it; the key and what goes upstream keep
// their form.
func RulePath(path string) string { return ruleForm(path, true) }

// RulePrefix is RulePath for a rule's prefix, so that a prefix and the
// paths it covers are compared in one form. Its last segment may be the
// start of a longer one (/v1. of /v1.json), so it keeps its trailing dots
// and spaces: trimmed, /v1. would become /v1 and cover /v10 as well.
func RulePrefix(prefix string) string { return ruleForm(prefix, false) }

// ruleForm is RulePath, with the last segment trimmed only when whole.
func ruleForm(path string, whole bool) string {
	if clean(path) && !strings.Contains(path, "//") && !strings.Contains(path, ";") &&
		!strings.Contains(path, "./") && (!whole || !strings.HasSuffix(path, ".")) && strings.ToLower(path) == path {
		return path // the common case, without allocating
	}
	decoded, err := url.PathUnescape(path)
	if err != nil {
		decoded = path
	}
	decoded = strings.ToLower(strings.ReplaceAll(decoded, `\`, "/"))
	segs := strings.Split(decoded, "/")
	out := segs[:1]
	for i, seg := range segs[1:] {
		last := i == len(segs)-2
		seg, _, _ = strings.Cut(seg, ";")
		if whole || !last {
			seg = strings.TrimRight(seg, ". ")
		}
		if seg == "" && !last {
			continue // an empty segment between two others: a doubled slash
		}
		out = append(out, seg)
	}
	return strings.Join(out, "/")
}

// fromURL is the normal request-target of u's path and query: the one
// parser of a URL into a target, for an absolute-form request-target, a
// purge's URL and a reference in the origin's answer alike.
func fromURL(u *url.URL) (string, error) {
	target := u.EscapedPath()
	if target == "" {
		target = "/"
	}
	if u.RawQuery != "" || u.ForceQuery {
		target += "?" + u.RawQuery
	}
	return Normalize(target)
}

// Purge reads the url= or prefix= value of a purge into the normal
// request-target it names, as requests are stored under: a path with its
// query, or an absolute URL, whose path and query are used.
func Purge(raw string, prefix bool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Path == "" && !prefix) || (!u.IsAbs() && !strings.HasPrefix(raw, "/")) || u.Opaque != "" {
		return "", fmt.Errorf("%q is not a URL path (such as /api/stats) or an absolute URL", raw)
	}
	target, err := fromURL(u)
	if err != nil {
		return "", fmt.Errorf("%q: %v", raw, err)
	}
	return target, nil
}

// Upstream is the origin every request goes to: its scheme and host, and
// its path, a prefix of every upstream request's.
type Upstream struct {
	scheme, host string
	path         string // escaped, without a final slash
}

// NewUpstream returns the Upstream of u, an absolute http(s) URL.
func NewUpstream(u *url.URL) Upstream {
	return Upstream{scheme: u.Scheme, host: u.Host, path: strings.TrimSuffix(u.EscapedPath(), "/")}
}

// URL assembles the URL of an upstream request for target, a normal
// origin-form request-target: the upstream's scheme and host, its path as
// a prefix, and target's path and query. No request can reach a scheme,
// host or port other than the upstream's: nothing the client sent is
// concatenated into it.
func (up Upstream) URL(target string) *url.URL {
	path, query, _ := strings.Cut(target, "?")
	escaped := up.path + path
	decoded, err := url.PathUnescape(escaped)
	if err != nil { // cannot happen: both parts are normal
		decoded = escaped
	}
	return &url.URL{Scheme: up.scheme, Host: up.host, Path: decoded, RawPath: escaped, RawQuery: query}
}

// HostPort is the upstream's host and port, the scheme's by default.
func (up Upstream) HostPort() string {
	u := url.URL{Host: up.host}
	if u.Port() != "" {
		return up.host
	}
	if up.scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// Resolve resolves ref, a URI reference in the origin's answer to a request
// for base (a normal target) made to corral as host, and returns the
// normal target it names when it is on the same origin: corral's own host,
// or the origin's under its path, mapped back to corral's (RFC 9111
// section 4.4).
func (up Upstream) Resolve(host, base, ref string) (string, bool) {
	if ref == "" {
		return "", false
	}
	b := &url.URL{Scheme: "http", Host: host, Path: "/"}
	if path, query, _ := strings.Cut(base, "?"); path != "" {
		b.Path, b.RawQuery = path, query
	}
	u, err := b.Parse(ref)
	if err != nil {
		return "", false
	}
	switch {
	case strings.EqualFold(u.Host, host):
	case strings.EqualFold(u.Host, up.host) && strings.HasPrefix(u.EscapedPath(), up.path+"/"):
		// The origin named itself: map its URL back to ours.
		u.RawPath = strings.TrimPrefix(u.EscapedPath(), up.path)
		u.Path, _ = url.PathUnescape(u.RawPath)
	default:
		return "", false
	}
	target, err := fromURL(u)
	return target, err == nil
}
