package proxy

import (
	"errors"
	"net"
	"os"
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
