package proxy

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// guard is the RoundTripper every upstream request goes through, shared
// fetches and passed-through requests alike. It keeps corral from
// amplifying an origin's trouble: it caps the request rate and the
// requests in flight across all keys, lets at most maxQueue requests wait
// for their turn, and after a 503 (or a 429 not addressed to one user's
// credentials) with Retry-After sends nothing until the origin said it
// may. Whatever it turns away fails at once with a *busyError, which the
// proxy answers with a stale response or a 503.
type guard struct {
	next     http.RoundTripper
	limiter  *rate.Limiter // nil: no rate cap
	slots    chan struct{} // nil: no cap on requests in flight
	maxQueue int64
	maxWait  time.Duration // longest a request may queue: the upstream timeout
	now      func() time.Time
	observe  func(time.Duration) // how long each exchange took, body included

	queued     atomic.Int64 // requests waiting for a token or a slot
	inflight   atomic.Int64 // requests sent and not yet finished
	holdUntil  atomic.Int64 // Unix nanoseconds: the origin asked for quiet until then
	throttled  atomic.Int64 // requests turned away
	lastAnswer atomic.Int64 // Unix nanoseconds: when the origin last answered at all
}

// sentKey marks a request whose sender wants to know when it left the
// guard: the value is a *time.Time that RoundTrip sets.
type sentKey struct{}

// busyError is what the guard answers instead of sending a request.
type busyError struct {
	retryAfter time.Duration // when the client might try again
	why        string
}

func (e *busyError) Error() string {
	return fmt.Sprintf("upstream request not sent: %s (retry after %s)", e.why, e.retryAfter)
}

// newGuard returns a guard in front of next with cfg's caps. A zero rps or
// inflight puts no cap on that dimension; maxQueue bounds the waiters when
// either is set, and maxWait how long each may wait.
func newGuard(next http.RoundTripper, cfg Config, maxWait time.Duration, now func() time.Time, observe func(time.Duration)) *guard {
	rps, inflight := cfg.UpstreamMaxRPS, cfg.UpstreamMaxInflight
	g := &guard{next: next, maxQueue: int64(cfg.UpstreamMaxQueue), maxWait: maxWait, now: now, observe: observe}
	if rps > 0 {
		// A burst of one spaces requests 1/rps apart, so that no
		// window of a second holds more than rps of them.
		g.limiter = rate.NewLimiter(rate.Limit(rps), 1)
	}
	if inflight > 0 {
		g.slots = make(chan struct{}, inflight)
	}
	return g
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := g.paused(); err != nil {
		return nil, err
	}
	if err := g.admit(req.Context()); err != nil {
		return nil, err
	}
	if err := g.paused(); err != nil { // the origin may have asked while we waited
		g.release()
		return nil, err
	}
	if sent, ok := req.Context().Value(sentKey{}).(*time.Time); ok {
		*sent = g.now()
	}
	g.inflight.Add(1)
	var once sync.Once
	free := func() { once.Do(g.done) }
	start := time.Now()
	resp, err := g.next.RoundTrip(req)
	if err != nil {
		g.observe(time.Since(start))
		free()
		return nil, err
	}
	g.lastAnswer.Store(g.now().UnixNano())
	g.noteRetryAfter(req, resp)
	if _, passing := req.Context().Value(passKey{}).(passed); passing || resp.StatusCode == http.StatusSwitchingProtocols {
		// A passed-through answer streams at its one client's pace, and
		// an upgraded connection lives on its own terms: neither keeps
		// a slot from the shared fetches once its header is in.
		free()
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Its body must stay the connection itself for ReverseProxy.
		g.observe(time.Since(start))
		return resp, nil
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() {
		g.observe(time.Since(start))
		free()
	}}
	return resp, nil
}

// paused turns a request away while the origin's Retry-After runs.
func (g *guard) paused() error {
	if wait := time.Duration(g.holdUntil.Load() - g.now().UnixNano()); wait > 0 {
		return g.turnAway(wait, "the origin asked for a pause")
	}
	return nil
}

// noteRetryAfter pauses every upstream request for as long as resp's
// Retry-After says, when resp says the origin as a whole is overloaded:
// a 503, or a 429 to a request without credentials (all of corral's
// requests come from one address). A 429 to one user's credentials
// speaks of that user's quota alone.
func (g *guard) noteRetryAfter(req *http.Request, resp *http.Response) {
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
	case resp.StatusCode == http.StatusTooManyRequests && req.Header.Get("Authorization") == "":
	default:
		return
	}
	if d := retryAfter(resp.Header.Get("Retry-After"), g.now()); d > 0 {
		g.hold(d)
	}
}

// admit waits for a slot and a token, unless maxQueue requests already
// wait, or the wait would outlast ctx.
func (g *guard) admit(ctx context.Context) error {
	if (g.limiter == nil && g.slots == nil) || g.tryAdmit() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok && g.maxWait > 0 {
		// A passed-through request runs on its client's context,
		// which may have no end: bound its wait like a fetch's.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.maxWait)
		defer cancel()
	}
	if g.queued.Add(1) > g.maxQueue {
		g.queued.Add(-1)
		return g.turnAway(g.queueDelay(), "too many upstream requests queued")
	}
	defer g.queued.Add(-1)
	if g.slots != nil {
		select {
		case g.slots <- struct{}{}:
		case <-ctx.Done():
			return g.turnAway(g.queueDelay(), "no upstream slot free in time")
		}
	}
	if g.limiter != nil {
		// Wait fails at once when the token would come after ctx's
		// deadline: the request is turned away rather than kept.
		if err := g.limiter.Wait(ctx); err != nil {
			g.release()
			return g.turnAway(g.queueDelay(), "upstream rate cap reached")
		}
	}
	return nil
}

// tryAdmit takes a slot and a token if both are there now.
func (g *guard) tryAdmit() bool {
	if g.slots != nil {
		select {
		case g.slots <- struct{}{}:
		default:
			return false
		}
	}
	if g.limiter != nil && !g.limiter.Allow() {
		g.release()
		return false
	}
	return true
}

func (g *guard) release() {
	if g.slots != nil {
		<-g.slots
	}
}

func (g *guard) done() {
	g.inflight.Add(-1)
	g.release()
}

// hold stops requests for d, or until a later hold ends.
func (g *guard) hold(d time.Duration) {
	until := g.now().Add(d).UnixNano()
	for {
		cur := g.holdUntil.Load()
		if cur >= until || g.holdUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// queueDelay estimates when a request turned away now might get through.
func (g *guard) queueDelay() time.Duration {
	if g.limiter == nil {
		return time.Second
	}
	secs := float64(g.queued.Load()+1) / float64(g.limiter.Limit())
	return time.Duration(math.Min(secs, maxRetryAfter.Seconds()) * float64(time.Second))
}

func (g *guard) turnAway(retry time.Duration, why string) error {
	g.throttled.Add(1)
	return &busyError{retryAfter: max(retry, time.Second), why: why}
}

// doneBody calls done once, when the body is closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}
