package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

// TestEarlyHintsKeepTheLeadersFields is issue 17's first item: a 103 Early
// Hints from the origin wiped the fields the leader's answer had been given
// before its flight, among them the Connection: close that every chunked
// request gets (RFC 9112 section 6.1: Go's server hides whether a
// Content-Length came too, a sign of smuggling), and its connection stayed
// open for the next request.
func TestEarlyHintsKeepTheLeadersFields(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		answer("max-age=60", "ok")(w, r)
	})
	p := newTestProxy(t, o, clk, Config{})
	srv := httptest.NewServer(p)
	defer srv.Close()

	conn, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	// A GET with an empty chunked body: read, it goes on as any GET, and
	// leads a flight.
	io.WriteString(conn, "GET /hinted HTTP/1.1\r\nHost: corral\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	br := bufio.NewReader(conn)
	var statuses []int
	var final *http.Response
	for final == nil {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answers: %v (got %v so far)", err, statuses)
		}
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode >= 200 {
			final = resp
		}
	}
	body, _ := io.ReadAll(final.Body)
	if len(statuses) != 2 || statuses[0] != http.StatusEarlyHints || string(body) != "ok" {
		t.Fatalf("the client got %v with body %q, want 103 then 200 ok", statuses, body)
	}
	if !final.Close {
		t.Errorf("the final answer lost its Connection: close (header %v)", final.Header)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the connection stayed open after a chunked request (%v)", err)
	}
}
