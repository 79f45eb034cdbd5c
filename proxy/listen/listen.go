// Package listen bounds what clients can hold of a server through its
// listener: a connection whose peer stopped reading (WriteTimeout), and
// the connections open at once (Limit), past which one that holds its slot
// without a request makes room for a new one.
package listen

import (
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// WriteTimeout returns ln with every connection it accepts
// disconnected once its peer has accepted no bytes for d (at most 1.5 d):
// a Write moves the connection's write deadline on when it is less than d
// ahead, to 1.5 d ahead, and so does every byte the peer takes during a
// Write. Unlike http.Server's WriteTimeout, which bounds a whole response,
// this caps neither a long download nor a stream, only a client that
// stopped reading and would otherwise hold its goroutine, its connection
// and what its answer is written from, for ever. A d of zero or less
// returns ln.
func WriteTimeout(ln net.Listener, d time.Duration) net.Listener {
	if d <= 0 {
		return ln
	}
	return &writeTimeoutListener{Listener: ln, d: d}
}

type writeTimeoutListener struct {
	net.Listener
	d time.Duration
}

func (l *writeTimeoutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeTimeoutConn{Conn: c, d: l.d}, nil
}

// writeTimeoutConn is one connection of a writeTimeoutListener. It is
// allocated once per connection. A Write costs a clock read, and a
// deadline update only when the deadline set is less than d ahead: on a
// connection kept alive, one in d/2 or so however many answers it
// carries, where setting the deadline on every Write was 3% of a hot hit.
type writeTimeoutConn struct {
	net.Conn
	d        time.Duration
	deadline atomic.Int64 // the write deadline set, in Unix nanoseconds
}

func (c *writeTimeoutConn) Write(b []byte) (int, error) {
	written := 0
	for {
		now := time.Now()
		if c.deadline.Load()-now.UnixNano() < int64(c.d) {
			next := now.Add(c.d + c.d/2)
			if err := c.Conn.SetWriteDeadline(next); err != nil {
				return written, err
			}
			c.deadline.Store(next.UnixNano())
		}
		n, err := c.Conn.Write(b[written:])
		written += n
		if err != nil && n > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			continue // the peer is slow, not gone: it took bytes within d
		}
		return written, err
	}
}

// CloseWrite lets http.Server half-close the connection before closing it,
// as it does on a bare TCP connection, so that a client still sending gets
// its answer rather than a reset.
func (c *writeTimeoutConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// headerGrace is how long a connection may wait for its request's header
// to arrive whole before it may be closed to make room at the cap: a
// client that connects to send a request sends it within a round trip,
// and a header, of at most -max-header-bytes, within a few.
const headerGrace = time.Second

// Limit returns ln accepting at most n connections at once, as nginx's
// worker_connections caps its own: each connection costs a goroutine, its
// buffers and what it is being written, so that the cap bounds what all of
// them cost. Past it, a client that connects makes room by the closing of
// a connection that holds a slot without a request, in this order:
//
//  1. one accepted more than headerGrace ago whose first request's header
//     has not arrived whole, the oldest first: silent or trickling, it has
//     never served a request, and connecting and sending nothing is the
//     cheapest way to hold a slot, until the server's header timeout
//     (10 s in corral);
//  2. one kept alive between requests, of which nothing of the next has
//     arrived, the one idle the longest first, as nginx reclaims keep-alive
//     connections: a client that opens connections and leaves them idle
//     cannot lock the others out (issue 23);
//  3. one kept alive whose next request's header began to arrive more than
//     headerGrace ago and has not arrived whole (a slowloris), the one
//     begun the earliest first.
//
// A connection busy with a request is never closed, nor one whose header
// began to arrive within headerGrace: a request under way is not cut. A
// new connection has headerGrace even if silent, so that newcomers at the
// cap do not close each other before their requests arrive. With none to
// close, Accept waits for a connection to close, to go idle (it is closed
// then) or to outlast its grace; the next clients wait in the kernel's
// listen queue. So at the cap a newcomer waits at most about headerGrace,
// unless every connection has its request whole and is serving it.
//
// The server must report its connections' states to ConnState
// (http.Server.ConnState) for any to be closed; without, Accept only
// waits. An n of zero or less returns ln.
func Limit(ln net.Listener, n int) net.Listener {
	if n <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{}), now: time.Now}
}

type limitListener struct {
	net.Listener
	slots     chan struct{} // one per open connection
	closeOnce sync.Once
	closed    chan struct{}
	now       func() time.Time

	// The connections that may be closed to make room, each in the order
	// it entered: reclaim looks at their heads only.
	mu       sync.Mutex
	fresh    queue // accepted, first request's header not yet whole
	idle     queue // kept alive, nothing of the next request read
	arriving queue // kept alive, the next request's header arriving
	waiting  bool  // an Accept waits for a slot
}

func (l *limitListener) Accept() (net.Conn, error) {
	// Accepted first, so that room is made only for a client that is
	// there: at most one connection past the cap, while it waits.
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := l.acquire(); err != nil {
		c.Close()
		return nil, err
	}
	return &limitConn{Conn: c, l: l}, nil
}

// acquire takes a slot: a free one, or the one freed by closing the
// connection that reclaimLocked picks. With none to pick, it waits for a
// slot to free, a connection to go idle (which ConnState closes), or the
// first one to outlast its grace.
func (l *limitListener) acquire() error {
	for {
		select {
		case l.slots <- struct{}{}:
			return nil
		default:
		}
		now := l.now()
		l.mu.Lock()
		victim, due := l.reclaimLocked(now)
		l.waiting = victim == nil
		l.mu.Unlock()
		if victim != nil {
			victim.Close() // frees its slot
			continue
		}
		if got, err := l.wait(due, now); got || err != nil {
			return err
		}
	}
}

// wait waits for a slot, or until due unless it is zero, and says whether
// it took one.
func (l *limitListener) wait(due, now time.Time) (bool, error) {
	var grace <-chan time.Time
	if !due.IsZero() {
		t := time.NewTimer(due.Sub(now))
		defer t.Stop()
		grace = t.C
	}
	select {
	case l.slots <- struct{}{}:
		l.mu.Lock()
		l.waiting = false
		l.mu.Unlock()
		return true, nil
	case <-grace:
		return false, nil
	case <-l.closed:
		return false, net.ErrClosed
	}
}

// reclaimLocked picks, with mu held, the connection to close to make room,
// in Limit's order, and takes it out of the queues. When none may be
// closed yet, it returns nil and when the first will be (zero if none will
// before its state changes).
func (l *limitListener) reclaimLocked(now time.Time) (victim *limitConn, due time.Time) {
	if m, ok := l.fresh.head(); ok {
		if due = m.at.Add(headerGrace); !now.Before(due) {
			return l.fresh.take(), time.Time{}
		}
	}
	if _, ok := l.idle.head(); ok {
		return l.idle.take(), time.Time{}
	}
	if m, ok := l.arriving.head(); ok {
		d := m.at.Add(headerGrace)
		if !now.Before(d) {
			return l.arriving.take(), time.Time{}
		}
		if due.IsZero() || d.Before(due) {
			due = d
		}
	}
	return nil, due
}

// ConnState is for http.Server.ConnState: it tells the listener which of
// its connections wait for a request, since when, and closes one that
// goes idle while an Accept waits for a slot.
func (l *limitListener) ConnState(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitConn)
	if !ok {
		return
	}
	lc.quiet.Store(state == http.StateIdle)
	l.mu.Lock()
	lc.moved++
	switch state {
	case http.StateNew:
		l.fresh.push(lc, l.now(), len(l.slots))
	case http.StateIdle:
		if l.waiting {
			l.waiting = false // one is enough
			l.mu.Unlock()
			lc.Close()
			return
		}
		l.idle.push(lc, l.now(), len(l.slots))
	}
	l.mu.Unlock()
}

// heard moves c, kept alive, from the idle connections to those whose
// request is arriving, on the first byte of it read.
func (l *limitListener) heard(c *limitConn) {
	l.mu.Lock()
	if c.quiet.Load() {
		c.quiet.Store(false)
		c.moved++
		l.arriving.push(c, l.now(), len(l.slots))
	}
	l.mu.Unlock()
}

// forget drops c from the queues, once it is closed.
func (l *limitListener) forget(c *limitConn) {
	l.mu.Lock()
	c.moved++
	l.mu.Unlock()
}

// Close ends an Accept that waits for a slot, too.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// queue holds connections in the order they entered a state. An entry is
// out of date once its connection has moved on, to another state or
// queue, or closed; out-of-date entries are dropped when they reach the
// head, or all at once when they outnumber the open connections, so that
// a queue holds at most about twice as many entries as there are
// connections however fast they come and go. Its methods need mu held.
type queue []entry

type entry struct {
	c     *limitConn
	moved uint64    // c.moved when it entered
	at    time.Time // when
}

func (q *queue) push(c *limitConn, at time.Time, open int) {
	if len(*q) > 2*open+64 {
		*q = slices.DeleteFunc(*q, func(e entry) bool { return e.moved != e.c.moved })
	}
	*q = append(*q, entry{c, c.moved, at})
}

// head returns the first entry that is up to date, dropping those before it.
func (q *queue) head() (entry, bool) {
	for len(*q) > 0 {
		if e := (*q)[0]; e.moved == e.c.moved {
			return e, true
		}
		q.drop()
	}
	return entry{}, false
}

// take removes the head, which head found up to date, and returns its
// connection, out of date everywhere now.
func (q *queue) take() *limitConn {
	c := (*q)[0].c
	c.moved++
	q.drop()
	return c
}

func (q *queue) drop() {
	(*q)[0] = entry{} // for the connection to be collected once closed
	*q = (*q)[1:]
}

// limitConn is one connection of a limitListener: closing it frees its slot,
// once.
type limitConn struct {
	net.Conn
	l     *limitListener
	once  sync.Once
	quiet atomic.Bool // idle, and no byte of the next request read yet
	moved uint64      // how often it changed state or queue; under l.mu
}

// Read tells the listener when the next request of a connection kept
// alive begins to arrive; otherwise it costs an atomic load. What the
// server read before the connection went idle is not seen: a client that
// pipelines, and stops mid-header of a request sent with the one before,
// looks idle.
func (c *limitConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.quiet.Load() {
		c.l.heard(c)
	}
	return n, err
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.forget(c)
		<-c.l.slots
	})
	return err
}

// CloseWrite passes http.Server's half-close on, as writeTimeoutConn does.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
