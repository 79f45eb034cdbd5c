package respond

import "net/http"

// Logged notes the status and body size of a response, for the
// request log.
type Logged struct {
	http.ResponseWriter
	Status int
	Bytes  int64
}

func (w *Logged) WriteHeader(status int) {
	w.Status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *Logged) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.Bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and the rest.
func (w *Logged) Unwrap() http.ResponseWriter { return w.ResponseWriter }
