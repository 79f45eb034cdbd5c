package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"corral/proxy/internal/cachestatus"
	"corral/proxy/upstream"
)

var (
	// errBodyTimeout ends a request body that did not arrive within
	// RequestBodyTimeout.
	errBodyTimeout = errors.New("request body not received in time")
	// errBodyLength ends a request body whose length is not the one its
	// Content-Length declared.
	errBodyLength = errors.New("request body length differs from its Content-Length")
)

// hasBody reports whether r comes with a request body: a declared length,
// or chunked (or, over HTTP/2, an unknown length).
func hasBody(r *http.Request) bool {
	return r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody
}

// bufferRequestBody reads r's body into memory before r goes anywhere, as
// nginx's request buffering does: a client that trickles its body then
// holds a goroutine and its share of the buffer budget, never an upstream
// slot or an origin connection. The body goes upstream with its length
// known, and can be sent again if the transport retries.
//
// It answers the client itself and returns nil, with the outcome, when
// the body is refused:
// 413 past MaxRequestBodyBytes (RFC 9110 section 15.5.14), 408 past
// RequestBodyTimeout (section 15.5.9), 400 for a body cut short or badly
// framed (section 15.5.1; RFC 9112 section 6.3), 503 when the buffer
// budget cannot hold it now. Each of these closes the connection: the
// unread rest of the body must not be taken for the next request. The
// caller releases the returned buffer once r has been answered.
func (p *Proxy) bufferRequestBody(w http.ResponseWriter, r *http.Request) (*bodyBuffer, requestOutcome) {
	if len(r.TransferEncoding) > 0 {
		// RFC 9112 section 6.1: a request with both Content-Length and
		// Transfer-Encoding may be an attempt at request smuggling, and
		// its connection must be closed after the answer. Go's server
		// drops Content-Length when the body is chunked, so whether it
		// came too cannot be seen here: close after every chunked
		// request body. They are rare, and closing is always allowed.
		w.Header().Set("Connection", "close")
	}
	// A connection's deadline is wall-clock time, whatever Config.Now
	// says. It stays set when the body is refused: after the handler the
	// server reads on to the end of a body that is not too long, and a
	// client that stalls must not hold it there.
	rc := http.NewResponseController(w)
	onConn := rc.SetReadDeadline(time.Now().Add(p.bodyTimeout)) == nil
	bb := &bodyBuffer{budget: p.requestBuffers, limit: p.maxRequestBody}
	err := errTooLarge
	if r.ContentLength <= p.maxRequestBody {
		// The declared length is not reserved up front: a client must
		// send its bytes to hold the budget.
		err = p.readRequestBody(r, bb, onConn)
	}
	if err == nil && r.ContentLength > 0 && int64(len(bb.buf)) != r.ContentLength {
		err = errBodyLength // a server checks this; a handler called in-process may not
	}
	if err != nil {
		bb.release()
		w.Header().Set("Connection", "close")
		st := cachestatus.Status{Fwd: cachestatus.FwdRequest}
		switch {
		case errors.Is(err, errBuffersFull):
			st.Detail = cachestatus.BuffersFull
			return nil, p.serveBusy(w, &upstream.BusyError{RetryAfter: time.Second, Why: "buffer budget spent"}, st)
		case errors.Is(err, errTooLarge):
			st.Detail = cachestatus.RequestTooLarge
			p.serveStatus(w, http.StatusRequestEntityTooLarge, st)
		case errors.Is(err, errBodyTimeout):
			st.Detail = cachestatus.RequestTimeout
			p.serveStatus(w, http.StatusRequestTimeout, st)
		default:
			st.Detail = cachestatus.BadRequestBody
			p.serveStatus(w, http.StatusBadRequest, st)
		}
		return nil, outRejected
	}
	if onConn {
		// Lift the deadline: once the body is in, the server reads the
		// connection in the background to notice a client that leaves,
		// and a deadline passing then would cancel the request.
		rc.SetReadDeadline(time.Time{}) //nolint:errcheck // it was set above
	}
	body := bb.buf
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Body = http.NoBody
	r.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	if len(body) > 0 {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return bb, outNone
}

// readRequestBody reads r's body into bb within RequestBodyTimeout, which
// a deadline on the connection enforces when onConn says one is set.
func (p *Proxy) readRequestBody(r *http.Request, bb *bodyBuffer, onConn bool) error {
	if onConn {
		err := bb.readFrom(r.Body, 0)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errBodyTimeout
		}
		return err
	}
	// No connection to set a deadline on: a handler called in-process,
	// or a ResponseWriter that hides its connection. Closing the body
	// when the time is up ends a read blocked on an io.Pipe, as a
	// deadline would.
	t := time.AfterFunc(p.bodyTimeout, func() { r.Body.Close() })
	err := bb.readFrom(r.Body, 0)
	if !t.Stop() && err != nil {
		return errBodyTimeout
	}
	return err
}
