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

	"corral/internal/testwait"
	"corral/proxy/internal/fakeclock"

	"github.com/google/go-cmp/cmp"
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
	if err := testwait.Receive(t, read, "the slow reader"); err != nil {
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

// A connection kept alive carries many small answers: their Writes do not
// each move the deadline (a timer update in the runtime), only the first
// does, for d/2 or more.
func TestWriteTimeoutSetsTheDeadlineRarely(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	go io.Copy(io.Discard, client)
	counted := &deadlineCounter{Conn: server}
	c := &writeTimeoutConn{Conn: counted, d: time.Minute}
	defer c.Close()
	for range 100 {
		if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	if counted.n != 1 {
		t.Errorf("100 quick Writes set the write deadline %d times, want 1", counted.n)
	}
}

type deadlineCounter struct {
	net.Conn
	n int
}

func (c *deadlineCounter) SetWriteDeadline(t time.Time) error {
	c.n++
	return c.Conn.SetWriteDeadline(t)
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
	testwait.Receive(t, entered, "the busy request")
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
	testwait.Receive(t, entered, "the newcomer's busy request")
	late, lbr := dial("/")
	defer late.Close()
	if err := ask(lbr, late, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("with every slot busy, a newcomer got %v, want no answer yet", err)
	}
}

// Finding f4: 6,000 connections that sent nothing, each reopened as soon
// as the header timeout (10 s) closed it, held every slot of
// -max-connections, and clients opening a connection per request timed
// out; idle keep-alive connections were the only ones closed to make room.
// A connection that has sent no request for headerGrace now makes room for
// a newcomer, which waits for that at most. (Before the fix, the newcomer
// got no answer in 10 s.)
func TestSilentConnectionsMakeRoomAtTheCap(t *testing.T) {
	_, addr, reports := serveLimited(t, 2, time.Now)
	first := dial(t, addr)
	until(t, reports, http.StateNew)
	dial(t, addr)
	until(t, reports, http.StateNew)

	newcomer := dial(t, addr)
	io.WriteString(newcomer, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(newcomer); err != nil {
		t.Errorf("a newcomer with every slot held by a silent connection: %v, want an answer", err)
	}
	if err := closedByServer(first); err != nil {
		t.Errorf("the silent connection accepted first: %v", err)
	}
}

// A client on a kept-alive connection whose next request is arriving is
// not cut to make room while another connection is idle, however long the
// first idled before: its request is under way. (Before the fix, the
// connection idle the longest was closed, mid-header.)
func TestAnArrivingRequestOutlastsAnIdleConnection(t *testing.T) {
	_, addr, reports := serveLimited(t, 2, time.Now)
	arriving := dial(t, addr)
	io.WriteString(arriving, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(arriving); err != nil {
		t.Fatalf("the first connection: %v", err)
	}
	lc := until(t, reports, http.StateIdle).(*limitConn)
	idle := dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(idle); err != nil {
		t.Fatalf("the second connection: %v", err)
	}
	until(t, reports, http.StateIdle)

	io.WriteString(arriving, "GET / HTTP/1.1\r\nHo")
	heard(t, lc)
	newcomer := dial(t, addr)
	io.WriteString(newcomer, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(newcomer); err != nil {
		t.Errorf("a newcomer with a slot idle: %v, want an answer", err)
	}
	if err := closedByServer(idle); err != nil {
		t.Errorf("the idle connection: %v", err)
	}
	io.WriteString(arriving, "st: corral\r\n\r\n")
	if err := answered(arriving); err != nil {
		t.Errorf("the request that was arriving: %v, want its answer", err)
	}
}

// A header that trickles in is cut once it has taken headerGrace, so that
// a slowloris cannot hold a slot for the header timeout; one begun within
// the grace is not.
func TestASlowHeaderIsCutAfterTheGrace(t *testing.T) {
	clk := newClock()
	_, addr, reports := serveLimited(t, 2, clk.Now)
	keptAlive := dial(t, addr)
	io.WriteString(keptAlive, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(keptAlive); err != nil {
		t.Fatalf("the first connection: %v", err)
	}
	lc := until(t, reports, http.StateIdle).(*limitConn)
	slow := dial(t, addr)
	io.WriteString(slow, "GET / HTTP/1.1\r\nX-Trickle: ")
	until(t, reports, http.StateNew)

	clk.Advance(headerGrace)
	io.WriteString(keptAlive, "GET / HTTP/1.1\r\nHo")
	heard(t, lc)
	newcomer := dial(t, addr)
	io.WriteString(newcomer, "GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
	if err := answered(newcomer); err != nil {
		t.Errorf("a newcomer with a slot held by a slow header: %v, want an answer", err)
	}
	if err := closedByServer(slow); err != nil {
		t.Errorf("the header arriving for the grace: %v", err)
	}
	io.WriteString(keptAlive, "st: corral\r\n\r\n")
	if err := answered(keptAlive); err != nil {
		t.Errorf("the header begun within the grace: %v, want its answer", err)
	}
}

// The order in which connections make room, on a clock that only the test
// moves: new ones past the grace, then idle ones, then headers arriving
// past the grace; never a busy one, nor one within its grace.
func TestReclaimOrder(t *testing.T) {
	clk := newClock()
	l := Limit(nil, 16).(*limitListener)
	l.now = clk.Now
	t0 := clk.Now()
	at := func(d time.Duration) { clk.Advance(t0.Add(d).Sub(clk.Now())) }
	names := map[*limitConn]string{}
	open := func(name string, states ...http.ConnState) *limitConn {
		c := newConn(l)
		names[c] = name
		for _, s := range states {
			l.ConnState(c, s)
		}
		return c
	}
	read := func(c *limitConn) { c.Read(make([]byte, 1)) }
	const (
		New    = http.StateNew
		Active = http.StateActive
		Idle   = http.StateIdle
	)

	open("busy", New, Active)
	open("silent", New)
	at(100 * time.Millisecond)
	open("idle", New, Active, Idle)
	at(200 * time.Millisecond)
	slow := open("slow header", New, Active, Idle)
	at(300 * time.Millisecond)
	read(slow)
	open("idle later", New, Active, Idle)
	at(400 * time.Millisecond)
	open("idle, then busy", New, Active, Idle, Active)
	open("idle, then closed", New, Active, Idle).Close()
	at(500 * time.Millisecond)
	read(open("new, its header arriving", New))
	at(600 * time.Millisecond)
	read(open("header begun", New, Active, Idle))

	pick := func() (picked []string, due time.Duration) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for {
			c, d := l.reclaimLocked(clk.Now())
			if c == nil {
				if !d.IsZero() {
					due = d.Sub(t0)
				}
				return picked, due
			}
			picked = append(picked, names[c])
		}
	}
	type result struct {
		Picked []string
		Due    time.Duration
	}
	at(1450 * time.Millisecond)
	picked, due := pick()
	want := result{[]string{"silent", "idle", "idle later", "slow header"}, 1500 * time.Millisecond}
	if diff := cmp.Diff(want, result{picked, due}); diff != "" {
		t.Errorf("at 1.45 s (-want +got):\n%s", diff)
	}
	at(1700 * time.Millisecond)
	picked, due = pick()
	want = result{[]string{"new, its header arriving", "header begun"}, 0}
	if diff := cmp.Diff(want, result{picked, due}); diff != "" {
		t.Errorf("at 1.7 s (-want +got):\n%s", diff)
	}
}

// A connection that goes idle while an Accept waits for a slot is closed
// for it, and only one.
func TestAnIdleConnectionMakesRoomForAWaitingAccept(t *testing.T) {
	l := Limit(nil, 2).(*limitListener)
	a, b := newConn(l), newConn(l)
	l.ConnState(a, http.StateNew)
	l.ConnState(b, http.StateNew)
	l.ConnState(a, http.StateActive)
	l.ConnState(b, http.StateActive)
	l.waiting = true
	l.ConnState(a, http.StateIdle)
	l.ConnState(b, http.StateIdle)
	if diff := cmp.Diff(1, len(l.slots)); diff != "" {
		t.Errorf("connections open once two went idle while an Accept waited (-want +got):\n%s", diff)
	}
}

// Thousands of connections a second come and go: what the listener keeps
// of them stays within the bound of its queues.
func TestQueuesStayBoundedUnderChurn(t *testing.T) {
	const n = 64
	clk := newClock()
	l := Limit(nil, n).(*limitListener)
	l.now = clk.Now
	var open []*limitConn
	longest := 0
	for i := range 100_000 {
		if len(open) == n {
			open[0].Close()
			l.ConnState(open[0], http.StateClosed)
			open = open[1:]
		}
		c := newConn(l)
		l.ConnState(c, http.StateNew)
		if i%3 > 0 {
			l.ConnState(c, http.StateActive)
			l.ConnState(c, http.StateIdle)
		}
		if i%3 > 1 {
			c.Read(make([]byte, 1))
		}
		open = append(open, c)
		clk.Advance(time.Millisecond)
		longest = max(longest, len(l.fresh), len(l.idle), len(l.arriving))
	}
	if bound := 2*n + 64 + 1; longest > bound {
		t.Errorf("a queue held %d entries for %d connections, want at most %d", longest, n, bound)
	}
}

// newConn is a connection of l, as Accept returns it, over a byteConn.
func newConn(l *limitListener) *limitConn {
	l.slots <- struct{}{}
	return &limitConn{Conn: byteConn{}, l: l}
}

// byteConn is a connection whose every Read returns a byte.
type byteConn struct{ net.Conn }

func (byteConn) Read(b []byte) (int, error) { return copy(b, "G"), nil }
func (byteConn) Close() error               { return nil }

func newClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

type report struct {
	c     net.Conn
	state http.ConnState
}

// serveLimited serves "ok" behind Limit(ln, n) on a loopback port, on the
// clock now, with a header timeout of a minute so that only the listener
// closes a connection waiting for a request, and reports the states of
// its connections.
func serveLimited(t *testing.T, n int, now func() time.Time) (*limitListener, string, <-chan report) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Limit(ln, n).(*limitListener)
	l.now = now
	reports := make(chan report, 1024)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		ReadHeaderTimeout: time.Minute,
		ConnState: func(c net.Conn, s http.ConnState) {
			l.ConnState(c, s)
			reports <- report{c, s}
		},
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l, ln.Addr().String(), reports
}

// until returns the next connection reported in state, skipping reports
// of other states.
func until(t *testing.T, reports <-chan report, state http.ConnState) net.Conn {
	t.Helper()
	for {
		if r := testwait.Receive(t, reports, state.String()+" reported"); r.state == state {
			return r.c
		}
	}
}

// heard waits until the listener has seen c's next request begin to
// arrive.
func heard(t *testing.T, c *limitConn) {
	t.Helper()
	testwait.Until(t, "the server to read a request's first bytes", func() bool { return !c.quiet.Load() })
}

// dial opens a connection to addr, closed when the test ends.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// answered reads the answer to one request from c, waiting 10 seconds at
// most. The server writes nothing past it before the next request, so
// that a reader of its own loses nothing.
func answered(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// closedByServer says why c was not closed by the server within 10
// seconds, or nil if it was.
func closedByServer(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	switch {
	case n > 0:
		return errors.New("got a byte, want the connection closed")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("still open after 10 s, want it closed")
	case err == nil:
		return errors.New("read nothing and no error, want the connection closed")
	}
	return nil
}
