package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// WriteTimeoutListener returns ln with every connection it accepts
// disconnected once its peer has accepted no bytes for d: each Write sets a
// write deadline d ahead, and moves it on while the peer takes bytes.
// Unlike http.Server's WriteTimeout, which bounds a whole response, this
// caps neither a long download nor a stream, only a client that stopped
// reading and would otherwise hold its goroutine, its connection and what
// its answer is written from, for ever. A d of zero or less returns ln.
func WriteTimeoutListener(ln net.Listener, d time.Duration) net.Listener {
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

// LimitListener returns ln accepting at most n connections at once, as
// nginx's worker_connections caps its own: each connection costs a
// goroutine, its buffers and what it is being written, so that the cap
// bounds what all of them cost. Past it, Accept waits for a connection to
// close; new clients wait meanwhile in the kernel's listen queue, and past
// that, their connections are refused or time out. An n of zero or less
// returns ln.
func LimitListener(ln net.Listener, n int) net.Listener {
	if n <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	slots     chan struct{} // one per open connection
	closeOnce sync.Once
	closed    chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, free: func() { <-l.slots }}, nil
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
