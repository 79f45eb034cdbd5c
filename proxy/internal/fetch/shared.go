package fetch

import (
	"context"
	"errors"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
)

// The tier the fleet shares (package fleet) sits behind this replica's
// memory, and only a fetch reaches it: a fresh hit in memory makes no call
// to it. A fetch, run once per key at a time by this replica's flights,
// asks the fleet for the key (claim): what another replica stored there,
// or the lease to fetch it for every replica. The holder stores what it
// fetched in both tiers and releases the lease, which wakes the replicas
// that wait; they take the answer from the shared tier.

// claim asks the fleet for in's key. It returns a Result when the shared
// tier answers in, and otherwise the fleet's Claim: with a lease, in's
// fetch is the fleet's; without one, it goes upstream on its own (as it
// does past a pass mark there while this replica holds a copy of its own,
// which the mark does not replace). With nothing stored here to validate,
// it also returns, promoted into memory, the stale response the shared
// tier holds, to revalidate or to stand in for a failure.
func (fc *Fetcher) claim(ctx context.Context, in Flight) (c fleet.Claim, f *Result, stale *stored.Entry) {
	judge := fc.judge(in)
	for range 2 {
		c = fc.Fleet.Claim(ctx, in.VKey, judge)
		switch {
		case c.Entry == nil:
			return c, nil, nil
		case c.Lease != nil || c.Local:
			// c.Entry is stale. This replica's own copy, if it has one,
			// is what the fetch validates: the shared tier's must not
			// replace it in memory.
			if in.Stale == nil {
				if l, err := fc.promote(ctx, in.VKey, c); err == nil {
					stale = l
				}
			}
			return c, nil, stale
		}
		l, err := fc.promote(ctx, in.VKey, c)
		switch {
		case errors.Is(err, cache.ErrPurged):
			// This replica knows of a purge since it was fetched, which
			// the shared tier missed (Redis failed then) or could not
			// see (past the memory's records): not that one. The fetch
			// that follows replaces it for the fleet.
			refused, base := c.Entry.ID, judge
			judge = func(e *cache.Entry) fleet.Use {
				if e.ID == refused {
					return fleet.Fetch
				}
				return base(e)
			}
		case errors.Is(err, cache.ErrConflict):
			// A pass mark, and this replica holds a live entry for the
			// key: its own copy, which the fetch that left the mark
			// never saw (a body too large for Redis lives only here).
			// The mark sends this fetch upstream on its own, as it
			// would without the copy; the copy stays, to be validated,
			// and to stand in for a failing origin.
			return fleet.Claim{}, nil, nil
		case c.Entry.Kind != cache.Response || l.Decision.State(fc.Now()) != freshness.Fresh:
			// A Vary marker, a pass mark, or a response to serve stale
			// while another replica refreshes it: now in memory, where
			// the requests of the flight look again and find it.
			return fleet.Claim{}, &Result{Source: LookAgain}, nil
		default:
			return fleet.Claim{}, &Result{Source: SharedTier, Entry: l, Own: l.Header}, nil
		}
	}
	return fleet.Claim{}, nil, nil // refused twice: on our own
}

// judge says what an entry of the shared tier is good for to in: what a
// stored response in memory would be good for to the request that
// started in, by the same rules (decide).
func (fc *Fetcher) judge(in Flight) fleet.Judge {
	return func(e *cache.Entry) fleet.Use {
		if e.Kind != cache.Response {
			return fleet.Take // a Vary marker, a pass mark: followed in memory
		}
		if s := in.Stale; s != nil && (e.ID == s.ID || !e.ResponseTime.After(s.ResponseTime)) {
			// The copy being validated, or an older one.
			return fleet.Fetch
		}
		use := fc.Store.Recompute(in.VKey, e).Decision.UseFor(fc.Now(), in.Req, fc.Revalidate)
		switch {
		case use.State == freshness.Fresh:
			return fleet.Take
		case use.State == freshness.StaleWhileRevalidate && !in.Background:
			// Served stale here at once; the background refresh that
			// starts then takes the lease, or waits for the replica
			// that holds it.
			return fleet.Take
		}
		return fleet.Fetch
	}
}

// promote stores c's entry, read from the shared tier under key, in
// memory where fleet.CondFor lets it, and returns it as this replica uses
// it: its freshness computed from its stored times, never restarted. It
// refuses with cache.ErrPurged when this replica knows of a purge of key
// since the entry was fetched (its own, or one another replica
// announced), which the shared tier may not have seen: the entry is not
// to be served; and with cache.ErrConflict when the entry is a pass mark
// and memory holds a live entry under key, which it must not replace. A
// failure of the store is logged, and the entry served all the same.
func (fc *Fetcher) promote(ctx context.Context, key string, c fleet.Claim) (*stored.Entry, error) {
	l := fc.Store.Recompute(key, c.Entry)
	ttl := c.Expires.Sub(fc.Now())
	if ttl <= 0 {
		return l, nil // expired in Redis a moment ago: served once, not kept
	}
	err := fc.Store.Set(ctx, key, l, ttl, fleet.CondFor(c.Entry, c.Entry.RequestTime))
	if errors.Is(err, cache.ErrPurged) || errors.Is(err, cache.ErrConflict) {
		return l, err
	}
	return l, nil
}

// sharer returns the stored.Sharer that writes to the shared tier under
// lease, or nil when the fetch holds none.
func (fc *Fetcher) sharer(ctx context.Context, lease *fleet.Lease) stored.Sharer {
	if lease == nil {
		return nil
	}
	return func(key string, e *stored.Entry, ttl time.Duration, fresh, since time.Time) bool {
		return fc.share(ctx, lease, key, e, ttl, fresh, since)
	}
}

// share writes e, stored in memory under key for ttl and fresh until
// fresh, to the shared tier when lease makes this fetch the fleet's, and
// reports whether it landed. Responses with Set-Cookie, and bodies fetched
// with credentials, never do, whatever decided they may be stored.
func (fc *Fetcher) share(ctx context.Context, lease *fleet.Lease, key string, e *stored.Entry, ttl time.Duration, fresh, since time.Time) bool {
	if lease == nil || e.Credentialed || e.Entry.Header["Set-Cookie"] != nil {
		return false
	}
	return lease.Put(ctx, key, e.Entry, ttl, fresh, since) == nil
}

// sharePass leaves a pass mark for key in the shared tier, for PassTTL.
func (fc *Fetcher) sharePass(ctx context.Context, lease *fleet.Lease, key, reason string, since time.Time) bool {
	e := &cache.Entry{Kind: cache.PassMark, ID: cache.NewID(), Reason: reason}
	return lease.Put(ctx, key, e, fc.PassTTL, fc.Now().Add(fc.PassTTL), since) == nil
}

// afterLease is what the lease holder's fetch leaves the other replicas,
// which then fetch the key on their own for a while (fleet.Lease.Release),
// or take the answer from the shared tier.
type afterLease uint8

const (
	// answerShared: the answer is in the shared tier for them.
	answerShared afterLease = iota
	// neverShared: the answer cannot go there (not storable, too large
	// for Redis), and will not next time either: they fetch on their own
	// for PassTTL, as a pass mark holds, so that their clients do not
	// queue behind one replica's fetch after another.
	neverShared
	// notNow: the fetch failed, its answer was too large for the buffer
	// budget's room at that moment, or a copy is stored and the answer
	// may be one client's doing (a field the origin refused): they go on
	// their own for RefreshBackoff, at once rather than one after
	// another, and the fleet shares again soon.
	notNow
)

// afterLeaseOf is what the fetch that brought f or err leaves the other
// replicas; cached says a copy of the key is stored.
func afterLeaseOf(f *Result, err error, cached bool) afterLease {
	switch {
	case err != nil || f == nil:
		return notNow
	case f.inShared:
		return answerShared
	case f.Stream != nil && f.Stream.Detail == cachestatus.BuffersFull:
		return notNow // the pressure of a moment
	case !cached && !httprule.IsServerError(f.Entry.Status):
		return neverShared
	}
	return notNow
}

// localFor is how long the other replicas fetch the key on their own
// after a.
func (fc *Fetcher) localFor(a afterLease) time.Duration {
	switch a {
	case answerShared:
		return 0
	case neverShared:
		return fc.PassTTL
	}
	return RefreshBackoff
}
