package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"time"

	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/respond"
)

// hasBody reports whether r comes with a request body: a declared length,
// or chunked (or, over HTTP/2, an unknown length).
func hasBody(r *http.Request) bool {
	return r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody
}

// requestBodies is how request bodies are read: at most max bytes each,
// within timeout, held against their client's share of the budget for
// request bodies (shares), so that one client holding uploads at a slow
// origin cannot turn away everyone else's (issue 23).
type requestBodies struct {
	shares  *body.Shares
	max     int64
	timeout time.Duration
}

// buffer reads r's body into memory before r goes anywhere, as
// nginx's request buffering does: a client that trickles its body then
// holds a goroutine and its share of the buffer budget, never an upstream
// slot or an origin connection. The body goes upstream with its length
// known, and can be sent again if the transport retries.
//
// It answers the client itself and returns nil, with the outcome, when
// the body is refused:
// 413 past MaxRequestBodyBytes (max) (RFC 9110 section 15.5.14), 408 past
// RequestBodyTimeout (timeout) (section 15.5.9), 400 for a body cut short or badly
// framed (section 15.5.1; RFC 9112 section 6.3), 503 when the share of
// the buffer budget of client, r's, cannot hold it now. Each of these
// closes the connection: the unread rest of the body must not be taken
// for the next request. The caller calls the returned release once r has
// been answered.
func (rb requestBodies) buffer(w http.ResponseWriter, r *http.Request, client netip.Addr) (release func(), _ requestOutcome) {
	if len(r.TransferEncoding) > 0 {
		// RFC 9112 section 6.1: a request with both Content-Length and
		// Transfer-Encoding may be an attempt at request smuggling, and
		// its connection must be closed after the answer. Go's server
		// drops Content-Length when the body is chunked, so whether it
		// came too cannot be seen here: close after every chunked
		// request body. They are rare, and closing is always allowed.
		w.Header().Set("Connection", "close")
	}
	share := rb.shares.Acquire(client)
	bb, err := body.ReadRequest(r, http.NewResponseController(w), &share.Budget, rb.max, rb.timeout)
	if err != nil {
		rb.shares.Release(share)
		w.Header().Set("Connection", "close")
		st := cachestatus.Status{Fwd: cachestatus.FwdRequest}
		switch {
		case errors.Is(err, body.ErrFull):
			st.Detail = cachestatus.BuffersFull
			respond.Busy503(w, time.Second, st)
			return nil, outBusy
		case errors.Is(err, body.ErrTooLarge):
			st.Detail = cachestatus.RequestTooLarge
			respond.Status(w, http.StatusRequestEntityTooLarge, st)
		case errors.Is(err, body.ErrTimeout):
			st.Detail = cachestatus.RequestTimeout
			respond.Status(w, http.StatusRequestTimeout, st)
		default:
			st.Detail = cachestatus.BadRequestBody
			respond.Status(w, http.StatusBadRequest, st)
		}
		return nil, outRejected
	}
	b := bb.Bytes()
	r.ContentLength = int64(len(b))
	r.TransferEncoding = nil
	r.Body = http.NoBody
	r.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	if len(b) > 0 {
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	return func() {
		bb.Release()
		rb.shares.Release(share)
	}, outNone
}
