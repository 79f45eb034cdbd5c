package metrics

import (
	"context"
	"errors"
	"sync/atomic"
)

// Stats counts what a proxy did. Every field only grows. Each client
// request is counted once in Requests and once in exactly one outcome.
type Stats struct {
	Requests atomic.Int64 // client requests

	// Outcomes.
	Hits         atomic.Int64 // served fresh from the store
	StaleHits    atomic.Int64 // served stale while a background refresh ran
	Misses       atomic.Int64 // fetched from the origin by this request's flight
	Revalidated  atomic.Int64 // a stored response the origin confirmed with 304
	Coalesced    atomic.Int64 // answered by a flight another request started
	StaleOnError atomic.Int64 // served stale in place of an origin failure
	Passed       atomic.Int64 // sent upstream on their own (bypass, uncacheable)
	Errors       atomic.Int64 // answered 502 or 504 by corral for a shared fetch, or 504 for only-if-cached; a streamed answer cut short (a passed-through request's 502 or 504 counts in Passed)
	Abandoned    atomic.Int64 // the client left before its fetch ended
	StaleOnBusy  atomic.Int64 // served stale while the upstream guard held requests back
	Busy         atomic.Int64 // answered 503 by corral: the upstream guard held the request back, or the buffer budget had no room for a body the store no longer holds
	Rejected     atomic.Int64 // answered 4xx by corral: a request it will not forward

	Refreshes atomic.Int64 // background refreshes started
	Purged    atomic.Int64 // entries dropped by purges and unsafe requests
	Cut       atomic.Int64 // answers cut short: the store let go of their body and the buffer budget had no room for it, or a streamed body's reader held the others back or read too slowly

	// RuleDecisions counts, by the prefix of each of Config.Rules, the
	// upstream responses whose freshness the rule decided. New makes the
	// map; its keys never change.
	RuleDecisions map[string]*atomic.Int64

	// Upstream exchanges, shared fetches and passed requests alike, by
	// result.
	Upstream2xx, Upstream3xx, Upstream4xx, Upstream5xx atomic.Int64
	UpstreamTimeouts                                   atomic.Int64
	UpstreamErrors                                     atomic.Int64 // connection errors, bodies cut short
}

// UpstreamRequests is the number of upstream exchanges of every result.
func (s *Stats) UpstreamRequests() int64 {
	return s.Upstream2xx.Load() + s.Upstream3xx.Load() + s.Upstream4xx.Load() + s.Upstream5xx.Load() +
		s.UpstreamTimeouts.Load() + s.UpstreamErrors.Load()
}

// CountUpstream counts one upstream exchange that ended with status or err.
func (s *Stats) CountUpstream(status int, err error) {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		s.UpstreamTimeouts.Add(1)
	case err != nil:
		s.UpstreamErrors.Add(1)
	case status >= 500:
		s.Upstream5xx.Add(1)
	case status >= 400:
		s.Upstream4xx.Add(1)
	case status >= 300:
		s.Upstream3xx.Add(1)
	default:
		s.Upstream2xx.Add(1)
	}
}
