// Package respond writes corral's answers: a stored response (the fresh
// hit, with its one allocation), tailored to a conditional or ranged
// request; a body streamed to a herd; corral's own errors and 503s; the
// interim answers of a shared fetch to its leader; each with Via and a
// Cache-Status.
package respond

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
	"corral/proxy/upstream"
)

// Result is what became of an answer from a stored response.
type Result uint8

const (
	Served Result = iota // written, whole
	Busy                 // answered 503: its body is large, the store let go of it, and the budget has no room for it
	Cut                  // cut short: the body was let go of while it was written
)

// Entry writes e to w with header h, which is copied: the stored header is
// never handed to a client. A body of body.LargeBody or more is written a
// chunk at a time from its ref, held (by the store, or within unstored's
// room) while it is written.
func Entry(w http.ResponseWriter, r *http.Request, e *stored.Entry, h http.Header, st cachestatus.Status, now time.Time, unstored *body.Unstored) Result {
	ref := e.Ref()
	if ref != nil && r.Method != http.MethodHead && httprule.BodyAllowed(e.Status) {
		if !unstored.Enter(ref) {
			Busy503(w, time.Second, cachestatus.Status{Detail: cachestatus.BuffersFull})
			return Busy
		}
		defer unstored.Leave(ref)
	} else {
		ref = nil
	}
	out := w.Header()
	// The fields set below share the one allocation of the copy; each
	// gets a slice capped at its one value, so an append to one cannot
	// reach another.
	vals := httprule.CopyHeader(out, h, 4)
	set := func(k, v string) {
		vals[0] = v
		out[k], vals = vals[:1:1], vals[1:]
	}
	st.Field, st.Rule = e.DecidedBy()
	f := e.Fields(st, now)
	// Age goes on whatever the cache served, and on fetched responses
	// that arrived with an age of their own (RFC 9111 section 5.1).
	if st.Hit || st.FwdStatus == 0 || st.Detail == cachestatus.StaleIfError || f.Age > 0 {
		set("Age", f.AgeText)
	}
	if vs := out["Via"]; len(vs) > 0 {
		out["Via"] = append(vs, httprule.Via) // vs is capped: this copies
	} else {
		set("Via", httprule.Via)
	}
	set("Cache-Status", f.Status)
	if e.Status == http.StatusOK && httprule.ConditionalOrRange(r.Header) {
		// Preconditions (RFC 9110 section 13) and ranges (section 14)
		// against the stored response, as net/http's file server does.
		if _, ok := out["Content-Type"]; !ok {
			out["Content-Type"] = nil // keep ServeContent from sniffing one
		}
		modtime, _ := http.ParseTime(h.Get("Last-Modified"))
		if modtime.IsZero() && notModifiedSinceDate(r, h, e.Decision.ResponseTime) {
			writeNotModified(w)
			return Served
		}
		if ref == nil {
			http.ServeContent(w, r, "", modtime, bytes.NewReader(e.Body))
			return Served
		}
		rd := body.NewRefReader(ref)
		http.ServeContent(w, r, "", modtime, rd)
		return result(rd)
	}
	if httprule.BodyAllowed(e.Status) {
		set("Content-Length", f.ContentLength)
	}
	w.WriteHeader(e.Status)
	switch {
	case ref != nil:
		// A chunk at a time, e no longer used: a client that stalls
		// holds a chunk, not the body (see body.Ref).
		rd := body.NewRefReader(ref)
		io.Copy(w, rd) //nolint:errcheck // the client may have gone
		return result(rd)
	case r.Method != http.MethodHead && httprule.BodyAllowed(e.Status):
		w.Write(e.Body) //nolint:errcheck // the client may have gone
	}
	return Served
}

// result is Cut when the body read through rd was cut, else Served.
func result(rd *body.RefReader) Result {
	if rd.Cut() {
		return Cut
	}
	return Served
}

// notModifiedSinceDate answers If-Modified-Since for a stored response
// without Last-Modified: RFC 9111 section 4.3.2 says to compare with its
// Date, or the time it was received. net/http's ServeContent would do it
// only given a modification time, which it then sends as Last-Modified.
// If-None-Match, when present, decides instead (RFC 9110 section 13.1.3).
func notModifiedSinceDate(r *http.Request, h http.Header, received time.Time) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead || r.Header["If-None-Match"] != nil {
		return false
	}
	ims, err := http.ParseTime(r.Header.Get("If-Modified-Since"))
	if err != nil {
		return false
	}
	date, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		date = received
	}
	return !date.Truncate(time.Second).After(ims)
}

// writeNotModified answers 304 with the stored fields that describe the
// response rather than its body (RFC 9110 section 15.4.5).
func writeNotModified(w http.ResponseWriter) {
	h := w.Header()
	for _, f := range []string{"Content-Type", "Content-Length", "Content-Encoding"} {
		delete(h, f)
	}
	w.WriteHeader(http.StatusNotModified)
}

// Streamed writes an answer with status and header h, whose body, of the
// declared length (-1 when unknown), is read from rd, nil for none (a
// HEAD). It returns why the body ended short: the client must then see it
// cut, never a complete-looking one.
func Streamed(w http.ResponseWriter, status int, h http.Header, st cachestatus.Status, length int64, rd io.Reader) error {
	out := w.Header()
	httprule.CopyHeader(out, h, 0)
	out["Via"] = append(out["Via"], httprule.Via)
	out.Set("Cache-Status", st.String())
	if length >= 0 && httprule.BodyAllowed(status) {
		out.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	w.WriteHeader(status)
	if rd == nil {
		return nil
	}
	_, err := io.Copy(w, rd)
	return err
}

// Busy503 answers 503 with a Retry-After of retry, in whole seconds, up.
func Busy503(w http.ResponseWriter, retry time.Duration, st cachestatus.Status) {
	secs := (retry + time.Second - 1) / time.Second
	w.Header().Set("Retry-After", strconv.FormatInt(int64(secs), 10))
	Status(w, http.StatusServiceUnavailable, st)
}

// Status answers with status and its text, for errors corral makes.
func Status(w http.ResponseWriter, status int, st cachestatus.Status) {
	h := w.Header()
	h.Set("Cache-Status", st.String())
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Add("Via", httprule.Via)
	w.WriteHeader(status)
	fmt.Fprintln(w, http.StatusText(status))
}

// Failure maps an upstream exchange that failed with err, shared
// fetch or passed-through request, to corral's own answer: 503 when the
// upstream guard held it back (busy says for how long), 504 when the
// origin took longer than UpstreamTimeout, 502 for anything else.
func Failure(err error) (status int, d cachestatus.Detail, busy *upstream.BusyError) {
	switch {
	case errors.As(err, &busy):
		return http.StatusServiceUnavailable, cachestatus.UpstreamBusy, busy
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, cachestatus.UpstreamTimeout, nil
	}
	return http.StatusBadGateway, cachestatus.UpstreamError, nil
}
