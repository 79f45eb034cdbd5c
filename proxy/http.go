package proxy

import (
	"hash/maphash"
	"maps"
	"net/http"
	"net/textproto"
	"slices"
	"sort"
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

	// Who the client is, as an auth proxy in front of an origin tells it:
	// from a client, a claim to be someone else.
	"X-Remote-",             // -User, -Addr, -Ip
	"X-Auth-Request-",       // oauth2-proxy: -User, -Email, -Groups
	"X-Webauth-",            // Grafana's auth proxy: -User
	"X-Ms-Client-Principal", // Azure App Service: -Name, -Id
	"X-Goog-Authenticated-", // Google IAP: -User-Email, -User-Id
}

// forwardingNames are the forwarding fields outside those families.
var forwardingNames = []string{
	"Forwarded", // RFC 7239
	"X-Forwarded",
	"X-Real-Ip", "X-Client-Ip", "True-Client-Ip", "Client-Ip", "X-Cluster-Client-Ip", "Fly-Client-Ip",
	"X-Rewrite-Url", "X-Host", "X-Http-Host-Override",
	"Front-End-Https", "X-Url-Scheme",
	"Remote-User", "X-Originating-Ip", "X-Proxyuser-Ip", "X-Custom-Ip-Authorization",
	// Fields some origins take as the URL to serve.
	"X-Override-Url", "X-Http-Destinationurl", "X-Proxy-Url", "Base-Url", "Proxy-Host",
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
	normalizeLists(out)
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

// fingerprint is a hash of what a request with header h sends upstream,
// field names and values, in any order of the names: two requests that
// send the same fields have one.
func fingerprint(h http.Header) uint64 {
	names := slices.Sorted(maps.Keys(h))
	var m maphash.Hash
	m.SetSeed(fingerprintSeed)
	for _, name := range names {
		m.WriteString(name)
		m.WriteByte(0)
		for _, v := range h[name] {
			m.WriteString(v)
			m.WriteByte(1)
		}
	}
	return m.Sum64()
}

var fingerprintSeed = maphash.MakeSeed()

// sameFields reports whether a and b hold the same fields and values.
func sameFields(a, b http.Header) bool {
	return maps.EqualFunc(a, b, slices.Equal)
}

// sentValues returns the values of the canonical field name in h as
// sharedFetchHeader(h) holds them: none for a field that does not go
// upstream, and an unordered field in normalList's form. It reads the
// same lists and predicates without copying h, and must send what
// sharedFetchHeader sends (FuzzUpstreamRequest checks that variants are
// keyed on what was sent).
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
	if slices.Contains(unordered, name) {
		return []string{normalList(vs)}
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
// header h: its values as they went. An Accept-Language that went in
// another form than normalList's keys a variant that no lookup finds,
// rather than one an origin answered to another order than its key says.
func sentVaryKey(names []string, h http.Header) string {
	return joinVary(names, func(name string) []string { return h[name] })
}

// joinVary joins the values of names, each normalised as RFC 9111
// section 4.1 allows: field lines combined, white space around list
// separators dropped. A field that is absent can only match one that is
// absent too, not one sent empty (an empty Accept-Encoding asks for no
// content coding, RFC 9110 section 12.5.3; an absent one accepts any).
func joinVary(names []string, values func(string) []string) string {
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		vs := values(name)
		if vs == nil {
			b.WriteByte('\n')
			continue
		}
		b.WriteByte(':')
		for i, v := range vs {
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
// case-insensitive). Every request corral sends upstream carries them in
// normalList's one form (normalizeLists), and variants are keyed on that
// form, as RFC 9111 section 4.1 allows: "en, de" and "DE,en" select one
// response, and the origin got the same for both.
var unordered = []string{"Accept-Encoding", "Accept-Language"}

// normalizeLists puts the unordered fields of h, a header to be sent
// upstream, in normalList's form.
func normalizeLists(h http.Header) {
	for _, name := range unordered {
		if vs := h[name]; vs != nil && (len(vs) != 1 || !oneNormalToken(vs[0])) {
			h[name] = []string{normalList(vs)}
		}
	}
}

// maxListMembers bounds the members of an unordered field that corral
// reads, and so the work a client's field costs to put in order: a list
// longer than any browser sends is cut to its first members, as the
// client listed them, and the origin gets the cut list the key holds.
const maxListMembers = 64

// normalList returns the one line in which the members of the unordered
// field with values go upstream: lower-cased, without white space, most
// preferred first (by q-value), those of equal preference in byte order,
// duplicates dropped. An origin that reads the first member and one that
// reads q-values then agree on what the request prefers, whatever order
// and lines the client chose. A member whose q-value is malformed goes
// last. normalList of its own result returns it unchanged.
func normalList(values []string) string {
	if len(values) == 1 && oneNormalToken(values[0]) {
		return values[0] // "gzip", "en": the common case, as it is
	}
	type member struct {
		text string
		q    int // thousandths; -1 when malformed
	}
	var ms []member
lines:
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			if len(ms) == maxListMembers {
				break lines
			}
			if m = strings.ToLower(strings.Join(strings.Fields(m), "")); m != "" {
				ms = append(ms, member{m, qValue(m)})
			}
		}
	}
	slices.SortFunc(ms, func(a, b member) int {
		if a.q != b.q {
			return b.q - a.q
		}
		return strings.Compare(a.text, b.text)
	})
	ms = slices.Compact(ms)
	var b strings.Builder
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.text)
	}
	return b.String()
}

// oneNormalToken reports whether v is one member in normalList's form
// already: lower-case letters, digits and '-' alone, no list, no weight.
func oneNormalToken(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return v != ""
}

// qValue returns the weight of a member of an unordered field, lower-cased
// and without white space, in thousandths: 1000 when it has none, -1 when
// it is not a qvalue (RFC 9110 section 12.4.2: "0" or "1" and at most
// three decimals, none above 1).
func qValue(member string) int {
	_, params, _ := strings.Cut(member, ";")
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		v, ok := strings.CutPrefix(p, "q=")
		if !ok {
			continue
		}
		if len(v) == 0 || len(v) > len("0.000") || v[0] != '0' && v[0] != '1' || len(v) > 1 && v[1] != '.' {
			return -1
		}
		q, scale := int(v[0]-'0')*1000, 100
		for _, c := range []byte(v[min(2, len(v)):]) {
			if c < '0' || c > '9' {
				return -1
			}
			q += int(c-'0') * scale
			scale /= 10
		}
		if q > 1000 {
			return -1
		}
		return q
	}
	return 1000
}

// firstLanguage returns the language tag an Accept-Language prefers above
// every other (the highest q-value, RFC 9110 section 12.5.4), lower-cased;
// "" when none does: several share the highest, it is "*", or a q-value
// is malformed.
func firstLanguage(values []string) string {
	best, bestQ, tie := "", 0, false
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			tag, _, _ := strings.Cut(m, ";")
			q := qValue(m)
			switch {
			case q < 0:
				return "" // malformed: select nothing
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
