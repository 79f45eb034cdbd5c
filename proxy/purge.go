package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Purge drops what is stored for the request URI uri (path and query),
// or with prefix for every URI that starts with uri ("" for all), and
// keeps the fetches for them already under way from storing their
// answers afterwards. It reports how many entries it dropped here.
//
// In a fleet, the purge reaches the shared tier too, and every other
// replica drops its copies. Should the shared tier fail, the purge holds
// on this replica alone (it refuses the shared tier's copies fetched
// before it), and Purge returns the error: the others may serve the
// purged response until it expires, or until a purge that succeeds.
func (p *Proxy) Purge(uri string, prefix bool) (int, error) {
	at := p.now()
	n, err := p.purgeHere(uri, prefix, at)
	if p.fleet != nil {
		if _, ferr := p.fleet.Purge(context.Background(), uri, prefix, at); ferr != nil {
			p.log.Warn("purge of the shared tier failed; other replicas may serve the purged response until it expires", "uri", uri, "prefix", prefix, "err", ferr)
			err = errors.Join(err, fmt.Errorf("purging the shared tier: %w", ferr))
		}
	}
	return n, err
}

// purgeHere purges this replica's store, as Purge describes, at at, and
// counts and logs it.
func (p *Proxy) purgeHere(uri string, prefix bool, at time.Time) (int, error) {
	n, err := p.store.Purge(uri, prefix, at)
	if err != nil {
		p.log.Warn("cache purge failed", "uri", uri, "prefix", prefix, "err", err)
	}
	p.stats.Purged.Add(int64(n))
	return n, err
}

// purgedElsewhere drops this replica's copies of what another replica
// purged at at.
func (p *Proxy) purgedElsewhere(key string, prefix bool, at time.Time) {
	p.purgeHere(key, prefix, at) //nolint:errcheck // logged
}

// invalidate drops what is stored for target, which a successful unsafe
// request invalidated at at (RFC 9111 section 4.4): this replica's memory
// at once; the fleet's, in the background (fleet.Announce): the client's
// answer does not wait on Redis.
func (p *Proxy) invalidate(target string, at time.Time) {
	p.purgeHere(target, false, at) //nolint:errcheck // logged; the client's answer stands
	if p.fleet != nil {
		p.fleet.Announce(target, false, at)
	}
}
