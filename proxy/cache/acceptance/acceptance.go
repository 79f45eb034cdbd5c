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
