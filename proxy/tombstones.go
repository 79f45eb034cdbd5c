package proxy

import (
	"strings"
	"sync"
	"time"
)

// tombstones remember when keys, or every key under a prefix, were
// invalidated, for as long as a fetch that started earlier could still be
// running, so that such a fetch does not write the old response back
// after the invalidation.
//
// The check and the write it guards must be one step, or a purge could
// fall between them: store takes the read lock around both, forget takes
// the write lock around recording and deleting.
//
// Clients choose the URIs that unsafe requests invalidate, so the records
// are bounded: past maxTombstones live ones, they collapse into one
// "everything was invalidated now", which costs the fetches under way
// their store and nothing else.
type tombstones struct {
	keep time.Duration // a fetch's longest life: the upstream timeout

	mu       sync.RWMutex
	keys     map[string]time.Time
	prefixes map[string]time.Time // "" stands for every key
	cutoff   time.Time            // records older than this are gone
}

const maxTombstones = 10_000

// forget records that key, or every key starting with it when prefix is
// true, was invalidated at now, and calls drop while no store can run.
func (t *tombstones) forget(key string, prefix bool, now time.Time, drop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.keys == nil {
		t.keys, t.prefixes = make(map[string]time.Time), make(map[string]time.Time)
	}
	m := t.keys
	if prefix {
		m = t.prefixes
	}
	if len(m) >= maxTombstones {
		t.sweep(now)
		if len(m) >= maxTombstones/2 {
			// Still full of live records: one for everything stands
			// in for them all, so the next sweep is far off again.
			clear(t.keys)
			clear(t.prefixes)
			key, m = "", t.prefixes
		}
	}
	m[key] = now
	drop()
}

// sweep drops the records no running fetch can predate.
func (t *tombstones) sweep(now time.Time) {
	t.cutoff = now.Add(-t.keep)
	for _, m := range []map[string]time.Time{t.keys, t.prefixes} {
		for k, at := range m {
			if at.Before(t.cutoff) {
				delete(m, k)
			}
		}
	}
}

// store calls set unless key was invalidated at or after start, or start
// is older than the records kept, and reports what set did.
func (t *tombstones) store(key string, start time.Time, set func() bool) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if start.Before(t.cutoff) {
		return false // the record that could forbid it may be gone
	}
	if at, ok := t.keys[key]; ok && !at.Before(start) {
		return false
	}
	for p, at := range t.prefixes {
		if !at.Before(start) && strings.HasPrefix(key, p) {
			return false
		}
	}
	return set()
}
