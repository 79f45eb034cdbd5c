package upstream

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// pauses remembers, key by key, the pauses the origin asked for with
// Retry-After (RFC 9110 section 10.2.3), and the 429s that paused nothing
// yet because one client alone got them; and it tells when such answers
// add up to evidence that the origin as a whole is overloaded: answers for
// overloadEndpoints distinct endpoints within overloadWindow.
//
// Clients choose the keys, so the records are bounded: with maxPausedKeys
// keys recorded, a new key's pause or 429 is not recorded, and that key is
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
	keys    map[string]keyRecord
	sweepAt time.Time  // no record expires before this
	recent  []overload // at most overloadEndpoints-1, one per endpoint
}

// keyRecord is what pauses knows of one key.
type keyRecord struct {
	end time.Time // when the key's pause ends; zero when none was asked

	// limited holds the latest 429 of each client that got one for the
	// key within overloadWindow, while they are fewer than quotaClients:
	// at most quotaClients-1 addresses, whatever clients do.
	limited [quotaClients - 1]sighting
}

// sighting is one client's 429 for a key.
type sighting struct {
	client netip.Addr
	at     time.Time
}

// expires returns when r no longer says anything: its pause has ended and
// its 429s are out of the window.
func (r *keyRecord) expires() time.Time {
	t := r.end
	for _, s := range r.limited {
		if !s.at.IsZero() {
			t = later(t, s.at.Add(overloadWindow))
		}
	}
	return t
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

	// quotaClients is how many distinct clients must get a 429 for a
	// key within overloadWindow before it pauses the key: fewer may be
	// one client's own quota, which its API key or cookie spent.
	quotaClients = 2
)

// hold pauses key until end, unless a pause that ends later runs already
// or the records are full.
func (p *pauses) hold(key string, end, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	r, ok := p.keys[key]
	if !ok && len(p.keys) >= maxPausedKeys {
		return
	}
	r.end = later(r.end, end)
	p.put(key, r)
}

// holdShared records that the origin answered key with a 429 at now to a
// request made for client, and once 429s for key came for quotaClients
// distinct clients within overloadWindow (a limit, then, that is not one
// client's own) pauses key until end as hold does, and reports true. The
// evidence is spent then. With the records full, a new key's 429 is not
// recorded and reports false.
func (p *pauses) holdShared(key string, client netip.Addr, end, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	r, ok := p.keys[key]
	if !ok && len(p.keys) >= maxPausedKeys {
		return false
	}
	others, slot := 0, -1
	for i, s := range r.limited {
		switch {
		case s.at.IsZero() || now.Sub(s.at) >= overloadWindow:
			if slot < 0 {
				slot = i
			}
		case s.client == client:
			slot = i // this client's own: replaced, never counted twice
		default:
			others++
		}
	}
	if others+1 >= quotaClients {
		r.limited = [quotaClients - 1]sighting{}
		r.end = later(r.end, end)
		p.put(key, r)
		return true
	}
	// others < quotaClients-1, so a slot is free or is client's.
	r.limited[slot] = sighting{client, now}
	p.put(key, r)
	return false
}

// put stores r for key, with p.mu held.
func (p *pauses) put(key string, r keyRecord) {
	if p.keys == nil {
		p.keys = make(map[string]keyRecord)
	}
	if exp := r.expires(); len(p.keys) == 0 || exp.Before(p.sweepAt) {
		p.sweepAt = exp
	}
	p.keys[key] = r
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
	return p.keys[key].end
}

// live returns the number of keys paused at now.
func (p *pauses) live(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	n := 0
	for _, r := range p.keys {
		if r.end.After(now) {
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
	for k, r := range p.keys {
		switch end := r.expires(); {
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

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
