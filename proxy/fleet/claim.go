package fleet

import (
	"context"
	"errors"
	"strconv"
	"time"

	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
)

// await registers a waiter for a wake-up of key. The Claim that waits
// registers before it looks in Redis: a wake-up published between its
// look and its wait then still reaches it.
func (f *Fleet) await(key string) chan struct{} {
	ch := make(chan struct{})
	f.mu.Lock()
	f.waiters[key] = append(f.waiters[key], ch)
	f.mu.Unlock()
	return ch
}

// unwait removes the waiter ch of key, if a wake-up has not already.
func (f *Fleet) unwait(key string, ch chan struct{}) {
	if ch == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.waiters[key]
	for i, c := range w {
		if c == ch {
			w = append(w[:i], w[i+1:]...)
			break
		}
	}
	if len(w) == 0 {
		delete(f.waiters, key)
	} else {
		f.waiters[key] = w
	}
}

// wake wakes every waiter of key.
func (f *Fleet) wake(key string) {
	f.mu.Lock()
	w := f.waiters[key]
	delete(f.waiters, key)
	f.mu.Unlock()
	for _, ch := range w {
		close(ch)
	}
}

// Use is what a Judge makes of an entry the shared tier holds.
type Use int

const (
	// Fetch: not good enough; the caller needs a new response.
	Fetch Use = iota
	// Take: serve it (a fresh response, a Vary marker, a pass mark).
	Take
)

// Judge says what an entry found in the shared tier is good for.
type Judge func(e *cache.Entry) Use

// Claim is what Fleet.Claim found for a key.
type Claim struct {
	// Entry is what the shared tier holds and the judge took. With a
	// Lease, it is the stale response found there (nil if none), which
	// the caller may revalidate.
	Entry *cache.Entry

	// Expires is when Entry's life in the shared tier ends.
	Expires time.Time

	// Lease, when not nil, makes the caller the replica that fetches the
	// key for the fleet: it must Put what it fetched and Release.
	Lease *Lease

	// Local says the holder of the last lease left a local-only mark:
	// the caller fetches on its own. Entry is then the stale response
	// the shared tier holds, if any, which may stand in for a failure.
	Local bool
}

// Claim returns, for key, an entry of the shared tier that judge takes, or
// the lease to fetch the key for the whole fleet. While another replica
// holds the lease and nothing is taken, it waits to be woken (it registers
// for the wake-up before it looks, and looks again every Recheck in case
// the message was lost), until ctx ends. A lease whose holder died expires,
// and one waiter takes it over.
//
// A zero Claim (no Entry, no Lease) says: fetch on your own, without the
// fleet. Claim returns one when Redis fails or the breaker is open, and
// when ctx ends while it waits; and one with Local, and the stale entry if
// there is one, when the holder left a local-only mark. It
// counts and logs its failures itself, and never returns an error.
func (f *Fleet) Claim(ctx context.Context, key string, judge Judge) Claim {
	if f.closing.Err() != nil {
		return Claim{}
	}
	token := f.id + "-" + strconv.FormatUint(f.tokens.Add(1), 36)
	var ch chan struct{}
	defer func() { f.unwait(key, ch) }()
	// force asks for the lease even of a fresh entry: the judge wants
	// something newer. waited and woken tell a takeover (the lease
	// expired under a holder that never released it) from a hand-over.
	force, waited, woken := false, false, false
	for {
		f.unwait(key, ch)
		ch = f.await(key)
		found, err := f.lookup(ctx, key, token, force)
		if err != nil && !errors.Is(err, redisstore.ErrUndecodable) {
			// Counted by call; an undecodable entry is a miss, with
			// the lease outcome reported beside it.
			f.stats.unavailable.Add(1)
			return Claim{}
		}
		e := found.Entry
		if found.LocalOnly {
			f.stats.localMarks.Add(1)
			c := Claim{Local: true}
			if e != nil && e.Kind == cache.Response {
				c.Entry, c.Expires = e, found.Expires
			}
			return c
		}
		use := Fetch
		if e != nil {
			use = judge(e)
		}
		switch found.Lease {
		case redisstore.NoLease: // fresh: no lease asked for
			if e != nil && use == Take {
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
			if force { // Acquire always asks; nothing to wait for
				f.stats.unavailable.Add(1)
				return Claim{}
			}
			force = true
			continue
		case redisstore.LeaseTaken:
			if e != nil && use == Take {
				f.release(ctx, key, token)
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
			f.stats.taken.Add(1)
			if waited && !woken {
				f.stats.takeovers.Add(1)
			}
			c := Claim{Lease: f.newLease(ctx, key, token)}
			if e != nil && e.Kind == cache.Response {
				c.Entry, c.Expires = e, found.Expires
			}
			return c
		case redisstore.LeaseHeld:
			if e != nil && use == Take {
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
		}
		if !waited {
			waited = true
			f.stats.waited.Add(1)
		}
		force = false
		t := time.NewTimer(f.recheck)
		select {
		case <-ch:
			woken = true
			f.stats.wokenByMessage.Add(1)
		case <-t.C:
			f.stats.wokenByRecheck.Add(1)
		case <-ctx.Done():
			t.Stop()
			f.stats.abandoned.Add(1)
			return Claim{}
		case <-f.closing.Done():
			t.Stop()
			return Claim{}
		}
		t.Stop()
	}
}

// lookup is Store.Lookup, or Acquire when force is set, through the
// breaker. It counts an undecodable entry, and logs the first.
func (f *Fleet) lookup(ctx context.Context, key, token string, force bool) (redisstore.Found, error) {
	var found redisstore.Found
	o, fn := opLookup, f.store.Lookup
	if force {
		o, fn = opAcquire, f.store.Acquire
	}
	err := f.call(ctx, o, func(ctx context.Context) (err error) {
		found, err = fn(ctx, key, token, f.leaseTTL)
		return err
	})
	if errors.Is(err, redisstore.ErrUndecodable) {
		f.stats.decodeErrors.Add(1)
		f.decodeOnce.Do(func() {
			f.log.Warn("fleet: an entry in Redis does not decode; taken as a miss (logged once)", "err", err)
		})
	}
	return found, err
}
