package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
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
	uploads *uploads
	max     int64
	timeout time.Duration
}

// uploads are the request bodies being read, so that one that stalled can
// give its room up to a new one that needs it (makeRoom): one client from
// five addresses, each within its share, held uploads one byte short of
// their end until the request bodies' budget was spent, and every other
// upload got 503 until -request-body-timeout (issue 23). A stalled reader
// of an answer gives its room up the same way (body.Unstored).
type uploads struct {
	budget  *body.Budget // the request bodies' budget
	minRate int64        // bytes a second an upload must average to keep its room; 0: any
	now     func() time.Time

	mu sync.Mutex
	m  map[*upload]struct{}
}

// upload is one request body being read.
type upload struct {
	bytes atomic.Int64 // received so far
	last  atomic.Int64 // when its last byte arrived, in Unix nanoseconds
	cut   func()       // ends its read, which then fails and gives its room back

	// The window its rate is taken over: from prev, a stallGrace or
	// more ago once it has run that long, to now. mark becomes prev
	// when it is a stallGrace old.
	mu                   sync.Mutex
	prev, mark           time.Time
	prevBytes, markBytes int64
}

// received notes n more bytes at now.
func (up *upload) received(n int, now time.Time) {
	total := up.bytes.Add(int64(n))
	up.last.Store(now.UnixNano())
	up.mu.Lock()
	if now.Sub(up.mark) >= stallGrace {
		up.prev, up.prevBytes = up.mark, up.markBytes
		up.mark, up.markBytes = now, total
	}
	up.mu.Unlock()
}

// stalled reports whether up, at now, received nothing for stallGrace, or
// less than minRate a second over its last second or two, once it has
// run that long: a client that trickles a byte now and then holds its
// room as surely as one that stopped, and one that sent most of its body
// at once and then drips must not live off that start.
func (up *upload) stalled(now time.Time, minRate int64) bool {
	if now.Sub(time.Unix(0, up.last.Load())) >= stallGrace {
		return true
	}
	up.mu.Lock()
	from, fromBytes := up.prev, up.prevBytes
	if now.Sub(up.mark) >= stallGrace {
		from, fromBytes = up.mark, up.markBytes
	}
	up.mu.Unlock()
	took := now.Sub(from)
	return took >= stallGrace && float64(up.bytes.Load()-fromBytes) < float64(minRate)*took.Seconds()
}

// stallGrace is how long an upload may receive nothing and keep its room
// when another needs it.
const stallGrace = time.Second

func newUploads(budget *body.Budget, minRate int64, now func() time.Time) *uploads {
	u := &uploads{budget: budget, minRate: minRate, now: now, m: make(map[*upload]struct{})}
	budget.SetMakeRoom(u.makeRoom)
	return u
}

// makeRoom cuts the uploads that stalled (upload.stalled), and
// waits (a second at most) for them to give back room for n bytes; it
// reports whether they did.
func (u *uploads) makeRoom(n int64) bool {
	now := u.now()
	var stalled []*upload
	u.mu.Lock()
	for up := range u.m {
		if up.stalled(now, u.minRate) {
			stalled = append(stalled, up)
			delete(u.m, up)
		}
	}
	u.mu.Unlock()
	if len(stalled) == 0 {
		return false
	}
	for _, up := range stalled {
		up.cut()
	}
	fits := func() bool { return u.budget.InUse()+n <= u.budget.Limit() }
	for deadline := time.Now().Add(time.Second); !fits() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // their readers return on their own goroutines
	}
	return fits()
}

// start registers r's body as an upload being read, its progress seen
// through the body it returns; done unregisters it.
func (u *uploads) start(r *http.Request, rc *http.ResponseController) (rd io.ReadCloser, done func()) {
	start := u.now()
	up := &upload{prev: start, mark: start}
	up.last.Store(start.UnixNano())
	orig := r.Body
	up.cut = func() {
		if rc.SetReadDeadline(time.Now()) != nil {
			orig.Close() // no connection to set a deadline on: in process
		}
	}
	u.mu.Lock()
	u.m[up] = struct{}{}
	u.mu.Unlock()
	return &progressBody{ReadCloser: orig, up: up, now: u.now}, func() {
		u.mu.Lock()
		delete(u.m, up)
		u.mu.Unlock()
	}
}

// progressBody notes when each byte of an upload arrives.
type progressBody struct {
	io.ReadCloser
	up  *upload
	now func() time.Time
}

func (b *progressBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.up.received(n, b.now())
	}
	return n, err
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
	rc := http.NewResponseController(w)
	var done func()
	r.Body, done = rb.uploads.start(r, rc)
	bb, err := body.ReadRequest(r, rc, &share.Budget, rb.max, rb.timeout)
	done()
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
	held := body.NewHeld(b)
	var once sync.Once
	release = func() {
		once.Do(func() {
			held.Drop() // no reference left to the bytes: the room is theirs
			bb.Release()
			rb.shares.Release(share)
		})
	}
	if len(b) > 0 {
		// Once it has gone upstream whole, the body gives its room back,
		// however long the origin takes to answer; a retry of the
		// request after that fails rather than send it cut short.
		r.Body = held.Reader(release)
		r.GetBody = func() (io.ReadCloser, error) { return held.Reader(release), nil }
	}
	return release, outNone
}
