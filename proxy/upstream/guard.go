package upstream

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Guard is the http.RoundTripper every upstream request goes through,
// shared fetches and passed-through requests alike. It caps the request
// rate and the requests in flight across all keys, lets at most MaxQueue
// requests wait for their turn, and after a 503 or 429 with Retry-After to
// a GET or HEAD that carried nothing of one client's (WithNeutral) sends
// no such request more for that key until the origin said it may, nor for
// any key when several endpoints said so at once.
// Whatever it turns away fails at once with a *BusyError.
//
// A key is the upstream request's escaped path and query, read from its
// URL. What else the guard needs to know of a request comes in its
// context: whether it carries nothing of one client's (WithNeutral), and
// whether its answer streams to one client alone (WithStreaming).
type Guard struct {
	next     http.RoundTripper
	limiter  *rate.Limiter // nil: no rate cap
	slots    chan struct{} // nil: no cap on requests in flight
	maxQueue int64
	maxWait  time.Duration // longest a request may queue: the upstream timeout
	maxPause time.Duration // longest pause a Retry-After makes; zero: none
	base     string        // the upstream's escaped path, without a final slash
	now      func() time.Time
	observe  func(time.Duration) // how long each exchange took, body included
	log      *slog.Logger

	queued     atomic.Int64 // requests waiting for a token or a slot
	inflight   atomic.Int64 // requests sent and not yet finished
	holdUntil  atomic.Int64 // Unix nanoseconds: the whole origin asked for quiet until then
	pauses     pauses       // the keys the origin asked quiet for, one by one
	throttled  atomic.Int64 // requests turned away
	lastAnswer atomic.Int64 // Unix nanoseconds: when the origin last answered at all
}

// defaultMaxPause caps the origin's Retry-After when Config leaves
// MaxPause zero. Retry-After is advice, and often a rate limiter's reset
// time rather than a measure of the origin's trouble: past 30 seconds, one
// request for the paused key (or, origin-wide, for any key) to see whether
// the trouble is over costs the origin far less than minutes of 503s cost
// the proxy's clients.
const defaultMaxPause = 30 * time.Second

// maxQueueDelay is the longest Retry-After the guard estimates for its
// own queue.
const maxQueueDelay = 5 * time.Minute

// New returns a Guard with cfg's caps in front of cfg.Transport.
func New(cfg Config) *Guard {
	g := &Guard{
		next:     cfg.Transport,
		maxQueue: int64(cfg.MaxQueue),
		maxWait:  cfg.MaxWait,
		base:     strings.TrimSuffix(cfg.BasePath, "/"),
		now:      cfg.Now,
		observe:  cfg.Observe,
		log:      cfg.Logger,
	}
	switch {
	case cfg.MaxPause == 0:
		g.maxPause = defaultMaxPause
	case cfg.MaxPause > 0:
		g.maxPause = cfg.MaxPause
	}
	if g.next == nil {
		g.next = http.DefaultTransport
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.observe == nil {
		g.observe = func(time.Duration) {}
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if cfg.MaxRPS > 0 {
		// A burst of one spaces requests 1/rps apart, so that no
		// window of a second holds more than rps of them.
		g.limiter = rate.NewLimiter(rate.Limit(cfg.MaxRPS), 1)
	}
	if cfg.MaxInflight > 0 {
		g.slots = make(chan struct{}, cfg.MaxInflight)
	}
	return g
}

// RoundTrip sends req as Send does, for callers that need no send time,
// such as httputil.ReverseProxy.
func (g *Guard) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, _, err := g.Send(req)
	return resp, err
}

// Send sends req unless the guard holds it back, and returns the answer
// and when the request left the guard, after any wait for its turn: the
// request_time of RFC 9111 section 4.2.3, which a wait in the queue must
// not age. sent is the zero time when the request was not sent.
//
// The request's slot is freed when its body is closed; or once the
// header is in, for a request marked WithStreaming and for a 101, whose
// body is the upgraded connection itself.
func (g *Guard) Send(req *http.Request) (resp *http.Response, sent time.Time, err error) {
	key := req.URL.RequestURI()
	// Only a request that carries nothing of one client's is held back
	// by a pause: the answers that pause come from such requests alone
	// (noteRetryAfter), and what the origin refuses a request without a
	// client's fields (an anonymous tier's spent quota, which one user
	// can spend) it may well give a request with them.
	held := neutral(req.Context())
	if err := g.pausedFor(held, key); err != nil {
		return nil, time.Time{}, err
	}
	if err := g.admit(req.Context()); err != nil {
		return nil, time.Time{}, err
	}
	if err := g.pausedFor(held, key); err != nil { // the origin may have asked while we waited
		g.release()
		return nil, time.Time{}, err
	}
	sent = g.now()
	g.inflight.Add(1)
	var once sync.Once
	free := func() { once.Do(g.done) }
	start := time.Now()
	resp, err = g.next.RoundTrip(req)
	if err != nil {
		g.observe(time.Since(start))
		free()
		return nil, sent, err
	}
	g.lastAnswer.Store(g.now().UnixNano())
	g.noteRetryAfter(req, key, resp)
	if streaming(req.Context()) || resp.StatusCode == http.StatusSwitchingProtocols {
		// A passed-through answer streams at its one client's pace, and
		// an upgraded connection lives on its own terms: neither keeps
		// a slot from the shared fetches once its header is in.
		free()
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Its body must stay the connection itself for ReverseProxy.
		g.observe(time.Since(start))
		return resp, sent, nil
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() {
		g.observe(time.Since(start))
		free()
	}}
	return resp, sent, nil
}

// Stats returns what g counts now.
func (g *Guard) Stats() Stats {
	origin, keys := g.pausedNow()
	s := Stats{
		Throttled:    g.throttled.Load(),
		Inflight:     g.inflight.Load(),
		Queued:       g.queued.Load(),
		OriginPaused: origin,
		PausedKeys:   keys,
	}
	if last := g.lastAnswer.Load(); last != 0 {
		s.LastAnswer = time.Unix(0, last)
	}
	return s
}

// pausedFor turns a request for key away, when held says a pause holds it,
// while a pause the origin asked for runs: the whole origin's or key's
// own, whichever ends later.
func (g *Guard) pausedFor(held bool, key string) error {
	if !held {
		return nil
	}
	now := g.now()
	wait, why := time.Duration(g.holdUntil.Load()-now.UnixNano()), "the origin asked for a pause"
	if end := g.pauses.until(key); end.Sub(now) > wait {
		wait, why = end.Sub(now), "the origin asked for a pause of this URL"
	}
	if wait > 0 {
		return g.turnAway(wait, why)
	}
	return nil
}

// noteRetryAfter pauses key for as long as resp's Retry-After says, up to
// maxPause, when resp says the origin cannot serve key now: a 503 (RFC
// 9110 section 15.6.4) or a 429 (RFC 6585 section 4) to a request that
// carried nothing of one client's (WithNeutral).
//
// Any other request is one client's, or was led by one: it may carry a
// spent API key, a session cookie, or a field the origin refuses, none of
// which corral can tell apart from the rest, and from any number of
// addresses. Its 429 or 503 speaks of that client, and pauses nothing
// shared: otherwise one user, from two addresses, pauses every URL for
// everyone (issue 23). A neutral request's 429 is corral's own quota, and
// its 503 the resource's: those the guard honours.
//
// Only answers to GET and HEAD count: they ask for the resource that the
// key's shared fetches ask for. Another method's answer speaks of that
// method's handler (a broken form, a preflight nobody configured).
//
// One key's trouble pauses that key only: one broken endpoint or one
// rate-limited URL must not turn every other URL into a 503. The whole
// origin pauses when answers that paused their keys come for several
// endpoints at once (see pauses.overloaded and endpoint), for as long as
// the answer that completed the evidence asked, up to maxPause.
func (g *Guard) noteRetryAfter(req *http.Request, key string, resp *http.Response) {
	switch {
	case !neutral(req.Context()):
		return
	case req.Method != http.MethodGet && req.Method != http.MethodHead:
		return
	case resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests:
		return
	}
	now := g.now()
	d := min(ParseRetryAfter(resp.Header.Get("Retry-After"), now), g.maxPause)
	if d <= 0 {
		return
	}
	g.pauses.hold(key, now.Add(d), now)
	if g.pauses.overloaded(endpoint(strings.TrimPrefix(req.URL.EscapedPath(), g.base)), now) {
		g.hold(d)
		g.log.Warn("origin overloaded: pausing every upstream request",
			"status", resp.StatusCode, "endpoints", overloadEndpoints, "within", overloadWindow, "for", d)
	}
}

// pausedNow reports whether the whole origin is paused, and how many keys
// are.
func (g *Guard) pausedNow() (origin bool, keys int) {
	now := g.now()
	return g.holdUntil.Load() > now.UnixNano(), g.pauses.live(now)
}

// admit waits for a slot and a token, unless maxQueue requests already
// wait, or the wait would outlast ctx.
func (g *Guard) admit(ctx context.Context) error {
	if (g.limiter == nil && g.slots == nil) || g.tryAdmit() {
		return nil
	}
	if noWait(ctx) {
		return g.turnAway(g.queueDelay(), "upstream caps full, and a stale response stands in")
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
func (g *Guard) tryAdmit() bool {
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

func (g *Guard) release() {
	if g.slots != nil {
		<-g.slots
	}
}

func (g *Guard) done() {
	g.inflight.Add(-1)
	g.release()
}

// hold stops requests for every key for d, or until a later hold ends.
func (g *Guard) hold(d time.Duration) {
	until := g.now().Add(d).UnixNano()
	for {
		cur := g.holdUntil.Load()
		if cur >= until || g.holdUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// queueDelay estimates when a request turned away now might get through.
func (g *Guard) queueDelay() time.Duration {
	if g.limiter == nil {
		return time.Second
	}
	secs := float64(g.queued.Load()+1) / float64(g.limiter.Limit())
	return time.Duration(math.Min(secs, maxQueueDelay.Seconds()) * float64(time.Second))
}

func (g *Guard) turnAway(retry time.Duration, why string) error {
	g.throttled.Add(1)
	return &BusyError{RetryAfter: max(retry, time.Second), Why: why}
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
