package listen

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// A client that keeps taking bytes is not cut however long its answer
// takes; one that stops is, after the timeout.
func TestWriteTimeoutCutsOnlyAStalledPeer(t *testing.T) {
	const d = 50 * time.Millisecond
	server, client := net.Pipe()
	defer client.Close()
	c := &writeTimeoutConn{Conn: server, d: d}
	defer c.Close()

	// A byte every d/2 for 8d: slower than one Write's deadline allows,
	// but never idle for d.
	const slow = 16
	read := make(chan error, 1)
	go func() {
		tick := time.NewTicker(d / 2)
		defer tick.Stop()
		b := make([]byte, 1)
		for range slow {
			<-tick.C
			if _, err := io.ReadFull(client, b); err != nil {
				read <- err
				return
			}
		}
		read <- nil
	}()
	if n, err := c.Write(make([]byte, slow)); n != slow || err != nil {
		t.Fatalf("Write to a slow reader: %d, %v; want %d, nil", n, err, slow)
	}
	if err := receive(t, read, "the slow reader"); err != nil {
		t.Fatal(err)
	}

	// Nobody reads now.
	start := time.Now()
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write to a stalled reader: %v, want a deadline error", err)
	}
	if took := time.Since(start); took > 10*d {
		t.Errorf("Write to a stalled reader took %s, want about %s", took, d)
	}
}

// receive returns what ch delivers, or fails t after 10 seconds.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

// Connections cost memory each whatever they are written: the client
// listener takes a bounded number at once, and one past it waits until
// another closes.
func TestConnectionsPastTheCapWaitForOneToClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(Limit(ln, 1))
	defer srv.Close()
	ask := func(c net.Conn, wait time.Duration) error {
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := dial()
	defer first.Close()
	if err := ask(first, 10*time.Second); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	// Open, idle, kept alive: it holds the one slot.
	second := dial()
	defer second.Close()
	if err := ask(second, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("second connection while the first is open: %v, want no answer", err)
	}
	first.Close()
	if err := ask(second, 10*time.Second); err != nil {
		t.Errorf("second connection once the first closed: %v", err)
	}
}

// TestIdleConnectionsMakeRoomAtTheCap is the second attack pass's fourth
// finding: 4,200 connections that each sent one request and went idle
// held every slot of -max-connections for the server's idle timeout, and
// new clients timed out. At the cap, the connection idle the longest is
// closed to make room, as nginx reclaims keep-alive connections; only busy
// ones make a newcomer wait.
func TestIdleConnectionsMakeRoomAtTheCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release, entered := make(chan struct{}), make(chan struct{}, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/busy" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	})}
	limited := Limit(ln, 2)
	srv.ConnState = limited.(interface {
		ConnState(net.Conn, http.ConnState)
	}).ConnState
	go srv.Serve(limited)
	defer srv.Close()
	defer close(release)
	dial := func(path string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: corral\r\n\r\n")
		return c, bufio.NewReader(c)
	}
	ask := func(br *bufio.Reader, c net.Conn, wait time.Duration) error {
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	idle, ibr := dial("/")
	defer idle.Close()
	if err := ask(ibr, idle, 10*time.Second); err != nil {
		t.Fatalf("the first connection: %v", err)
	}
	busy, _ := dial("/busy") // holds the other slot, busy
	defer busy.Close()
	receive(t, entered, "the busy request")
	newcomer, nbr := dial("/")
	defer newcomer.Close()
	if err := ask(nbr, newcomer, 10*time.Second); err != nil {
		t.Errorf("a newcomer with every slot taken, one idle: %v, want an answer", err)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := ibr.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the idle connection was not closed to make room (%v)", err)
	}
	// Both slots busy, and nothing idle: the next one waits.
	io.WriteString(newcomer, "GET /busy HTTP/1.1\r\nHost: corral\r\n\r\n")
	receive(t, entered, "the newcomer's busy request")
	late, lbr := dial("/")
	defer late.Close()
	if err := ask(lbr, late, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("with every slot busy, a newcomer got %v, want no answer yet", err)
	}
}
