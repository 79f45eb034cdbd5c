// Package httprule holds the HTTP rules corral follows (RFC 9110, 9111,
// 9112), one table or one function each: which fields are hop-by-hop,
// which a client may never send upstream, what a shared fetch sends and
// what a variant is keyed on, which statuses speak of the request rather
// than the resource, and which requests the cache stays out of.
package httprule

import (
	"corral/freshness"
	"hash/maphash"
	"maps"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
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

// RemoveHopHeaders deletes the hop-by-hop fields from h, and those that
// Connection names.
func RemoveHopHeaders(h http.Header) {
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

// CorralOnly is the response field that speaks to corral alone, a
// targeted field (RFC 9213 section 2) whose target is corral: corral reads
// it, keeps it beside a stored entry for revalidations, and never passes it
// on. CDN-Cache-Control is passed on: CDNs typically forward it (RFC 9213
// section 3), and a CDN in front of corral may want it.
const CorralOnly = freshness.CorralCacheControl

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

// IsForwardingField reports whether the request field name is a
// forwarding field, in any letter case.
func IsForwardingField(name string) bool {
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

// NeverForwarded reports whether a client's field name never goes
// upstream as the client sent it, on any request: a forwarding field, or
// a field whose name holds an underscore (forward then adds corral's own
// forwarding fields, and a trusted proxy's chain). CGI and many frameworks read X_Forwarded_Host as
// X-Forwarded-Host, which would slip every forwarding field past
// IsForwardingField; nginx drops such fields by default for the same
// reason.
func NeverForwarded(name string) bool {
	return strings.Contains(name, "_") || IsForwardingField(name)
}

// neverStored reports whether a client's field name never goes upstream
// on a request whose answer may be stored or shared: what NeverForwarded
// says, and the method overrides.
func neverStored(name string) bool {
	return NeverForwarded(name) || slices.ContainsFunc(methodOverrides, func(f string) bool { return strings.EqualFold(name, f) })
}

// DropFields deletes from h the fields whose names drop reports.
func DropFields(h http.Header, drop func(name string) bool) {
	for k := range h {
		if drop(k) {
			delete(h, k)
		}
	}
}

// SharedFetchHeader returns the header a shared fetch sends for a client
// request with header h, before corral adds Via and its own conditionals.
// Variants are keyed on it (RFC 9111 section 4.1): SentValues reads the
// same fields out of h without copying it.
func SharedFetchHeader(h http.Header) http.Header {
	out := h.Clone()
	RemoveHopHeaders(out)
	DropStoredForwarding(out)
	for _, f := range sharedFetchDrops {
		out.Del(f)
	}
	NormalizeLists(out)
	return out
}

// OnlyFields reports whether h holds no field but those named in names.
func OnlyFields(h http.Header, names []string) bool {
	for k := range h {
		if !slices.Contains(names, k) {
			return false
		}
	}
	return true
}

// Fingerprint is a hash of what a request with header h sends upstream,
// field names and values, in any order of the names: two requests that
// send the same fields have one.
func Fingerprint(h http.Header) uint64 {
	// A sum of one hash per field: the same whatever the order of the
	// names, with nothing to sort or allocate.
	var sum uint64
	for name, vs := range h {
		var m maphash.Hash
		m.SetSeed(fingerprintSeed)
		m.WriteString(name)
		m.WriteByte(0)
		for _, v := range vs {
			m.WriteString(v)
			m.WriteByte(1)
		}
		sum += m.Sum64()
	}
	return sum
}

var fingerprintSeed = maphash.MakeSeed()

// SameFields reports whether a and b hold the same fields and values.
func SameFields(a, b http.Header) bool {
	return maps.EqualFunc(a, b, slices.Equal)
}

// SentValues returns the values of the canonical field name in h as
// SharedFetchHeader(h) holds them: none for a field that does not go
// upstream, and an unordered field in normalList's form. It reads the
// same lists and predicates without copying h, and must send what
// SharedFetchHeader sends (FuzzUpstreamRequest checks that variants are
// keyed on what was sent).
func SentValues(h http.Header, name string) []string {
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

// NotUpdatedBy304 are stored fields a 304 must not replace (RFC 9111
// section 3.2): the stored body is kept, so the fields that describe it
// stay as they were.
var NotUpdatedBy304 = []string{
	"Content-Length", "Content-Encoding", "Content-Range", "Transfer-Encoding",
}

// CopyHeader copies src into dst with one allocation for all values, so
// that what one client's handler does to its header never reaches the
// stored copy or another client. The allocation has room for extra more
// values, which it returns.
func CopyHeader(dst, src http.Header, extra int) []string {
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

// DropStoredForwarding drops from h what a request whose answer may be
// stored never carries of its client's (neverStored): forwarding fields,
// fields with an underscore in their names, method overrides.
func DropStoredForwarding(h http.Header) { DropFields(h, neverStored) }

// Via is corral's pseudonym in Via headers (RFC 9110 section 7.6.3) and
// its cache name in Cache-Status (RFC 9211).
const Via = "1.1 corral"

// ConditionalOrRange reports whether h makes a request conditional or
// partial, so that the stored response must be tailored to it.
func ConditionalOrRange(h http.Header) bool {
	for _, f := range tailoring {
		if _, ok := h[f]; ok {
			return true
		}
	}
	return false
}

// FilterInterim drops from an interim response's fields what never leaves
// corral: hop-by-hop fields and Corral-Cache-Control.
func FilterInterim(h http.Header) {
	RemoveHopHeaders(h)
	delete(h, CorralOnly)
}

// PostStorable reports whether a POST sent upstream with header h may
// have its answer stored for later GETs: it carried no field that makes
// the answer one client's, a precondition or range, a method override,
// or a trusted proxy's X-Forwarded-Host or Forwarded.
func PostStorable(h http.Header) bool {
	if ConditionalOrRange(h) {
		return false
	}
	for _, list := range [][]string{methodOverrides, {"X-Forwarded-Host", "Forwarded"}} {
		for _, f := range list {
			if h[f] != nil {
				return false
			}
		}
	}
	return true
}

// Credentialed reports whether a request with header h carries
// credentials (Authorization, RFC 9110 section 11.6.2), as the freshness
// engine judges it (RFC 9111 section 3.5): its answer is shared only with
// requests that carry the same, and never with another replica.
func Credentialed(h http.Header) bool { return h.Get("Authorization") != "" }
