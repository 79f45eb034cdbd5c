package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// One client's oversized Cookie on replica A: the origin answered it 400,
// and A, which held nothing for the URL, left a pass mark in Redis. The
// body is too large for Redis, so the copy that replica B fetched lives in
// B's memory alone, and Redis had nothing for the pass mark to refuse
// (issue 23, finding 6). When the origin then fails, B's clients must get
// B's stale copy (RFC 5861 section 4), as they would had A never been
// asked. Two things hold now: A's 400 is that client's own and leaves no
// mark (see exchange); and a pass mark in the shared tier, whatever left
// it, must not replace B's copy in memory any more than it may replace a
// copy in Redis.
func TestOversizedCookieOnOneReplicaCannotWipeAnothersStaleCopy(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	report := strings.Repeat("r", 100<<10)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header.Get("Cookie")) > 4<<10 {
			http.Error(w, "request header too large", http.StatusBadRequest)
			return
		}
		w.Header().Set("Cache-Control", "max-age=1")
		io.WriteString(w, report)
	})
	// -default-stale-if-error 5m and -redis-max-object-bytes 64KiB.
	cfg := Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}}
	rs := newReplicas(t, srv, o, clk, 2, cfg, fleet.Config{MaxObjectBytes: 64 << 10})
	a, b := rs.ps[0], rs.ps[1]

	if r, _ := get(b, "/report"); r.Status != http.StatusOK || r.Body != report {
		t.Fatalf("B's first fetch: %d %q", r.Status, r.CacheStatus)
	}
	// Too large for Redis: B's release leaves only a local-only mark,
	// which runs out with PassTTL; the copy goes stale meanwhile.
	rs.awaitLocalMark("/report")
	if e := rs.entries()["/report"]; e != nil {
		t.Fatalf("Redis holds a %v for /report: the body did not stay in B's memory", e.Kind)
	}
	clk.Advance(11 * time.Second)

	if r, _ := get(a, "/report", "Cookie", "s="+strings.Repeat("c", 8<<10)); r.Status != http.StatusBadRequest {
		t.Fatalf("the oversized Cookie on A: %d %q, want the origin's 400", r.Status, r.CacheStatus)
	}
	if e := rs.entries()["/report"]; e != nil && e.Kind == cache.PassMark {
		t.Errorf("Redis holds a pass mark for /report after one client's 400 on A")
	}
	// A pass mark as A left one before, or as any replica leaves one for
	// an answer its origin declared unshareable.
	store, err := redisstore.New(redisstore.Config{Addr: srv.URL, Prefix: rs.prefix, Timeout: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	mark := &cache.Entry{Kind: cache.PassMark, ID: cache.NewID(), Reason: string(freshness.ReasonErrorStatus)}
	if err := store.Set(context.Background(), "/report", mark, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}

	o.set(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	type seen struct {
		Status int
		Copy   bool // the body is B's stored copy
	}
	var want, got []seen
	var statuses []string
	for range 5 {
		r, _ := get(b, "/report")
		want = append(want, seen{http.StatusOK, true})
		got = append(got, seen{r.Status, r.Body == report})
		statuses = append(statuses, r.CacheStatus)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("B's clients while the origin fails (-want +got):\n%s\nCache-Status: %q", d, statuses)
	}
}
