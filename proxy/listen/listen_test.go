package listen

import (
	"errors"
	"io"
	"net"
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
