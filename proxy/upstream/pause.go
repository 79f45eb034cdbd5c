package upstream

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// pauses remembers, key by key, the pauses the origin asked for with
// Retry-After (RFC 9110 section 10.2.3), and tells when such answers add
// up to evidence that the origin as a whole is overloaded: answers for
// overloadEndpoints distinct endpoints within overloadWindow.
//
// Clients choose the keys, so the records are bounded: with maxPausedKeys
// keys recorded, a new key's pause is not recorded, and that key is
// asked again within the guard's rate and in-flight caps. The alternatives
// are worse: growing would give memory to whoever finds URLs that fail,
// and pausing the whole origin would give them every other URL.
//
// Every upstream request looks its key up, a herd of them at once, so a
// lookup takes the read lock only, and none at all while no key is
// recorded: a request that got its turn from the rate cap must not then
// queue on a lock.
type pauses struct {
	n       atomic.Int64 // len(keys), read without the lock
	mu      sync.RWMutex
	keys    map[string]time.Time // when each key's pause ends
	sweepAt time.Time            // no record expires before this
	recent  []overload           // at most overloadEndpoints-1, one per endpoint
}

// overload is one endpoint's answer that said the origin was overloaded.
type overload struct {
	endpoint string
	at       time.Time
}

const (
	maxPausedKeys     = 10_000
	overloadEndpoints = 3
	overloadWindow    = 10 * time.Second
)

// hold pauses key until end, unless a pause that ends later runs already
// or the records are full.
func (p *pauses) hold(key string, end, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	cur, ok := p.keys[key]
	if !ok && len(p.keys) >= maxPausedKeys {
		return
	}
	if p.keys == nil {
		p.keys = make(map[string]time.Time)
	}
	if cur.After(end) {
		end = cur
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
	n := 0
	for _, end := range p.keys {
		if end.After(now) {
			n++
		}
	}
	return n
}

// sweep drops the records that have expired, if one may have: a map of
// live records is not walked again until the first of them expires.
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

// overloaded records that endpoint's answer at now said the origin was
// overloaded, and reports whether overloadEndpoints distinct endpoints have
// said so within overloadWindow. Evidence that reported true is spent:
// after the pause it leads to, the origin has to say it again.
func (p *pauses) overloaded(endpoint string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.recent[:0]
	for _, o := range p.recent {
		if o.endpoint != endpoint && now.Sub(o.at) < overloadWindow {
			kept = append(kept, o)
		}
	}
	if len(kept)+1 >= overloadEndpoints {
		clear(p.recent)
		p.recent = p.recent[:0]
		return true
	}
	p.recent = append(kept, overload{endpoint, now})
	return false
}

// endpoint names the part of the origin that an answer for the escaped
// path (below the upstream's own path) speaks for, as evidence of an
// overloaded origin: its first segment, lower-cased, without ;params,
// however many slashes lead to it, and with %2F, %3B and %5C read as the
// separators an origin may decode them to. /Broken/a, //broken/ and
// /broken;x=1 are all "broken".
//
// The evidence must take several parts of the origin failing at once, and
// one client chooses the path freely: not only the query but the slashes,
// the case, the ;params, and whatever a catch-all route swallows. Many
// frameworks route all of those to the one handler, so each variant of a
// path counted on its own would let one client make one broken handler
// look like an overloaded origin. The first segment is coarse on purpose.
// Its price: /api/stats and /api/users are one endpoint, so an origin
// whose whole API lies under one prefix gets per-URL pauses only, never an
// origin-wide one. That fails safe. Without the origin-wide pause, corral
// keeps asking about each URL at most once per pause, within the
// upstream caps; with it too easy to reach, one client stalls every
// uncached URL for everyone.
func endpoint(path string) string {
	path = strings.TrimLeft(path, "/")
	for i := 0; i < len(path); i++ {
		if c := path[i]; c == '/' || c == ';' || c == '%' && encodedSeparator(path[i:]) {
			path = path[:i]
			break
		}
	}
	return strings.ToLower(path)
}

// encodedSeparator reports whether s starts with '/', ';' or '\\'
// percent-encoded.
func encodedSeparator(s string) bool {
	if len(s) < 3 {
		return false
	}
	s = s[:3]
	return strings.EqualFold(s, "%2F") || strings.EqualFold(s, "%3B") || strings.EqualFold(s, "%5C")
}
