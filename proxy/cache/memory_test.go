package cache_test

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/cache"
	"corral/proxy/cache/acceptance"
	"corral/proxy/internal/fakeclock"
)

var bg = context.Background()

func newMemory(t *testing.T, cfg cache.Config) *cache.Memory {
	m := cache.NewMemory(cfg)
	t.Cleanup(m.Close)
	return m
}

func TestMemoryAcceptance(t *testing.T) {
	acceptance.Run(t, func(t *testing.T, now func() time.Time) cache.Store {
		return newMemory(t, cache.Config{MaxBytes: 64 << 20, Keep: time.Minute, Now: now})
	})
}

// local is what a proxy might keep beside an entry.
type local struct {
	status string
}

func TestGetLocalHandsBackWhatSetLocalKept(t *testing.T) {
	m := newMemory(t, cache.Config{MaxBytes: 1 << 20})
	e := &cache.Entry{Kind: cache.Response, ID: cache.NewID(), Status: 203}
	if err := m.SetLocal(bg, "/a", e, &local{status: "203"}, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	got, l := m.GetLocal("/a")
	if got != e {
		t.Errorf("GetLocal returned %p, want the entry stored, %p", got, e)
	}
	if diff := cmp.Diff(&local{status: "203"}, l, cmp.AllowUnexported(local{})); diff != "" {
		t.Errorf("local value (-want +got):\n%s", diff)
	}
	if got, l := m.GetLocal("/absent"); got != nil || l != nil {
		t.Errorf("GetLocal of an absent key = %v, %v; want nil, nil", got, l)
	}
	// A plain Set, another process's entry say, keeps nothing beside it.
	if err := m.Set(bg, "/a", e, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, l := m.GetLocal("/a"); l != nil {
		t.Errorf("after Set, GetLocal kept %v beside the entry, want nil", l)
	}
}

// TestGetLocalAllocatesNothing: the hit path's one allocation per hit is
// the proxy's to spend, not the store's.
func TestGetLocalAllocatesNothing(t *testing.T) {
	m := newMemory(t, cache.Config{MaxBytes: 1 << 20})
	if err := m.SetLocal(bg, "/a", &cache.Entry{ID: 1, Status: 200}, &local{}, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	var sink *local
	allocs := testing.AllocsPerRun(1000, func() {
		_, l := m.GetLocal("/a")
		sink = l.(*local)
	})
	if allocs != 0 || sink == nil {
		t.Errorf("GetLocal and the assertion of its value allocate %v times, want 0", allocs)
	}
}

func TestUniqueKeyFloodStaysWithinBudget(t *testing.T) {
	const budget = 4 << 20
	m := newMemory(t, cache.Config{MaxBytes: budget})
	body := make([]byte, 200)
	var peak int64
	for i := range 30_000 {
		e := &cache.Entry{ID: cache.NewID(), Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: body}
		if err := m.Set(bg, "/api/stats?nonce="+strconv.Itoa(i), e, time.Hour, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
		if i%5_000 == 0 {
			peak = max(peak, m.Bytes())
		}
	}
	peak = max(peak, m.Bytes())
	if peak > budget {
		t.Errorf("store held %d bytes, over its %d budget", peak, budget)
	}
	if m.Len() == 0 {
		t.Errorf("store kept nothing")
	}
	if m.Evictions() == 0 {
		t.Errorf("no evictions counted for 30,000 entries of over 1 KiB in a 4 MiB store")
	}
}

func TestBytesCountsTheLatestWrite(t *testing.T) {
	for i := range 100 {
		m := cache.NewMemory(cache.Config{MaxBytes: 1 << 20})
		e := &cache.Entry{ID: 1, Status: 200, Body: make([]byte, 100)}
		if err := m.Set(bg, "/k", e, time.Hour, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
		if got, want := m.Bytes(), int64(len("/k")+cache.Size(e)); got != want {
			t.Fatalf("try %d: Bytes() = %d right after storing one entry, want %d", i, got, want)
		}
		m.Close()
	}
}

// TestPurgeRecordsOlderThanKeepAreGone: once swept, a record no longer
// forbids anything by itself, so a write whose fetch began before what is
// kept is refused.
func TestPurgeRecordsOlderThanKeepAreGone(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	m := newMemory(t, cache.Config{MaxBytes: 1 << 20, Keep: time.Minute})
	for i := range cache.MaxPurgeRecords {
		if _, err := m.Purge(bg, "/p/"+strconv.Itoa(i), false, t0); err != nil {
			t.Fatal(err)
		}
	}
	// Past the bound, two minutes on: the sweep drops every record.
	if _, err := m.Purge(bg, "/q", false, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	e := &cache.Entry{ID: 1, Status: 200}
	for since, want := range map[time.Duration]error{
		30 * time.Second: cache.ErrPurged, // before the cutoff at t0+1m
		90 * time.Second: nil,             // after it, and /p/7's record is gone
	} {
		err := m.Set(bg, "/p/7", e, time.Hour, cache.Cond{Since: t0.Add(since)})
		if !errors.Is(err, want) {
			t.Errorf("Set begun at t0+%v: %v, want %v", since, err, want)
		}
	}
}

// TestExpiredEntriesLeaveTheBudget: entries past their ttl on the store's
// clock stop counting once otter cleans up, which Bytes asks for.
func TestExpiredEntriesLeaveTheBudget(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)) // otter's cleanup goroutine reads it too
	m := newMemory(t, cache.Config{MaxBytes: 1 << 20, Now: clk.Now})
	for i := range 10 {
		if err := m.Set(bg, "/e/"+strconv.Itoa(i), &cache.Entry{ID: 1, Status: 200}, time.Second, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	if m.Bytes() == 0 {
		t.Fatal("ten entries weigh nothing")
	}
	clk.Advance(2 * time.Second)
	if b, n := m.Bytes(), m.Len(); b != 0 || n != 0 {
		t.Errorf("after expiry the store holds %d bytes in %d entries, want none", b, n)
	}
}

// TestTombstonesStayBounded floods purges of unique URIs, as a client
// sending unsafe requests can: the records (the proxy's tombstones once)
// stay bounded, and a fetch that began before the flood still does not
// store.
func TestTombstonesStayBounded(t *testing.T) {
	m := newMemory(t, cache.Config{MaxBytes: 1 << 20, Keep: 30 * time.Second})
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i := range 5 * cache.MaxPurgeRecords {
		if _, err := m.Purge(bg, "/k/"+strconv.Itoa(i), false, t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if keys, prefixes := cache.PurgeRecords(m); keys > cache.MaxPurgeRecords || prefixes > cache.MaxPurgeRecords {
			t.Fatalf("after %d purges, %d key and %d prefix records; want at most %d each", i+1, keys, prefixes, cache.MaxPurgeRecords)
		}
	}
	e := &cache.Entry{ID: 1, Status: 200}
	if err := m.Set(bg, "/k/0", e, time.Hour, cache.Cond{Since: t0}); !errors.Is(err, cache.ErrPurged) {
		t.Errorf("a fetch that began before its key was purged stored its answer: Set = %v, want %v", err, cache.ErrPurged)
	}
	if err := m.Set(bg, "/never/purged", e, time.Hour, cache.Cond{Since: t0.Add(time.Hour)}); err != nil {
		t.Errorf("a fetch that began after every purge was refused: %v", err)
	}
}
