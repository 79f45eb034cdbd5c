// Package acceptance checks that a cache.Store keeps the contract the
// proxy relies on, so that every store, in memory or shared, passes the
// same tests.
package acceptance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/cache"
	"corral/proxy/internal/fakeclock"
)

// NewStore returns an empty store for one test, and arranges with
// t.Cleanup for it to be closed. Entries must expire by now, the test's
// clock, which starts at Start and only moves when the test moves it;
// purge records must hold for at least a minute of it.
type NewStore func(t *testing.T, now func() time.Time) cache.Store

// Start is the moment each test's clock starts at.
var Start = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)

// Run checks the stores newStore makes against the cache.Store contract.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s cache.Store, c *clock)
	}{
		{"GetSetDelete", testGetSetDelete},
		{"NotFound", testNotFound},
		{"Overwrite", testOverwrite},
		{"ZeroTTL", testZeroTTL},
		{"EveryKind", testEveryKind},
		{"LargeValue", testLargeValue},
		{"TTLExpiry", testTTLExpiry},
		{"PurgeKey", testPurgeKey},
		{"PurgePrefix", testPurgePrefix},
		{"PurgeAll", testPurgeAll},
		{"IfID", testIfID},
		{"IfAbsent", testIfAbsent},
		{"PurgeRefusesLateWrite", testPurgeRefusesLateWrite},
		{"PurgeRecordPrefix", testPurgeRecordPrefix},
		{"PurgeRecordVariants", testPurgeRecordVariants},
		{"PurgeRecordsPastBound", testPurgeRecordsPastBound},
		{"ConcurrentUse", testConcurrentUse},
		{"ConcurrentIfID", testConcurrentIfID},
		{"PurgeRacesWrites", testPurgeRacesWrites},
		{"CanceledContext", testCanceledContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fakeclock.New(Start)
			tt.fn(t, newStore(t, c.Now), c)
		})
	}
}

// clock is a test's clock: it moves only when told.
type clock = fakeclock.Clock

var bg = context.Background()

// response returns a new Response entry with body.
func response(body string) *cache.Entry {
	return &cache.Entry{
		Kind:         cache.Response,
		ID:           cache.NewID(),
		RequestTime:  Start,
		ResponseTime: Start.Add(10 * time.Millisecond),
		Status:       http.StatusOK,
		Header:       http.Header{"Content-Type": {"text/plain"}, "Cache-Control": {"max-age=60"}},
		Body:         []byte(body),
	}
}

// compare is how entries are compared: bodies with bytes.Equal, as cmp
// is slow on megabytes.
var compare = cmp.Comparer(bytes.Equal)

// mustSet stores e under key unconditionally for an hour.
func mustSet(t *testing.T, s cache.Store, key string, e *cache.Entry) {
	t.Helper()
	if err := s.Set(bg, key, e, time.Hour, cache.Cond{}); err != nil {
		t.Fatalf("Set(%q): %v", key, err)
	}
}

// want checks that key holds an entry equal to e, or nothing for nil.
func want(t *testing.T, s cache.Store, key string, e *cache.Entry) {
	t.Helper()
	got, err := s.Get(bg, key)
	switch {
	case e == nil && errors.Is(err, cache.ErrNotFound):
	case e == nil:
		t.Errorf("Get(%q) = %v, %v; want ErrNotFound", key, describe(got), err)
	case err != nil:
		t.Errorf("Get(%q): %v; want %s", key, err, describe(e))
	default:
		if diff := cmp.Diff(e, got, compare); diff != "" {
			t.Errorf("Get(%q) (-want +got):\n%s", key, diff)
		}
	}
}

func describe(e *cache.Entry) string {
	if e == nil {
		return "nil"
	}
	return fmt.Sprintf("%s %d with a %d-byte body", e.Kind, e.ID, len(e.Body))
}

// wantErr checks that err is target, nil included.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if target == nil && err != nil || target != nil && !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

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

func testPurgeKey(t *testing.T, s cache.Store, c *clock) {
	a, ab := response("a"), response("ab")
	mustSet(t, s, "/a", a)
	mustSet(t, s, "/ab", ab)
	n, err := s.Purge(bg, "/a", false, c.Now())
	if err != nil || n != 1 {
		t.Errorf("Purge(/a) = %d, %v; want 1, nil", n, err)
	}
	want(t, s, "/a", nil)
	want(t, s, "/ab", ab)
	n, err = s.Purge(bg, "/a", false, c.Now())
	if err != nil || n != 0 {
		t.Errorf("Purge(/a) again = %d, %v; want 0, nil", n, err)
	}
}

func testPurgePrefix(t *testing.T, s cache.Store, c *clock) {
	keep := response("keep")
	for _, k := range []string{"/api", "/api/1", "/api/2?x=1", cache.VariantKey("/api/3", 7, "gzip")} {
		mustSet(t, s, k, response(k))
	}
	mustSet(t, s, "/ap", keep)
	mustSet(t, s, "/other/api", keep)
	n, err := s.Purge(bg, "/api", true, c.Now())
	if err != nil || n != 4 {
		t.Errorf("Purge(/api, prefix) = %d, %v; want 4, nil", n, err)
	}
	for _, k := range []string{"/api", "/api/1", "/api/2?x=1", cache.VariantKey("/api/3", 7, "gzip")} {
		want(t, s, k, nil)
	}
	want(t, s, "/ap", keep)
	want(t, s, "/other/api", keep)
}

func testPurgeAll(t *testing.T, s cache.Store, c *clock) {
	keys := []string{"/", "/a", "/b/c", cache.VariantKey("/v", 1, "")}
	for _, k := range keys {
		mustSet(t, s, k, response(k))
	}
	n, err := s.Purge(bg, "", true, c.Now())
	if err != nil || n != len(keys) {
		t.Errorf("Purge of everything = %d, %v; want %d, nil", n, err, len(keys))
	}
	for _, k := range keys {
		want(t, s, k, nil)
	}
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

func testPurgeRefusesLateWrite(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/a", false, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	wantErr(t, "Set of a fetch begun before the purge", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	wantErr(t, "Set of a fetch begun as the purge", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: at}), cache.ErrPurged)
	want(t, s, "/a", nil)
	wantErr(t, "Set of a fetch begun before the purge, of another key", s.Set(bg, "/b", e, time.Hour, cache.Cond{Since: began}), nil)

	// The purge record is checked before the entry: a refused write
	// says it was the purge.
	wantErr(t, "Set with IfAbsent too", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: began, IfAbsent: true}), cache.ErrPurged)

	after := c.Advance(time.Millisecond)
	fresh := response("new")
	wantErr(t, "Set of a fetch begun after the purge", s.Set(bg, "/a", fresh, time.Hour, cache.Cond{Since: after}), nil)
	want(t, s, "/a", fresh)
	// A zero Since asks for no check.
	wantErr(t, "Set with no Since", s.Set(bg, "/a", e, time.Hour, cache.Cond{}), nil)
	want(t, s, "/a", e)
}

func testPurgeRecordPrefix(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/api/", true, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	for _, k := range []string{"/api/", "/api/1", cache.VariantKey("/api/2", 3, "br")} {
		wantErr(t, "Set under the purged prefix of "+strconv.Quote(k), s.Set(bg, k, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
		want(t, s, k, nil)
	}
	wantErr(t, "Set outside the prefix", s.Set(bg, "/api", e, time.Hour, cache.Cond{Since: began}), nil)
	wantErr(t, "Set under the prefix, begun later", s.Set(bg, "/api/1", e, time.Hour, cache.Cond{Since: c.Advance(time.Millisecond)}), nil)
}

// testPurgeRecordVariants: the purge of a URI's key holds for the variant
// keys made from it, whatever their generation.
func testPurgeRecordVariants(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/v", false, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	vk := cache.VariantKey("/v", cache.NewID(), "gzip")
	wantErr(t, "Set of a variant of the purged key", s.Set(bg, vk, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	want(t, s, vk, nil)
	other := cache.VariantKey("/vw", cache.NewID(), "gzip")
	wantErr(t, "Set of a variant of another key", s.Set(bg, other, e, time.Hour, cache.Cond{Since: began}), nil)
}

// testPurgeRecordsPastBound: however many purges, every purged key still
// refuses writes begun before its purge (a store may refuse more).
func testPurgeRecordsPastBound(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	const n = cache.MaxPurgeRecords + 10
	for i := range n {
		if _, err := s.Purge(bg, "/p/"+strconv.Itoa(i), false, c.Advance(time.Microsecond)); err != nil {
			t.Fatal(err)
		}
	}
	e := response("old")
	for _, i := range []int{0, 1, n / 2, n - 2, n - 1} {
		k := "/p/" + strconv.Itoa(i)
		wantErr(t, "Set of "+k, s.Set(bg, k, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	}
	wantErr(t, "Set of a fetch begun after every purge", s.Set(bg, "/p/0", e, time.Hour, cache.Cond{Since: c.Advance(time.Millisecond)}), nil)
}

// testConcurrentUse runs writers, readers and purgers at once: run it
// under -race. Every entry read is one written under its key.
func testConcurrentUse(t *testing.T, s cache.Store, c *clock) {
	const workers, ops = 8, 200
	keys := []string{"/c/0", "/c/1", "/c/2", "/c/3", "/d/0", "/d/1"}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, workers*ops)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range ops {
				k := keys[(w+i)%len(keys)]
				var err error
				switch (w + i) % 7 {
				case 0, 1, 2:
					err = s.Set(bg, k, response(k+"#"+strconv.Itoa(w)), time.Hour, cache.Cond{Since: c.Now()})
				case 3:
					var cur *cache.Entry
					if cur, err = s.Get(bg, k); err == nil {
						err = s.Set(bg, k, response(k+"#"+strconv.Itoa(w)), time.Hour, cache.Cond{IfID: cur.ID})
					}
				case 4:
					_, err = s.Purge(bg, k, false, c.Advance(time.Microsecond))
				case 5:
					_, err = s.Purge(bg, "/d/", true, c.Advance(time.Microsecond))
				default:
					var e *cache.Entry
					if e, err = s.Get(bg, k); err == nil && !strings.HasPrefix(string(e.Body), k+"#") {
						err = fmt.Errorf("Get(%q) returned the entry %q", k, e.Body)
					}
				}
				if err != nil && !errors.Is(err, cache.ErrNotFound) && !errors.Is(err, cache.ErrConflict) && !errors.Is(err, cache.ErrPurged) {
					errs <- err
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testConcurrentIfID: of writers that all name the same entry, one wins.
func testConcurrentIfID(t *testing.T, s cache.Store, c *clock) {
	for round := range 20 {
		key := "/race/" + strconv.Itoa(round)
		base := response("base")
		mustSet(t, s, key, base)
		const writers = 8
		entries := make([]*cache.Entry, writers)
		results := make([]error, writers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range writers {
			entries[i] = response(strconv.Itoa(i))
			wg.Go(func() {
				<-start
				results[i] = s.Set(bg, key, entries[i], time.Hour, cache.Cond{IfID: base.ID})
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range results {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: writers %d and %d both replaced the same entry", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, cache.ErrConflict):
				t.Fatalf("round %d: writer %d: %v, want nil or ErrConflict", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no writer replaced the entry", round)
		}
		want(t, s, key, entries[winner])
	}
}

// testPurgeRacesWrites: a purge that falls between a write's check and
// the write would let the old response back in. Writers whose fetch
// began before the purge write until refused; once all are done, the key
// must hold nothing. Run it under -race, or more than once, to widen the
// window.
func testPurgeRacesWrites(t *testing.T, s cache.Store, c *clock) {
	for round := range 20 {
		key := "/race/" + strconv.Itoa(round)
		purgeKey, prefix := key, round%2 == 1
		if prefix {
			purgeKey = "/race/"
		}
		began := c.Advance(time.Millisecond) // after the last round's purge
		at := c.Advance(time.Millisecond)
		// The purge waits for a first write, so that it falls among
		// writes rather than before them.
		wrote := make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for {
					err := s.Set(bg, key, response(strconv.Itoa(w)), time.Hour, cache.Cond{Since: began})
					once.Do(func() { close(wrote) })
					if errors.Is(err, cache.ErrPurged) {
						return
					}
					if err != nil {
						t.Errorf("round %d: Set: %v", round, err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			<-wrote
			if _, err := s.Purge(bg, purgeKey, prefix, at); err != nil {
				t.Errorf("round %d: Purge: %v", round, err)
			}
		})
		wg.Wait()
		want(t, s, key, nil)
	}
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
