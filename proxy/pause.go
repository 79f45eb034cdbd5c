package proxy

import (
	"sync"
	"sync/atomic"
	"time"
)

// pauses remembers, key by key, the pauses the origin asked for with
// Retry-After (RFC 9110 section 10.2.3), and tells when such answers add up
// to evidence that the origin as a whole is overloaded: answers for
// overloadPaths distinct paths within overloadWindow.
//
// Clients choose the keys, so the records are bounded: with maxPausedKeys
// pauses running, a new key's pause is not recorded, and that key is asked
// again within the guard's rate and in-flight caps. The alternatives are
// worse: growing would give memory to whoever finds URLs that fail, and
// pausing the whole origin would give them every other URL.
//
// Every upstream request looks its key up, a herd of them at once, so a
// lookup takes the read lock only, and none at all while no pause is
// recorded: a request that got its turn from the rate cap must not then
// queue on a lock.
type pauses struct {
	n       atomic.Int64 // len(keys), read without the lock
	mu      sync.RWMutex
	keys    map[string]time.Time // when each key's pause ends
	sweepAt time.Time            // no pause recorded ends before this
	recent  []overload           // at most overloadPaths-1, one per path
}

// overload is one path's answer that said the origin was overloaded.
type overload struct {
	path string
	at   time.Time
}

const (
	maxPausedKeys  = 10_000
	overloadPaths  = 3
	overloadWindow = 10 * time.Second
)

// hold pauses key until end, unless a pause that ends later runs already
// or the records are full.
func (p *pauses) hold(key string, end, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		p.keys = make(map[string]time.Time)
	}
	p.sweep(now)
	if cur, ok := p.keys[key]; ok {
		p.keys[key] = later(cur, end)
		return
	}
	if len(p.keys) >= maxPausedKeys {
		return
	}
	if len(p.keys) == 0 || end.Before(p.sweepAt) {
		p.sweepAt = end
	}
	p.keys[key] = end
	p.n.Store(int64(len(p.keys)))
}

// until returns when key's pause ends: in the past, or the zero time,
// when none runs.
func (p *pauses) until(key string) time.Time {
	if p.n.Load() == 0 {
		return time.Time{}
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.keys[key]
}

// live returns the number of keys paused at now.
func (p *pauses) live(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	return len(p.keys)
}

// sweep drops the pauses that have ended, if one may have: a map of
// running pauses is not walked again until the first of them ends.
func (p *pauses) sweep(now time.Time) {
	if now.Before(p.sweepAt) {
		return
	}
	var next time.Time
	for k, end := range p.keys {
		switch {
		case !end.After(now):
			delete(p.keys, k)
		case next.IsZero() || end.Before(next):
			next = end
		}
	}
	p.sweepAt = next
	p.n.Store(int64(len(p.keys)))
}

// overloaded records that path's answer at now said the origin was
// overloaded, and reports whether overloadPaths distinct paths have said so
// within overloadWindow. Evidence that reported true is spent: after the
// pause it leads to, the origin has to say it again.
//
// Paths, not keys: a client chooses the query freely, and one broken
// endpoint answers 503 whatever the query is. It takes several endpoints
// failing at once to speak for the origin.
func (p *pauses) overloaded(path string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.recent[:0]
	for _, o := range p.recent {
		if o.path != path && now.Sub(o.at) < overloadWindow {
			kept = append(kept, o)
		}
	}
	if len(kept)+1 >= overloadPaths {
		clear(p.recent)
		p.recent = p.recent[:0]
		return true
	}
	p.recent = append(kept, overload{path, now})
	return false
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
