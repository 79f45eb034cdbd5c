// Package listen bounds what clients can hold of a server through its
// listener: a connection whose peer stopped reading (WriteTimeout), and
// the connections open at once (Limit), past which the longest-idle one
// makes room for a new one.
package listen

import (
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// WriteTimeout returns ln with every connection it accepts
// disconnected once its peer has accepted no bytes for d: each Write sets a
// write deadline d ahead, and moves it on while the peer takes bytes.
// Unlike http.Server's WriteTimeout, which bounds a whole response, this
// caps neither a long download nor a stream, only a client that stopped
// reading and would otherwise hold its goroutine, its connection and what
// its answer is written from, for ever. A d of zero or less returns ln.
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
// allocated once per connection; a Write costs a deadline update, no
// allocation.
type writeTimeoutConn struct {
	net.Conn
	d time.Duration
}

func (c *writeTimeoutConn) Write(b []byte) (int, error) {
	written := 0
	for {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.d)); err != nil {
			return written, err
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

// Limit returns ln accepting at most n connections at once, as
// nginx's worker_connections caps its own: each connection costs a
// goroutine, its buffers and what it is being written, so that the cap
// bounds what all of them cost. Past it, a client that connects makes
// room by the closing of the connection that has been idle between
// requests the longest, as nginx reclaims keep-alive connections: a client
// that opens connections and leaves them idle cannot lock the others out
// (issue 23). Only when every connection is busy does it wait for one to
// close or go idle, accepted; the next ones wait in the kernel's listen
// queue. The server must
// report its connections' states to ConnState (http.Server.ConnState) for
// idle ones to be found; without, Accept only waits. An n of zero or less
// returns ln.
func Limit(ln net.Listener, n int) net.Listener {
	if n <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{}), idle: make(map[*limitConn]struct{})}
}

type limitListener struct {
	net.Listener
	slots     chan struct{} // one per open connection
	closeOnce sync.Once
	closed    chan struct{}

	mu      sync.Mutex
	idle    map[*limitConn]struct{} // between requests, kept alive
	oldest  []*limitConn            // idle, the longest first; may hold ones no longer idle
	waiting bool                    // an Accept waits for a slot
}

func (l *limitListener) Accept() (net.Conn, error) {
	// Accepted first, so that room is made only for a client that is
	// there: at most one connection past the cap, while it waits.
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.slots <- struct{}{}:
	default:
		l.mu.Lock()
		victim := l.reclaimLocked()
		l.waiting = victim == nil // then the next to go idle makes room
		l.mu.Unlock()
		if victim != nil {
			victim.Close() // frees its slot
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			c.Close()
			return nil, net.ErrClosed
		}
		l.mu.Lock()
		l.waiting = false
		l.mu.Unlock()
	}
	lc := &limitConn{Conn: c}
	lc.free = func() { l.forget(lc); <-l.slots }
	return lc, nil
}

// reclaimLocked takes the connection idle the longest out of the idle
// ones, for the caller to close, with mu held; nil when none is idle.
func (l *limitListener) reclaimLocked() *limitConn {
	for len(l.oldest) > 0 {
		c := l.oldest[0]
		l.oldest = l.oldest[1:]
		if _, ok := l.idle[c]; ok {
			delete(l.idle, c)
			return c
		}
	}
	return nil
}

// ConnState is for http.Server.ConnState: it tells the listener which of
// its connections are idle between requests, and closes one that goes
// idle while an Accept waits for a slot.
func (l *limitListener) ConnState(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitConn)
	if !ok {
		return
	}
	l.mu.Lock()
	switch state {
	case http.StateIdle:
		if l.waiting {
			l.mu.Unlock()
			lc.Close()
			return
		}
		l.idle[lc] = struct{}{}
		l.oldest = append(l.oldest, lc)
	default:
		delete(l.idle, lc)
	}
	if len(l.oldest) > 2*len(l.idle)+64 {
		// Drop what is no longer idle, so that the queue stays within
		// twice the idle connections.
		l.oldest = slices.DeleteFunc(l.oldest, func(c *limitConn) bool { _, ok := l.idle[c]; return !ok })
	}
	l.mu.Unlock()
}

// forget drops c from the idle connections, once it is closed.
func (l *limitListener) forget(c *limitConn) {
	l.mu.Lock()
	delete(l.idle, c)
	l.mu.Unlock()
}

// Close ends an Accept that waits for a slot, too.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitConn is one connection of a limitListener: closing it frees its slot,
// once.
type limitConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}

// CloseWrite passes http.Server's half-close on, as writeTimeoutConn does.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
