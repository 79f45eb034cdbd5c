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
type tombstones struct {
	keep time.Duration // a fetch's longest life: the upstream timeout

	mu       sync.RWMutex
	keys     map[string]time.Time
	prefixes map[string]time.Time // "" stands for every key
}

// forget records that key, or every key starting with it when prefix is
// true, was invalidated at now, and calls drop while no store can run.
func (t *tombstones) forget(key string, prefix bool, now time.Time, drop func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := &t.keys
	if prefix {
		m = &t.prefixes
	}
	if *m == nil {
		*m = make(map[string]time.Time)
	}
	if len(*m) >= 1024 {
		// No fetch outlives keep, so older tombstones guard nothing.
		for k, at := range *m {
			if now.Sub(at) > t.keep {
				delete(*m, k)
			}
		}
	}
	(*m)[key] = now
	drop()
}

// store calls set unless key was invalidated at or after start, or start
// is so long ago that the tombstones that could say so are gone. It
// reports whether it called set.
func (t *tombstones) store(key string, start, now time.Time, set func()) bool {
	if now.Sub(start) > t.keep {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if at, ok := t.keys[key]; ok && !at.Before(start) {
		return false
	}
	for p, at := range t.prefixes {
		if !at.Before(start) && strings.HasPrefix(key, p) {
			return false
		}
	}
	set()
	return true
}
