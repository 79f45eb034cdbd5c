package proxy

import (
	"net/http"
)

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
