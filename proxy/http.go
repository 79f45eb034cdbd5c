package proxy

import (
	"net/http"
	"net/textproto"
	"slices"
	"sort"
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

// varyKey joins the request's values for names, each normalised as RFC 9111
// section 4.1 allows: field lines combined, white space around list
// separators dropped.
func varyKey(names []string, h http.Header) string {
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		b.WriteByte(':')
		for i, v := range h.Values(name) {
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
