package proxy

import (
	"sync"
	"time"
)

// tombstones remember when keys were invalidated, for as long as a fetch
// that started earlier could still be running, so that such a fetch does
// not write the old response back after the invalidation.
type tombstones struct {
	keep time.Duration // a fetch's longest life: the upstream timeout

	mu sync.Mutex
	m  map[string]time.Time
}

// add records that key was invalidated at now.
func (t *tombstones) add(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[string]time.Time)
	}
	if len(t.m) >= 1024 {
		// No fetch outlives keep, so older tombstones guard nothing.
		for k, at := range t.m {
			if now.Sub(at) > t.keep {
				delete(t.m, k)
			}
		}
	}
	t.m[key] = now
}

// since reports whether key was invalidated at or after start.
func (t *tombstones) since(key string, start time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.m[key]
	return ok && !at.Before(start)
}
