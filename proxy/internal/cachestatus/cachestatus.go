// Package cachestatus writes corral's Cache-Status field values (RFC
// 9211): whether the cache answered a request or why it went upstream,
// what the origin answered, and why a response was not stored or how a
// stale one came to be served.
package cachestatus

import (
	"strconv"
	"strings"
	"time"

	"corral/freshness"
)

// Status is one Cache-Status field value (RFC 9211 section 2). Its
// fields are ordered to pack: every hit compares one.
type Status struct {
	Fwd       Fwd    // why the request went upstream; "" when it did not
	Detail    Detail // why the response was not stored, or how a stale one was served
	FwdStatus int    // what upstream answered; 0 when it was not asked
	TTL       time.Duration
	Hit       bool
	Stored    bool
	Collapsed bool
	HasTTL    bool

	// What decided the response's freshness, when not Cache-Control:
	// corral's extension parameters (RFC 9211 section 2 allows them).
	Field freshness.Source // corral-field: the targeted field the origin sent (FromCDN, FromCorral)
	Rule  string           // corral-rule: the operator's rule, by its prefix
}

// Fwd is a Cache-Status fwd parameter (RFC 9211 section 2.2): why a
// request went upstream.
type Fwd string

const (
	FwdURIMiss  Fwd = "uri-miss"  // nothing stored for the URI
	FwdVaryMiss Fwd = "vary-miss" // the URI varies, and nothing is stored for this variant
	FwdMiss     Fwd = "miss"      // the URI's answers cannot be stored or shared (a pass mark)
	FwdStale    Fwd = "stale"     // the stored response must be validated
	FwdMethod   Fwd = "method"    // a method whose answer is never stored
	FwdBypass   Fwd = "bypass"    // a request the cache stays out of (an upgrade, a body)
	FwdRequest  Fwd = "request"   // the client asked for a fresher answer, or sent a body corral refused
)

// Detail is a Cache-Status detail parameter (RFC 9211 section 2.8): a
// token that says why a response was not stored, how a stale one came to
// be served, or why corral answered itself. A response that freshness
// judged unstorable or unshareable gives its Decision.Reason as the
// detail instead.
type Detail string

const (
	// How a stored response came to answer.
	RevalidatedRecently  Detail = "revalidated-recently"   // validated moments ago: fresh enough for a no-cache
	RevalidationFailed   Detail = "revalidation-failed"    // a fresher one was asked for, but validating failed moments ago
	StaleWhileRevalidate Detail = "stale-while-revalidate" // served stale while a background refresh runs (RFC 5861 section 3)
	StaleIfError         Detail = "stale-if-error"         // served stale in place of an origin failure (RFC 5861 section 4)
	SharedTier           Detail = "shared-tier"            // found in the tier the fleet shares, fetched by another replica

	// Why a request went upstream on its own, or its answer was not stored.
	Uncacheable    Detail = "uncacheable"      // the URI's answers cannot be shared (a pass mark)
	Upgrade        Detail = "upgrade"          // a WebSocket upgrade
	RequestBody    Detail = "request-body"     // a GET or HEAD with a body
	Range          Detail = "range"            // a range request with nothing stored
	RequestNoStore Detail = "request-no-store" // the client sent no-store
	TooLarge       Detail = "too-large"        // the body is larger than MaxObjectBytes
	BuffersFull    Detail = "buffers-full"     // the buffer budget is spent for now

	// Why corral answered itself.
	UpstreamBusy     Detail = "upstream-busy"      // the upstream guard held the request back: 503
	UpstreamTimeout  Detail = "upstream-timeout"   // the origin took longer than UpstreamTimeout: 504
	UpstreamError    Detail = "upstream-error"     // the exchange with the origin failed: 502
	OnlyIfCached     Detail = "only-if-cached"     // nothing usable stored for only-if-cached: 504
	BadRequestTarget Detail = "bad-request-target" // 400
	RequestTooLarge  Detail = "request-too-large"  // 413
	RequestTimeout   Detail = "request-timeout"    // 408
	BadRequestBody   Detail = "bad-request-body"   // 400
)

func (s Status) String() string {
	var b strings.Builder
	b.Grow(64 + len(s.Rule)) // one allocation
	var num [20]byte         // numbers are formatted here, not on the heap
	b.WriteString("corral")
	if s.Hit {
		b.WriteString("; hit")
	}
	if s.Fwd != "" {
		b.WriteString("; fwd=")
		b.WriteString(string(s.Fwd))
	}
	if s.FwdStatus != 0 {
		b.WriteString("; fwd-status=")
		b.Write(strconv.AppendInt(num[:0], int64(s.FwdStatus), 10))
	}
	if s.Stored {
		b.WriteString("; stored")
	}
	if s.Collapsed {
		b.WriteString("; collapsed")
	}
	if s.HasTTL {
		b.WriteString("; ttl=")
		b.Write(strconv.AppendInt(num[:0], int64(s.TTL/time.Second), 10))
	}
	if s.Detail != "" {
		b.WriteString("; detail=")
		b.WriteString(string(s.Detail))
	}
	if s.Field == freshness.FromCDN || s.Field == freshness.FromCorral {
		b.WriteString("; corral-field=")
		b.WriteString(s.Field.String())
	}
	if s.Rule != "" {
		// An sf-string (RFC 8941 section 3.3.3) needs no escapes: a
		// rule's prefix holds no quote, backslash or control byte.
		b.WriteString(`; corral-rule="`)
		b.WriteString(s.Rule)
		b.WriteByte('"')
	}
	return b.String()
}
