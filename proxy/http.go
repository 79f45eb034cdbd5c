package proxy

import (
	"net/http"
	"net/textproto"
	"slices"
	"sort"
	"strconv"
	"strings"

	"corral/freshness"
)

// The HTTP rules corral follows live here, one table each.

// hopHeaders are hop-by-hop fields (RFC 9110 section 7.6.1): they describe
// one connection and are never stored or forwarded. The Proxy-* fields
// speak to one proxy, which a shared cache must not store either
// (RFC 9111 section 3.1).
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection", // non-standard, sent by old clients
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authentication-Info",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// removeHopHeaders deletes the hop-by-hop fields from h, and those that
// Connection names.
func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, f := range hopHeaders {
		h.Del(f)
	}
}

// corralOnly is the response field that speaks to corral alone, a
// targeted field (RFC 9213 section 2) whose target is corral: corral reads
// it, keeps it beside a stored entry for revalidations, and never passes it
// on. CDN-Cache-Control is passed on: CDNs typically forward it (RFC 9213
// section 3), and a CDN in front of corral may want it.
const corralOnly = freshness.CorralCacheControl

// tailoring are the request fields that make a request conditional
// (RFC 9110 section 13) or partial (section 14). The cache answers them
// from the stored response.
var tailoring = []string{
	"If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range",
	"Range",
}

// sharedFetchDrops are request fields that never go upstream on a fetch
// made for many clients: the answer must be the full, plain response that
// the cache can store and then tailor to each client, not one client's
// view of it.
var sharedFetchDrops = append(slices.Clip(tailoring), "Cache-Control", "Pragma")

// forwardingPrefixes and forwardingNames make up the forwarding fields:
// request fields by which a proxy in front of an origin tells it about the
// client (its address, identity, client certificate, country), the
// client's connection (scheme, port), or the URL, host, path or method
// the client asked for before a rewrite. Proxies and frameworks name new
// ones all the time within a few families, so a family is matched by its
// prefix, not member by member: X-Forwarded-User, X-Forwarded-Client-Cert
// and X-Original-Uri are as trusted by some origin as X-Forwarded-Host is
// by another. A client's own never go upstream: an origin that builds
// links or routes from them, or believes them about who asks, would
// otherwise store one client's choice for everyone (issues 9 and 23).
// corral sets its own, in forward.
//
// Each prefix is a namespace that its owner's edge sets about the client
// and overwrites when a client sends it, as corral, the origin's edge,
// does. X-Amzn- is not X-Amz-, the fields that sign requests to S3.
var forwardingPrefixes = []string{
	"X-Forwarded-", // the de facto family: -For, -Host, -Proto, -Port, -Prefix, -Uri, -User, -Client-Cert
	"X-Original-",  // IIS URL Rewrite, ASP.NET Core, ingress-nginx: -Url, -Uri, -Host, -For, -Proto, -Method
	"X-Envoy-",     // Envoy's own: -Original-Path, -Internal, -External-Address
	"X-Amzn-",      // AWS load balancers: -Oidc-Identity, -Mtls-Clientcert, -Tls-Version
	"Cf-",          // Cloudflare: -Connecting-Ip, -Ipcountry, -Visitor, -Access-Authenticated-User-Email
	"Fastly-",      // Fastly: -Client-Ip, -Ssl
}

// forwardingNames are the forwarding fields outside those families.
var forwardingNames = []string{
	"Forwarded", // RFC 7239
	"X-Forwarded",
	"X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "Client-Ip", "X-Cluster-Client-Ip", "Fly-Client-Ip",
	"X-Rewrite-Url", "X-Host", "X-Http-Host-Override",
	"Front-End-Https", "X-Url-Scheme",
}

// isForwardingField reports whether the request field name is a
// forwarding field, in any letter case.
func isForwardingField(name string) bool {
	for _, p := range forwardingPrefixes {
		if len(name) >= len(p) && strings.EqualFold(name[:len(p)], p) {
			return true
		}
	}
	return slices.ContainsFunc(forwardingNames, func(f string) bool { return strings.EqualFold(name, f) })
}

// methodOverrides make some origins treat a request as another method. A
// GET whose answer may be stored must be a GET at the origin too.
var methodOverrides = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// neverForwarded reports whether a client's field name never goes
// upstream as the client sent it, on any request: a forwarding field, or
// a field whose name holds an underscore (forward then adds corral's own
// forwarding fields, and a trusted proxy's chain). CGI and many frameworks read X_Forwarded_Host as
// X-Forwarded-Host, which would slip every forwarding field past
// isForwardingField; nginx drops such fields by default for the same
// reason.
func neverForwarded(name string) bool {
	return strings.Contains(name, "_") || isForwardingField(name)
}

// neverStored reports whether a client's field name never goes upstream
// on a request whose answer may be stored or shared: what neverForwarded
// says, and the method overrides.
func neverStored(name string) bool {
	return neverForwarded(name) || slices.ContainsFunc(methodOverrides, func(f string) bool { return strings.EqualFold(name, f) })
}

// dropFields deletes from h the fields whose names drop reports.
func dropFields(h http.Header, drop func(name string) bool) {
	for k := range h {
		if drop(k) {
			delete(h, k)
		}
	}
}

// sharedFetchHeader returns the header a shared fetch sends for a client
// request with header h, before corral adds Via and its own conditionals.
// Variants are keyed on it (RFC 9111 section 4.1): sentValues reads the
// same fields out of h without copying it.
func sharedFetchHeader(h http.Header) http.Header {
	out := h.Clone()
	removeHopHeaders(out)
	dropStoredForwarding(out)
	for _, f := range sharedFetchDrops {
		out.Del(f)
	}
	return out
}

// onlyFields reports whether h holds no field but those named in names.
func onlyFields(h http.Header, names []string) bool {
	for k := range h {
		if !slices.Contains(names, k) {
			return false
		}
	}
	return true
}

// sentValues returns the values of the canonical field name in h as
// sharedFetchHeader(h) holds them: none for a field that does not go
// upstream. It reads the same lists and predicates without copying h,
// and must drop what sharedFetchHeader drops (FuzzUpstreamRequest checks
// that variants are keyed on what was sent).
func sentValues(h http.Header, name string) []string {
	vs := h[name]
	if vs == nil || neverStored(name) {
		return nil
	}
	for _, list := range [][]string{hopHeaders, sharedFetchDrops} {
		if slices.Contains(list, name) {
			return nil
		}
	}
	for _, v := range h["Connection"] {
		for v != "" {
			var f string
			f, v, _ = strings.Cut(v, ",")
			if f = textproto.TrimString(f); f != "" && http.CanonicalHeaderKey(f) == name {
				return nil
			}
		}
	}
	return vs
}

// aboutTheRequest reports whether an answer with status may speak of the
// request that got it rather than of the resource: of its credentials
// (401, 403, 407), its quota (429), its form or size (400, 406, 411, 413,
// 414, 417, 421, 422, 431), or a failure that one of its fields can cause
// as readily as an outage can (5xx). An origin answers such a status to one
// client's API key, cookie or odd field while it serves everyone else, so
// it is never handed to requests that differ from the one it answered.
func aboutTheRequest(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden,
		http.StatusNotAcceptable, http.StatusProxyAuthRequired, http.StatusLengthRequired,
		http.StatusRequestEntityTooLarge, http.StatusRequestURITooLong, http.StatusExpectationFailed,
		http.StatusMisdirectedRequest, http.StatusUnprocessableEntity, http.StatusTooManyRequests,
		http.StatusRequestHeaderFieldsTooLarge:
		return true
	}
	return status >= 500 && status < 600
}

// notUpdatedBy304 are stored fields a 304 must not replace (RFC 9111
// section 3.2): the stored body is kept, so the fields that describe it
// stay as they were.
var notUpdatedBy304 = []string{
	"Content-Length", "Content-Encoding", "Content-Range", "Transfer-Encoding",
}

// copyHeader copies src into dst with one allocation for all values, so
// that what one client's handler does to its header never reaches the
// stored copy or another client. The allocation has room for extra more
// values, which it returns.
func copyHeader(dst, src http.Header, extra int) []string {
	n := extra
	for _, vs := range src {
		n += len(vs)
	}
	all := make([]string, n)
	for k, vs := range src {
		m := copy(all, vs)
		dst[k] = all[:m:m]
		all = all[m:]
	}
	return all
}

// varyNames returns the canonical field names of h's Vary, sorted.
func varyNames(h http.Header) []string {
	var names []string
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				names = append(names, http.CanonicalHeaderKey(f))
			}
		}
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// varyKey returns the variant key of a client request with header h for a
// response that varies on names: the values a shared fetch for it sends
// upstream (sentValues), never fields that do not reach the origin, such
// as those the client names in Connection.
func varyKey(names []string, h http.Header) string {
	return joinVary(names, func(name string) []string { return sentValues(h, name) })
}

// sentVaryKey returns the variant key of a request sent upstream with
// header h: its values as they went.
func sentVaryKey(names []string, h http.Header) string {
	return joinVary(names, func(name string) []string { return h[name] })
}

// joinVary joins the values of names, each normalised as RFC 9111
// section 4.1 allows: field lines combined, white space around list
// separators dropped.
func joinVary(names []string, values func(string) []string) string {
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte(':')
		if unordered[name] {
			b.WriteString(strings.Join(normalList(values(name)), ","))
			b.WriteByte('\n')
			continue
		}
		for i, v := range values(name) {
			if i > 0 {
				b.WriteByte(',')
			}
			for j, part := range strings.Split(v, ",") {
				if j > 0 {
					b.WriteByte(',')
				}
				b.WriteString(textproto.TrimString(part))
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// unordered are the request fields whose members mean the same in any
// order, letter case or spacing (RFC 9110 sections 12.5.3 and 12.5.4: a
// member's preference is its q-value, and codings and language tags are
// case-insensitive): variants are keyed on them normalised, as RFC 9111
// section 4.1 allows, so that "en, de" and "DE,en" select one response.
var unordered = map[string]bool{"Accept-Encoding": true, "Accept-Language": true}

// normalList returns the members of list fields, lower-cased, without
// white space, sorted.
func normalList(values []string) []string {
	var out []string
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			if m != "" {
				out = append(out, m)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// firstLanguage returns the language tag an Accept-Language prefers above
// every other (the highest q-value, RFC 9110 section 12.5.4), lower-cased;
// "" when none does: several share the highest, or it is "*".
func firstLanguage(values []string) string {
	best, bestQ, tie := "", 0.0, false
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			tag, params, _ := strings.Cut(m, ";")
			tag = strings.ToLower(textproto.TrimString(tag))
			q := 1.0
			if k, val, ok := strings.Cut(textproto.TrimString(params), "="); ok && strings.EqualFold(textproto.TrimString(k), "q") {
				f, err := strconv.ParseFloat(textproto.TrimString(val), 64)
				if err != nil || f < 0 || f > 1 {
					return "" // malformed: select nothing
				}
				q = f
			}
			switch {
			case tag == "" || q == 0:
			case q > bestQ:
				best, bestQ, tie = tag, q, false
			case q == bestQ && tag != best:
				tie = true
			}
		}
	}
	if tie || best == "*" {
		return ""
	}
	return best
}

// loggedWriter notes the status and body size of a response, for the
// request log.
type loggedWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *loggedWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *loggedWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and the rest.
func (w *loggedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
