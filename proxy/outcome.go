package proxy

import (
	"corral/proxy/metrics"
	"sync/atomic"
)

// Stats counts what the proxy did (see metrics.Stats).
type Stats = metrics.Stats

// requestOutcome is what became of one client request: the handlers of the flow
// return one each, and ServeHTTP counts it, once.
type requestOutcome uint8

const (
	outNone         requestOutcome = iota // not answered yet: counted nowhere
	outHit                                // Hits
	outStale                              // StaleHits
	outMiss                               // Misses
	outRevalidated                        // Revalidated
	outCoalesced                          // Coalesced
	outStaleOnError                       // StaleOnError
	outPassed                             // Passed
	outError                              // Errors
	outAbandoned                          // Abandoned
	outStaleOnBusy                        // StaleOnBusy
	outBusy                               // Busy
	outRejected                           // Rejected
	outCut                                // Errors: a streamed answer cut short, the connection aborted

	// outOtherVariant is not an answer: the flight a request joined
	// answered another variant than the request's, and nothing was
	// written; handle looks again. Counted nowhere.
	outOtherVariant
)

// count counts one request with outcome o in s.
func (o requestOutcome) count(s *Stats) {
	var c *atomic.Int64
	switch o {
	case outHit:
		c = &s.Hits
	case outStale:
		c = &s.StaleHits
	case outMiss:
		c = &s.Misses
	case outRevalidated:
		c = &s.Revalidated
	case outCoalesced:
		c = &s.Coalesced
	case outStaleOnError:
		c = &s.StaleOnError
	case outPassed:
		c = &s.Passed
	case outError:
		c = &s.Errors
	case outCut:
		s.Cut.Add(1)
		c = &s.Errors
	case outAbandoned:
		c = &s.Abandoned
	case outStaleOnBusy:
		c = &s.StaleOnBusy
	case outBusy:
		c = &s.Busy
	case outRejected:
		c = &s.Rejected
	default:
		return // outNone, outOtherVariant: handle answers every request, so never here
	}
	c.Add(1)
}
