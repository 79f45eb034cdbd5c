package respond

import (
	"maps"
	"net/http"
	"net/textproto"
	"sync"

	"corral/proxy/internal/httprule"
)

// Interim passes the interim responses (RFC 9110 section 15.2) of a shared
// fetch, 103 Early Hints say, on to the client whose request led it, and
// to no one else: the others waited on the fetch, and the stored response
// keeps no trace of them. The fetch runs on a goroutine of its own, so
// writes hold a lock, and stop once the leader's handler goes on without
// the fetch (Close). Write is an httptrace.ClientTrace's Got1xxResponse.
type Interim struct {
	mu     sync.Mutex
	w      http.ResponseWriter
	closed bool
}

// NewInterim returns the Interim that writes to w.
func NewInterim(w http.ResponseWriter) *Interim { return &Interim{w: w} }

func (iw *Interim) Write(code int, header textproto.MIMEHeader) error {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	if iw.closed || code == http.StatusSwitchingProtocols {
		return nil
	}
	// net/http sends the fields of w's header with a 1xx, and keeps
	// them for the final answer: the fields set on it before the flight
	// (a chunked request's Connection: close) are put aside while the
	// interim answer is written, and back afterwards.
	h := iw.w.Header()
	kept := h.Clone()
	clear(h)
	for k, vs := range header {
		h[k] = append([]string(nil), vs...)
	}
	httprule.FilterInterim(h)
	iw.w.WriteHeader(code)
	clear(h)
	maps.Copy(h, kept)
	return nil
}

// Close stops the writes: net/http's transport may still deliver interim
// responses it had read when the fetch ended, and none may reach w once
// the handler writes to it.
func (iw *Interim) Close() {
	iw.mu.Lock()
	iw.closed = true
	iw.mu.Unlock()
}
