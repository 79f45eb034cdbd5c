package proxy

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// cacheStatus is one Cache-Status field value (RFC 9211 section 2).
type cacheStatus struct {
	hit       bool
	fwd       string // why the request went upstream: uri-miss, vary-miss, miss, stale, method, bypass, request
	fwdStatus int    // what upstream answered; 0 when it was not asked
	stored    bool
	collapsed bool
	ttl       time.Duration
	hasTTL    bool
	detail    string // a token: why the response was not stored, or how a stale one was served
}

func (s cacheStatus) String() string {
	var b strings.Builder
	b.WriteString("corral")
	if s.hit {
		b.WriteString("; hit")
	}
	if s.fwd != "" {
		b.WriteString("; fwd=")
		b.WriteString(s.fwd)
	}
	if s.fwdStatus != 0 {
		b.WriteString("; fwd-status=")
		b.WriteString(strconv.Itoa(s.fwdStatus))
	}
	if s.stored {
		b.WriteString("; stored")
	}
	if s.collapsed {
		b.WriteString("; collapsed")
	}
	if s.hasTTL {
		b.WriteString("; ttl=")
		b.WriteString(strconv.FormatInt(int64(s.ttl/time.Second), 10))
	}
	if s.detail != "" {
		b.WriteString("; detail=")
		b.WriteString(s.detail)
	}
	return b.String()
}

// Stats counts what the proxy did. Every field only grows.
type Stats struct {
	Requests         atomic.Int64 // client requests
	Hits             atomic.Int64 // served fresh from the store
	StaleHits        atomic.Int64 // served stale while a background refresh ran
	StaleOnError     atomic.Int64 // served stale in place of an origin failure
	Coalesced        atomic.Int64 // answered by a flight another request started
	Passed           atomic.Int64 // sent upstream on their own, uncached
	Refreshes        atomic.Int64 // background refreshes started
	UpstreamRequests atomic.Int64 // cache fetches sent to the origin (passed requests not included)
	UpstreamErrors   atomic.Int64 // cache fetches that got no complete answer
}

type passKey struct{}

// passThrough sends r upstream on its own, streaming the answer back; the
// answer is neither stored nor shared. fwd is its Cache-Status reason.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, fwd string, detail string) {
	p.stats.Passed.Add(1)
	st := cacheStatus{fwd: fwd, detail: detail}
	p.pass.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), passKey{}, st)))
}

func (p *Proxy) modifyPassed(resp *http.Response) error {
	st, _ := resp.Request.Context().Value(passKey{}).(cacheStatus)
	st.fwdStatus = resp.StatusCode
	resp.Header.Add("Via", via)
	resp.Header.Set("Cache-Status", st.String())
	return nil
}

func (p *Proxy) passError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left
	}
	st, _ := r.Context().Value(passKey{}).(cacheStatus)
	status := http.StatusBadGateway
	if errors.Is(err, context.DeadlineExceeded) {
		status, st.detail = http.StatusGatewayTimeout, "upstream-timeout"
	}
	p.log.Warn("upstream request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Cache-Status", st.String())
	w.Header().Add("Via", via)
	http.Error(w, http.StatusText(status), status)
}
