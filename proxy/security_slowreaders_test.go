package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"weak"

	"github.com/google/go-cmp/cmp"

	"corral/internal/testwait"
)

// Issue 23, finding 4: clients that read slowly kept alive every body they
// were being written after the store had let go of it. Behind a 24 MiB
// cache, 80 of them reading 8 MiB objects 32 KiB at a time held 643 MiB,
// while corral_stored_bytes said 24: memory grew as connections times
// -max-object-bytes. Scaled down here: 16 slow clients, 256 KiB objects, a
// 1 MiB cache. A body the store does not hold now takes room in its share
// of the buffer budget while it is written, once however many read it;
// without room it is not written (503), or its writers are cut; and a
// client reading slower than the minimum rate gives its room up to one
// that needs it.
func TestSlowReadersHoldNoBodyPastTheBudget(t *testing.T) {
	const (
		objectSize  = 256 << 10
		cacheBytes  = 1 << 20
		bufferBytes = 2 << 20
		room        = bufferBytes / 4 // the share of bodies being written that the store does not hold
		slow        = 16
	)
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(objectBody(r.URL.Path, objectSize))
	})
	p := newTestProxy(t, o, clk, Config{CacheBytes: cacheBytes, MaxObjectBytes: objectSize, BufferBytes: bufferBytes})
	a := newAdmin(p, "")
	srv := httptest.NewUnstartedServer(p)
	srv.Listener = smallWrites{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	heldWithin := func(when string) {
		t.Helper()
		if got := scrape(t, a)["corral_unstored_bytes"]; got > room {
			t.Errorf("%s: corral_unstored_bytes %v, want at most its share of the budget, %d", when, got, room)
		}
	}

	// Each slow client asks for an object of its own, reads the header and
	// stops: its answer's writer is blocked, holding what it writes from.
	type reader struct {
		conn net.Conn
		resp *http.Response
	}
	var readers []reader
	defer func() {
		for _, c := range readers {
			c.conn.Close()
		}
	}()
	for i := range slow {
		path := "/obj/" + strconv.Itoa(i)
		conn, resp := slowGet(t, srv.Listener.Addr().String(), path)
		readers = append(readers, reader{conn, resp})
		heldWithin("after " + path)
	}

	// Time passes: the slow clients have taken about nothing. A client who
	// reads at once gets a stored object, and a cold one, whole: the room
	// its body needs is taken from a slow client.
	clk.Advance(time.Minute)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/obj/0", "/fresh"} {
		resp, err := client.Get(srv.URL + path)
		if err != nil {
			t.Fatalf("GET %s by a client that reads: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil || !bytes.Equal(body, objectBody(path, objectSize)) {
			t.Errorf("GET %s by a client that reads: status %d, %d bytes, %v; want 200 and its %d bytes (Cache-Status %s)",
				path, resp.StatusCode, len(body), err, objectSize, resp.Header.Get("Cache-Status"))
		}
		heldWithin("after " + path)
	}

	// The slow clients read on: a body still stored, or still holding its
	// room, arrives whole; the others were cut, or refused before a byte.
	type outcomes struct{ Whole, Cut, Refused, Other int }
	var got outcomes
	for i, c := range readers {
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		body, err := io.ReadAll(c.resp.Body)
		switch {
		case c.resp.StatusCode == http.StatusServiceUnavailable:
			got.Refused++
		case c.resp.StatusCode == 200 && err == nil && bytes.Equal(body, objectBody("/obj/"+strconv.Itoa(i), objectSize)):
			got.Whole++
		case c.resp.StatusCode == 200 && errors.Is(err, io.ErrUnexpectedEOF):
			got.Cut++
		default:
			got.Other++
			t.Errorf("slow client %d: status %d, %d bytes, %v", i, c.resp.StatusCode, len(body), err)
		}
	}
	// What the store and the share can hold between them; every other
	// body was let go of.
	t.Logf("slow clients: %+v", got)
	const most = cacheBytes/objectSize + room/objectSize
	if got.Whole > most || got.Whole+got.Cut+got.Refused != slow {
		t.Errorf("slow clients: %+v; want at most %d whole bodies, the other %d cut or refused", got, most, slow-most)
	}
	m := scrape(t, a)
	if diff := cmp.Diff(float64(got.Cut), m["corral_cut_answers_total"]); diff != "" {
		t.Errorf("corral_cut_answers_total against the answers the slow clients saw cut (-want +got):\n%s", diff)
	}
	srv.Close() // every answer's handler done
	if got := scrape(t, a)["corral_unstored_bytes"]; got != 0 {
		t.Errorf("corral_unstored_bytes %v once every answer is written, want 0", got)
	}
}

// objectBody is the body of an object at path: n bytes that name it.
func objectBody(path string, n int) []byte {
	return bytes.Repeat([]byte(path+" "), n/len(path)+1)[:n]
}

// slowGet asks addr for path on a connection of its own and returns once
// the answer's header has arrived, leaving its body unread.
func slowGet(t *testing.T, addr, path string) (net.Conn, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: corral\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4<<10), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return conn, resp
}

// smallWrites is a listener whose connections have small send buffers,
// so that an answer to a client that does not read blocks its writer at
// once rather than filling the kernel's buffers.
type smallWrites struct{ net.Listener }

func (l smallWrites) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(4 << 10)
	}
	return c, err
}

// The memory itself: a client that has stopped reading holds none of a
// body that the store let go of and the budget has no room for, though its
// answer is still being written, its connection still open.
func TestStalledClientHoldsNoBodyTheStoreLetGo(t *testing.T) {
	const objectSize = 256 << 10
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(objectBody(r.URL.Path, objectSize))
	})
	// A quarter of the buffer budget is too small for the body: once the
	// store lets go of it, it is cut.
	p := newTestProxy(t, o, clk, Config{MaxObjectBytes: objectSize, BufferBytes: 2 * objectSize})
	if res, _ := get(p, "/obj"); res.Status != 200 || len(res.Body) != objectSize {
		t.Fatalf("GET /obj: %d, %d bytes", res.Status, len(res.Body))
	}
	body := weakBody(p, "/obj")

	writing, release := make(chan struct{}, 1), make(chan struct{})
	w := &stalledWriter{h: http.Header{}, writing: writing, release: release}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ServeHTTP(w, newRequest(http.MethodGet, "/obj"))
	}()
	testwait.Receive(t, writing, "the first chunk of the answer")
	if _, err := p.Purge("/obj", false); err != nil {
		t.Fatal(err)
	}
	p.store.Sizer().Bytes() // the store's pending work done
	runtime.GC()
	held := body.Value() != nil
	close(release)
	testwait.Receive(t, done, "the answer's end")
	if held {
		t.Error("the body is still in memory while a stalled client is written it, after the store let go of it")
	}
	if diff := cmp.Diff(int64(1), p.Stats().Cut.Load()); diff != "" {
		t.Errorf("answers cut (-want +got):\n%s", diff)
	}
}

// weakBody returns a weak pointer to the body of the entry stored under key.
func weakBody(p *Proxy, key string) weak.Pointer[byte] {
	e := p.store.Get(context.Background(), key)
	return weak.Make(&e.Body[0])
}

// A 304 replaces a stored entry with one that has the same body: a client
// being written it meanwhile holds a body the store still holds, which
// must not count against the budget, or be cut for want of room.
func TestRevalidationDoesNotCutAClientBeingWrittenTheBody(t *testing.T) {
	const objectSize = 256 << 10
	clk := newClock()
	o := newOrigin(t, clk, etagAnswer("max-age=1", func(r *http.Request) string { return string(objectBody(r.URL.Path, objectSize)) }))
	// No room in the budget for the body: held only by the store.
	p := newTestProxy(t, o, clk, Config{MaxObjectBytes: objectSize, BufferBytes: 2 * objectSize})
	if res, _ := get(p, "/big"); res.Status != 200 || len(res.Body) != objectSize {
		t.Fatalf("GET /big: %d, %d bytes", res.Status, len(res.Body))
	}
	writing, release := make(chan struct{}, 1), make(chan struct{})
	w := &stalledWriter{h: http.Header{}, writing: writing, release: release}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ServeHTTP(w, newRequest(http.MethodGet, "/big"))
	}()
	testwait.Receive(t, writing, "the first chunk of the answer")

	clk.Advance(2 * time.Second)
	if res, _ := get(p, "/big"); res.Status != 200 || !strings.Contains(res.CacheStatus, "fwd-status=304") {
		t.Fatalf("GET /big once stale: %d, Cache-Status %s; want it revalidated", res.Status, res.CacheStatus)
	}
	unstored := p.unstored.InUse()
	close(release)
	testwait.Receive(t, done, "the answer's end")
	if diff := cmp.Diff([]int64{0, 0}, []int64{unstored, p.Stats().Cut.Load()}); diff != "" {
		t.Errorf("[unstored bytes while revalidated, answers cut] (-want +got):\n%s", diff)
	}
}
