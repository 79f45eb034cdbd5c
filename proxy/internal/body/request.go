package body

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

var (
	// ErrTimeout ends a request body that did not arrive in time.
	ErrTimeout = errors.New("request body not received in time")
	// ErrLength ends a request body whose length is not the one its
	// Content-Length declared.
	ErrLength = errors.New("request body length differs from its Content-Length")
)

// ReadRequest reads r's body into a buffer of at most limit bytes held
// against budget, within timeout: a read deadline on the connection, which
// rc sets, when it can, and otherwise the closing of the body when the time
// is up. The declared length is not reserved up front: a client must send
// its bytes to hold the budget. It fails with ErrTooLarge, ErrFull,
// ErrTimeout or ErrLength, or why the body could not be read; the deadline
// stays set when it fails (the server reads on to the end of a body that
// is not too long, and a client that stalls must not hold it there), and
// is lifted when it succeeds.
func ReadRequest(r *http.Request, rc *http.ResponseController, budget *Budget, limit int64, timeout time.Duration) (*Buffer, error) {
	// A connection's deadline is wall-clock time, whatever the proxy's
	// clock says.
	onConn := rc.SetReadDeadline(time.Now().Add(timeout)) == nil
	bb := NewBuffer(budget, limit)
	err := ErrTooLarge
	if r.ContentLength <= limit {
		err = readRequest(r, bb, onConn, timeout)
	}
	if err == nil && r.ContentLength > 0 && int64(len(bb.buf)) != r.ContentLength {
		err = ErrLength // a server checks this; a handler called in-process may not
	}
	if err != nil {
		bb.Release()
		return nil, err
	}
	if onConn {
		// Once the body is in, the server reads the connection in the
		// background to notice a client that leaves, and a deadline
		// passing then would cancel the request.
		rc.SetReadDeadline(time.Time{}) //nolint:errcheck // it was set above
	}
	return bb, nil
}

// readRequest reads r's body into bb within timeout, which a deadline on
// the connection enforces when onConn says one is set.
func readRequest(r *http.Request, bb *Buffer, onConn bool, timeout time.Duration) error {
	if onConn {
		err := bb.ReadAll(r.Body, 0)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return ErrTimeout
		}
		return err
	}
	// No connection to set a deadline on: a handler called in-process,
	// or a ResponseWriter that hides its connection. Closing the body
	// when the time is up ends a read blocked on an io.Pipe, as a
	// deadline would.
	t := time.AfterFunc(timeout, func() { r.Body.Close() })
	err := bb.ReadAll(r.Body, 0)
	if !t.Stop() && err != nil {
		return ErrTimeout
	}
	return err
}

// Held is a request body read into memory, which Drop lets go of.
// Readers of it share the bytes, each at its own offset; one that reads
// past what was let go fails (ErrDropped), rather than send a body cut
// short for whole.
type Held struct {
	mu sync.Mutex
	b  []byte
	n  int // len(b) before Drop
}

// ErrDropped fails a read of a held body that was let go of.
var ErrDropped = errors.New("request body already sent, and let go of")

// NewHeld returns b as a held body.
func NewHeld(b []byte) *Held { return &Held{b: b, n: len(b)} }

// Reader returns a reader of the body from its start; sent, if not nil,
// is called once it has read the body to its end.
func (h *Held) Reader(sent func()) io.ReadCloser { return &heldReader{h: h, sent: sent} }

// Drop lets go of the bytes.
func (h *Held) Drop() {
	h.mu.Lock()
	h.b = nil
	h.mu.Unlock()
}

type heldReader struct {
	h    *Held
	off  int
	sent func()
}

func (r *heldReader) Read(p []byte) (int, error) {
	r.h.mu.Lock()
	switch {
	case r.off >= r.h.n:
		r.h.mu.Unlock()
		if r.sent != nil {
			sent := r.sent
			r.sent = nil
			sent()
		}
		return 0, io.EOF
	case r.h.b == nil:
		r.h.mu.Unlock()
		return 0, ErrDropped
	}
	n := copy(p, r.h.b[r.off:])
	r.off += n
	r.h.mu.Unlock()
	return n, nil
}

func (r *heldReader) Close() error { return nil }
