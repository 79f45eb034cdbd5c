package acceptance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/cache"
)

func testGetSetDelete(t *testing.T, s cache.Store, c *clock) {
	e := response("hello")
	mustSet(t, s, "/a", e)
	want(t, s, "/a", e)
	want(t, s, "/b", nil)
	wantErr(t, "Delete", s.Delete(bg, "/a"), nil)
	want(t, s, "/a", nil)
	wantErr(t, "Delete of an absent key", s.Delete(bg, "/a"), nil)

	// Delete records no purge: a write that began earlier still lands.
	wantErr(t, "Set after Delete", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: Start.Add(-time.Second)}), nil)
	want(t, s, "/a", e)
}

func testNotFound(t *testing.T, s cache.Store, c *clock) {
	_, err := s.Get(bg, "/nothing")
	if !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}
	if errors.Is(err, cache.ErrConflict) || errors.Is(err, cache.ErrPurged) {
		t.Errorf("ErrNotFound is also another error: %v", err)
	}
}

func testOverwrite(t *testing.T, s cache.Store, c *clock) {
	first, second := response("first"), response("second")
	mustSet(t, s, "/a", first)
	mustSet(t, s, "/a", second)
	want(t, s, "/a", second)
}

func testZeroTTL(t *testing.T, s cache.Store, c *clock) {
	for _, ttl := range []time.Duration{0, -time.Second} {
		wantErr(t, fmt.Sprintf("Set with ttl %v", ttl), s.Set(bg, "/a", response("x"), ttl, cache.Cond{}), nil)
		want(t, s, "/a", nil)
	}
}

// testEveryKind stores an entry of each kind, with every field set, and
// reads it back as it was.
func testEveryKind(t *testing.T, s cache.Store, c *clock) {
	entries := map[string]*cache.Entry{
		"/response": {
			Kind: cache.Response, ID: cache.NewID(),
			RequestTime: Start, ResponseTime: Start.Add(time.Millisecond),
			Status: 404,
			Header: http.Header{"Vary": {"Accept-Encoding"}, "Etag": {`"v1"`}, "X-Two": {"a", "b"}},
			Body:   []byte("not here"),
			Vary:   []string{"Accept-Encoding"}, VaryKey: "gzip",
		},
		"/marker": {
			Kind: cache.VaryMarker, ID: cache.NewID(),
			Vary: []string{"Accept-Encoding", "Accept-Language"},
			Gen:  cache.NewID(), Until: Start.Add(time.Hour),
		},
		"/pass": {Kind: cache.PassMark, ID: cache.NewID(), Reason: "set-cookie"},
	}
	for k, e := range entries {
		mustSet(t, s, k, e)
	}
	for k, e := range entries {
		want(t, s, k, e)
	}
}

func testLargeValue(t *testing.T, s cache.Store, c *clock) {
	e := response(strings.Repeat("0123456789abcdef", 4<<20/16))
	e.Body[len(e.Body)-1] = '!' // a body cut short would not end so
	mustSet(t, s, "/large", e)
	want(t, s, "/large", e)
}

func testTTLExpiry(t *testing.T, s cache.Store, c *clock) {
	short, long := response("short"), response("long")
	if err := s.Set(bg, "/short", short, 10*time.Second, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(bg, "/long", long, time.Minute, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	c.Advance(9 * time.Second)
	want(t, s, "/short", short)
	c.Advance(2 * time.Second)
	want(t, s, "/short", nil)
	want(t, s, "/long", long)

	// An overwrite gives the key the new ttl.
	mustSet(t, s, "/short", short)
	c.Advance(time.Minute)
	want(t, s, "/short", short)
	want(t, s, "/long", nil)
}

func testIfID(t *testing.T, s cache.Store, c *clock) {
	old, mine, theirs := response("old"), response("mine"), response("theirs")
	wantErr(t, "IfID on an absent key", s.Set(bg, "/a", mine, time.Hour, cache.Cond{IfID: old.ID}), cache.ErrConflict)
	want(t, s, "/a", nil)

	mustSet(t, s, "/a", old)
	wantErr(t, "IfID of another entry", s.Set(bg, "/a", mine, time.Hour, cache.Cond{IfID: mine.ID}), cache.ErrConflict)
	want(t, s, "/a", old)
	wantErr(t, "IfID of the entry there", s.Set(bg, "/a", mine, time.Hour, cache.Cond{IfID: old.ID}), nil)
	want(t, s, "/a", mine)
	// The entry it replaced is gone: a second write naming it loses.
	wantErr(t, "IfID of the replaced entry", s.Set(bg, "/a", theirs, time.Hour, cache.Cond{IfID: old.ID}), cache.ErrConflict)
	want(t, s, "/a", mine)
}

func testIfAbsent(t *testing.T, s cache.Store, c *clock) {
	first, second := response("first"), response("second")
	wantErr(t, "IfAbsent on an absent key", s.Set(bg, "/a", first, time.Hour, cache.Cond{IfAbsent: true}), nil)
	wantErr(t, "IfAbsent on a present key", s.Set(bg, "/a", second, time.Hour, cache.Cond{IfAbsent: true}), cache.ErrConflict)
	want(t, s, "/a", first)

	// An expired entry is absent.
	if err := s.Set(bg, "/b", first, time.Second, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	c.Advance(2 * time.Second)
	wantErr(t, "IfAbsent on an expired key", s.Set(bg, "/b", second, time.Hour, cache.Cond{IfAbsent: true}), nil)
	want(t, s, "/b", second)
}

// testCanceledContext: a store either honours a cancelled context with
// an error that wraps context.Canceled, or ignores it altogether, as a
// store that does no I/O may. Never anything in between: ErrNotFound for
// an entry that is there, or a purge half done.
func testCanceledContext(t *testing.T, s cache.Store, c *clock) {
	ctx, cancel := context.WithCancel(bg)
	cancel()
	ok := func(what string, err error) bool {
		t.Helper()
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v, want nil or context.Canceled", what, err)
		}
		return err == nil
	}

	e := response("x")
	if ok("Set", s.Set(ctx, "/a", e, time.Hour, cache.Cond{})) {
		want(t, s, "/a", e)
	}
	mustSet(t, s, "/a", e)
	if got, err := s.Get(ctx, "/a"); ok("Get", err) {
		if diff := cmp.Diff(e, got, compare); diff != "" {
			t.Errorf("Get with a cancelled context (-want +got):\n%s", diff)
		}
	}
	if ok("Delete", s.Delete(ctx, "/a")) {
		want(t, s, "/a", nil)
	}
	mustSet(t, s, "/b", e)
	began := c.Now()
	if n, err := s.Purge(ctx, "/b", false, c.Advance(time.Second)); ok("Purge", err) {
		if n != 1 {
			t.Errorf("Purge with a cancelled context dropped %d entries, want 1", n)
		}
		want(t, s, "/b", nil)
		wantErr(t, "Set begun before a purge with a cancelled context", s.Set(bg, "/b", e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	}
}
