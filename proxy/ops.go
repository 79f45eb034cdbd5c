package proxy

import (
	"context"
	"corral/proxy/metrics"
	"errors"
	"fmt"
	"net"
	"time"
)

// Ready reports why the proxy cannot serve, or nil when it can: the
// upstream answered lately or accepts a connection now, or the store holds
// responses it could serve stale.
func (p *Proxy) Ready(ctx context.Context) error {
	if last := p.guard.Stats().LastAnswer; !last.IsZero() && p.now().Sub(last) < readyRecent {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyDialTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.fetcher.Origin.HostPort())
	if err == nil {
		conn.Close()
		return nil
	}
	if s := p.store.Sizer(); s != nil && s.Len() > 0 {
		return nil
	}
	return fmt.Errorf("upstream unreachable (%v) and nothing cached", err)
}

// readyRecent is how recent an upstream answer must be to count as proof
// of reachability; readyDialTimeout bounds the probe made otherwise.
const (
	readyRecent      = 10 * time.Second
	readyDialTimeout = time.Second
)

// Metrics returns the proxy's Prometheus collector, to register where the
// operator serves metrics.
func (p *Proxy) Metrics() *metrics.Metrics { return p.metrics }

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// Wait blocks until the fetches started so far, background refreshes
// included, have finished.
func (p *Proxy) Wait() { p.herds.flights.Wait(context.Background()) } //nolint:errcheck // no deadline

// Shutdown waits, until ctx ends, for the fetches under way to finish,
// background refreshes and those whose clients left included, then stops
// hearing the fleet's purges, closes the idle upstream connections and
// stops the store New made. Call it
// once the server in front has stopped handing the proxy requests.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.herds.flights.Wait(ctx)
	for i := len(p.stops) - 1; i >= 0; i-- {
		p.stops[i]()
	}
	if err != nil {
		return fmt.Errorf("fetches still running at the deadline: %w", err)
	}
	return nil
}

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
	if p.fetcher.Fleet != nil {
		if _, ferr := p.fetcher.Fleet.Purge(context.Background(), uri, prefix, at); ferr != nil {
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
	if p.fetcher.Fleet != nil {
		p.fetcher.Fleet.Announce(target, false, at)
	}
}
