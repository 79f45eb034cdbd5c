package proxy

import (
	"context"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
)

// The tier the fleet shares (package fleet) sits behind this replica's
// memory, and only a fetch reaches it: a fresh hit in memory makes no call
// to it. A fetch, run once per key at a time by this replica's flights,
// asks the fleet for the key (claim): what another replica stored there,
// or the lease to fetch it for every replica. The holder stores what it
// fetched in both tiers and releases the lease, which wakes the replicas
// that wait; they take the answer from the shared tier.

// claim asks the fleet for in's key. It returns a fetched when the shared
// tier answers in, and otherwise the fleet's Claim: with a lease, in's
// fetch is the fleet's; without one, it goes upstream on its own.
func (p *Proxy) claim(ctx context.Context, in flight) (fleet.Claim, *fetched) {
	since := p.now() // a purge from here on refuses what is read below
	c := p.fleet.Claim(ctx, in.vkey, p.judge(in))
	if c.Entry == nil || c.Lease != nil {
		return c, nil
	}
	l := p.promoteSince(ctx, in.vkey, c, since)
	if c.Entry.Kind != cache.Response || l.Decision.State(p.now()) != freshness.Fresh {
		// A Vary marker, a pass mark, or a response to serve stale while
		// another replica refreshes it: now in memory, where the
		// requests of the flight look again and find it.
		return fleet.Claim{}, &fetched{again: true}
	}
	return fleet.Claim{}, &fetched{entry: l, own: l.Header, shared: true}
}

// judge says what an entry of the shared tier is good for to in.
func (p *Proxy) judge(in flight) fleet.Judge {
	return func(e *cache.Entry) fleet.Use {
		if e.Kind != cache.Response {
			return fleet.Take // a Vary marker, a pass mark: followed in memory
		}
		now := p.now()
		if s := in.stale; s != nil && (e.ID == s.ID || !e.ResponseTime.After(s.ResponseTime)) {
			// The copy being validated, or an older one.
			return fleet.Fetch
		}
		l := p.recompute(in.vkey, e)
		switch l.Decision.State(now) {
		case freshness.Fresh:
			if s := in.stale; s != nil && s.Decision.State(now) == freshness.Fresh &&
				now.Sub(e.ResponseTime) >= p.revalidate {
				// in validates a fresh copy because its client asked
				// for a fresher one: the other replica's answer is
				// fresher, but not validated recently enough either.
				return fleet.Fetch
			}
			return fleet.Take
		case freshness.StaleWhileRevalidate:
			if !in.background {
				// Served stale here at once; the background refresh
				// that starts then takes the lease, or waits for the
				// replica that holds it.
				return fleet.Take
			}
		}
		return fleet.Fetch
	}
}

// promoteSince stores c's entry, read from the shared tier under key, in
// memory, unless a purge since forbids it, and returns it as this replica
// uses it: its freshness computed from its stored times, never restarted.
func (p *Proxy) promoteSince(ctx context.Context, key string, c fleet.Claim, since time.Time) *local {
	l := p.recompute(key, c.Entry)
	if ttl := c.Expires.Sub(p.now()); ttl > 0 {
		p.set(ctx, key, l, ttl, cache.Cond{Since: since})
	}
	return l
}

// promote is promoteSince for an entry read just now.
func (p *Proxy) promote(ctx context.Context, key string, c fleet.Claim) *local {
	return p.promoteSince(ctx, key, c, p.now())
}

// share writes e, stored in memory under key for ttl and fresh until
// fresh, to the shared tier when lease makes this fetch the fleet's, and
// reports whether it landed. Responses with Set-Cookie never do, whatever
// decided they may be stored.
func (p *Proxy) share(ctx context.Context, lease *fleet.Lease, key string, e *local, ttl time.Duration, fresh, since time.Time) bool {
	if lease == nil || e.Entry.Header["Set-Cookie"] != nil {
		return false
	}
	return lease.Put(ctx, key, e.Entry, ttl, fresh, since) == nil
}

// sharePass leaves a pass mark for key in the shared tier, for PassTTL.
func (p *Proxy) sharePass(ctx context.Context, lease *fleet.Lease, key, reason string, since time.Time) bool {
	e := &cache.Entry{Kind: cache.PassMark, ID: cache.NewID(), Reason: reason}
	return lease.Put(ctx, key, e, p.passTTL, p.now().Add(p.passTTL), since) == nil
}

// localFor is how long, after the lease holder's fetch that brought f or
// err, the other replicas fetch the key on their own: none when the
// answer is in the shared tier for them, else refreshBackoff, so that they
// go at once rather than one after another.
func (p *Proxy) localFor(f *fetched, err error) time.Duration {
	if err == nil && f != nil && f.inShared {
		return 0
	}
	return refreshBackoff
}

// purgedElsewhere drops this replica's copies of what another replica
// purged at at.
func (p *Proxy) purgedElsewhere(key string, prefix bool, at time.Time) {
	n, err := p.store.Purge(context.Background(), key, prefix, at)
	if err != nil {
		p.log.Warn("cache purge from another replica failed", "uri", key, "prefix", prefix, "err", err)
	}
	p.stats.Purged.Add(int64(n))
}
