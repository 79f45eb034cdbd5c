package httprule

import (
	"corral/proxy/internal/cachestatus"
	"net/http"
	"net/textproto"
	"strings"
)

// AboutTheRequest reports whether an answer with status may speak of the
// request that got it rather than of the resource: of its credentials
// (401, 403, 407), its quota (429), its form or size (400, 406, 411, 413,
// 414, 417, 421, 422, 431), or a failure that one of its fields can cause
// as readily as an outage can (5xx). An origin answers such a status to one
// client's API key, cookie or odd field while it serves everyone else, so
// it is never handed to requests that differ from the one it answered.
func AboutTheRequest(status int) bool {
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

// MayStore reports whether the answer to r may be stored or shared.
func MayStore(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Header["Upgrade"] == nil && r.ContentLength == 0
}

// Bypass returns why r goes straight upstream without the cache, as a
// Cache-Status fwd and detail, or "" when the cache handles it.
func Bypass(r *http.Request) (cachestatus.Fwd, cachestatus.Detail) {
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		return cachestatus.FwdMethod, ""
	case r.Header["Upgrade"] != nil:
		return cachestatus.FwdBypass, cachestatus.Upgrade
	case r.ContentLength != 0:
		// A GET with a body has no meaning HTTP defines (RFC 9110
		// section 9.3.1), but some origins read it, so the answer may
		// depend on it: never shared or stored, nor shared with.
		return cachestatus.FwdBypass, cachestatus.RequestBody
	}
	return "", ""
}

// WebSocketUpgrade reports whether Upgrade asks for WebSocket alone
// (RFC 6455 section 4.1).
func WebSocketUpgrade(values []string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if !strings.EqualFold(textproto.TrimString(f), "websocket") {
				return false
			}
		}
	}
	return true
}

func IsServerError(status int) bool {
	switch status {
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func BodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// SafeMethod reports whether m is safe (RFC 9110 section 9.2.1): only
// unsafe methods invalidate.
func SafeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}
