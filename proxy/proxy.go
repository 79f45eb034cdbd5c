// Package proxy is corral's HTTP frontend: a handler in front of one
// upstream that stores what RFC 9111 lets a shared cache store, asks the
// origin at most once per key at a time, and serves stale responses while
// it revalidates them, so that a herd of pollers costs the origin about one
// request per key per freshness lifetime.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"corral/coalesce"
	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/fetch"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/pass"
	"corral/proxy/internal/respond"
	"corral/proxy/internal/stored"
	"corral/proxy/internal/target"
	"corral/proxy/metrics"
	"corral/proxy/rules"
	"corral/proxy/upstream"
)

// Config configures a Proxy. Only Upstream is required.
type Config struct {
	// Upstream is the origin every request goes to.
	Upstream *url.URL

	// Store holds cached responses. Nil means an in-memory store of
	// CacheBytes. A store made by NewMemory keeps beside each entry what
	// the proxy derives from it; behind any other store, that is
	// recomputed on every read, a failed refresh's back-off is not
	// remembered, and each body of 64 KiB or more that is read takes
	// room in the buffer budget while it is written. Gauges, eviction
	// warnings and readiness read the store through cache.Sizer, when it
	// implements it.
	Store cache.Store

	// CacheBytes is the in-memory store's budget. Zero means 256 MiB.
	CacheBytes int64

	// MaxObjectBytes is the largest body that is stored. Zero means 8 MiB.
	MaxObjectBytes int64

	// MaxRequestBodyBytes is the largest request body accepted; a larger
	// one is answered 413. Zero means 1 MiB, nginx's default.
	MaxRequestBodyBytes int64

	// RequestBodyTimeout bounds the reading of a whole request body, which
	// happens before the request goes upstream; a slower one is answered
	// 408. Zero means 30s.
	RequestBodyTimeout time.Duration

	// BufferBytes bounds the bodies held in memory on their way through:
	// shared fetches' bodies until they are stored, the copies passed-
	// through answers keep to store on the way, request bodies, and
	// bodies of 64 KiB or more being written to clients that the store
	// does not hold (evicted, replaced or purged meanwhile, or never
	// stored); the last three may take a quarter of it each at most. Past
	// it, answers stream without being stored (or a stale response stands
	// in), request bodies get 503, and a body the store does not hold is
	// not written (503) or, when its clients are being written it, they
	// are cut. Zero means a quarter of CacheBytes, and at least four times
	// MaxObjectBytes and eight times MaxRequestBodyBytes.
	BufferBytes int64

	// ClientMinRate is the slowest, in bytes a second, that clients may
	// read a body the store does not hold (see BufferBytes) and keep its
	// room in the buffer budget when another body needs the room: a
	// client that reads at a trickle cannot keep a body from those who
	// read it. The pace is that of their last 256 KiB, so that what
	// socket buffers take at first does not count. It is also the
	// slowest a client may read a body streamed to a herd when it holds
	// that body back, alone or with others, over the time it had bytes
	// of it to take. Zero means 64 KiB a second; negative means no client
	// gives up room, or is cut from a stream, for its pace.
	ClientMinRate int64

	// UpstreamTimeout bounds one exchange with the origin, body included,
	// however many clients wait on it. Zero means 30s.
	UpstreamTimeout time.Duration

	// HedgeAfter is how long a client waits on a shared fetch that
	// another client's request leads, with other fields, before it also
	// asks the origin with its own fields, and takes whichever answer
	// comes first (see join). Zero means a quarter of UpstreamTimeout;
	// negative, or UpstreamTimeout or more, means never.
	HedgeAfter time.Duration

	// PassTTL is how long a key whose response could not be shared is
	// sent upstream without coalescing. Zero means 10s.
	PassTTL time.Duration

	// Policy holds the operator's freshness defaults.
	Policy freshness.Policy

	// Rules are the operator's freshness rules. A response to a request
	// whose path a rule's prefix covers (the longest such; see
	// rules.Match) is judged as if the origin had sent the rule's
	// directives in Corral-Cache-Control: they win over Cache-Control and
	// CDN-Cache-Control, and lose only to a Corral-Cache-Control the origin
	// does send. A rule never shares a response with Set-Cookie, or the
	// answer to a request with Authorization, nor, unless it says
	// share-private, one the origin marked private.
	Rules []rules.Rule

	// RequestNoCache says what a client's no-cache, max-age or min-fresh
	// does. The zero value revalidates, coalesced.
	RequestNoCache RequestNoCache

	// RevalidateInterval is how long a stored response, once validated
	// with the origin (fetched, or refreshed by a 304), satisfies a
	// client's no-cache, max-age or min-fresh under
	// RequestNoCacheRevalidate: a herd of reloads then costs the origin
	// about one request per key per interval. It never relaxes a
	// response's own no-cache or must-revalidate. Zero means 1s; negative
	// means none: every such request revalidates.
	RevalidateInterval time.Duration

	// UpstreamMaxRPS caps the requests sent upstream per second, across
	// all keys. Zero means no cap.
	UpstreamMaxRPS float64

	// UpstreamMaxInflight caps the upstream requests in fetch.Flight at once.
	// Zero means no cap.
	UpstreamMaxInflight int

	// UpstreamMaxQueue bounds the upstream requests that wait for the
	// caps above; past it, and while the origin's Retry-After runs,
	// clients get a stale response or 503. Zero means none wait: a
	// request that finds a cap reached is turned away at once.
	UpstreamMaxQueue int

	// TrustedProxies are the addresses of proxies in front of corral whose
	// X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto and Forwarded
	// are passed on, for requests answered for one client alone. Requests
	// whose answers may be stored never carry them (see forward).
	TrustedProxies []netip.Prefix

	// UpstreamMaxPause caps how long a Retry-After from the origin (RFC
	// 9110 section 10.2.3) holds back the requests for its URL, or for
	// every URL once several endpoints (first path segments) answered so
	// within seconds. Only a 503 or 429 to a GET or HEAD that carried
	// nothing of one client's pauses (see upstream.WithNeutral): any
	// other is that client's own; and the pause holds back only requests
	// that carry nothing of one client's either. Zero means
	// 30s; negative means never pause, as with net.Dialer's KeepAlive.
	// Either way a failed background refresh waits as long as the origin
	// asked, up to five minutes.
	UpstreamMaxPause time.Duration

	// Transport makes upstream requests. Nil means a transport tuned for
	// one origin.
	Transport http.RoundTripper

	// Now is the clock. Nil means time.Now.
	Now func() time.Time

	// Logger receives warnings about upstream failures. Nil means
	// slog.Default().
	Logger *slog.Logger

	// Fleet, when set, is the shared tier this replica shares with the
	// others (see package fleet): read on a miss, written after a fetch,
	// leased so that one replica fetches a key for all. The caller makes it
	// and closes it after Shutdown.
	Fleet *fleet.Fleet
}

// Proxy is a caching reverse proxy for one upstream.
type Proxy struct {
	upstream        *url.URL
	origin          target.Upstream // upstream, as upstream requests' URLs are made from it
	store           *stored.Store
	ownStore        *cache.Memory // the store New made, which Shutdown stops
	maxObject       int64
	maxRequestBody  int64
	bodyTimeout     time.Duration
	buffers         *body.Budget   // what bodies held in memory may take
	requestBuffers  *body.Budget   // the share of it request bodies may take
	copyBuffers     *body.Budget   // the share of it passed-through copies may take
	clientBuffers   *body.Shares   // each client's share of it for the fetches it leads
	unstored        *body.Unstored // the share of it bodies being written that the store does not hold may take
	passTTL         time.Duration
	requestNoCache  RequestNoCache
	revalidate      time.Duration // RevalidateInterval; 0 when none
	transport       http.RoundTripper
	guard           *upstream.Guard // wraps transport
	now             func() time.Time
	fakeClock       bool // now is not time.Now
	trustedProxies  []netip.Prefix
	log             *slog.Logger
	logRequests     bool // a line per request, at debug level
	upstreamTimeout time.Duration
	hedgeAfter      time.Duration // Config.HedgeAfter; 0 for never
	leading         sync.Map      // a flight's round ID: the fields its leader's fetch sends
	flights         flights       // a coalesce.Group
	fleet           *fleet.Fleet  // the tier replicas share; nil when none
	stopPurges      func()        // ends the fleet's calls to purgedElsewhere
	passer          *pass.Passer
	stats           Stats
	metrics         *metrics.Metrics
	fetcher         *fetch.Fetcher
}

// flights runs at most one fetch per key at a time, and hands its result
// to every request that asked for the key while it ran. coalesce.Group is
// one, within this process. It is an interface, as groupcache's
// flightGroup is, so that another can stand in. Across a fleet of
// replicas, the fetch itself takes the fleet's lease (see claim): the
// local flight makes one replica's clients one caller of the fleet.
type flights interface {
	// Start returns the caller's wait for the fetch for key (see
	// coalesce.Call), running fetch unless one for key runs already.
	Start(ctx context.Context, key string, fetch coalesce.Fetch[*fetch.Result]) *coalesce.Call[*fetch.Result]

	// Refresh starts, in the background, the fetch that start makes,
	// unless a refresh of key runs already; it calls start only when it
	// starts one, and reports whether it did.
	Refresh(ctx context.Context, key string, start func() coalesce.Fetch[*fetch.Result]) bool

	// Go runs fn, work a fetch hands on past its return (a stream's
	// pump), on a goroutine of its own that Wait waits for too.
	Go(fn func())

	// Wait blocks until the fetches started so far have finished, or
	// ctx ends.
	Wait(ctx context.Context) error
}

// New returns a Proxy for cfg.
func New(cfg Config) (*Proxy, error) {
	u := cfg.Upstream
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream must be an absolute http or https URL, got %q", u.String())
	}
	p := &Proxy{
		upstream:       u,
		origin:         target.NewUpstream(u),
		maxObject:      orDefault(cfg.MaxObjectBytes, 8<<20),
		maxRequestBody: orDefault(cfg.MaxRequestBodyBytes, 1<<20),
		bodyTimeout:    orDefault(cfg.RequestBodyTimeout, 30*time.Second),
		passTTL:        orDefault(cfg.PassTTL, 10*time.Second),
		requestNoCache: cfg.RequestNoCache,
		revalidate:     revalidateInterval(cfg.RevalidateInterval),
		transport:      cfg.Transport,
		now:            cfg.Now,
		log:            cfg.Logger,
		trustedProxies: cfg.TrustedProxies,
		fleet:          cfg.Fleet,
	}
	timeout := orDefault(cfg.UpstreamTimeout, defaultUpstreamTimeout)
	p.upstreamTimeout = timeout
	p.hedgeAfter = orDefault(cfg.HedgeAfter, timeout/4)
	if cfg.HedgeAfter < 0 || p.hedgeAfter >= timeout {
		p.hedgeAfter = 0 // never
	}
	p.flights = &coalesce.Group[*fetch.Result]{Timeout: timeout}
	p.metrics = metrics.New(metrics.Source{
		Stats:    &p.stats,
		Guard:    func() upstream.Stats { return p.guard.Stats() },
		Buffered: func() int64 { return p.buffers.InUse() },
		Unstored: func() int64 { return p.unstored.InUse() },
		Sizer:    func() cache.Sizer { return p.store.Sizer() },
	})
	cacheBytes := orDefault(cfg.CacheBytes, 256<<20)
	store := cfg.Store
	if store == nil {
		// Purge records hold as long as a fetch can run.
		p.ownStore = cache.NewMemory(cache.Config{MaxBytes: cacheBytes, Keep: timeout})
		store = p.ownStore
	}
	// Request bodies, the copies passed-through answers keep, and the
	// bodies being written that the store does not hold each take at
	// most a quarter, so that what clients hold open can never take all
	// that shared fetches need. By default a quarter holds the largest
	// body.
	p.buffers = body.NewBudget(orDefault(cfg.BufferBytes, max(cacheBytes/4, 4*p.maxObject, 8*p.maxRequestBody)), nil)
	p.requestBuffers = body.NewBudget(p.buffers.Limit()/4, p.buffers)
	p.copyBuffers = body.NewBudget(p.buffers.Limit()/4, p.buffers)
	// One client's fetches may hold a quarter of it, or what one object
	// of MaxObjectBytes needs while its buffer doubles, if that is more.
	p.clientBuffers = body.NewShares(p.buffers, min(max(p.buffers.Limit()/4, 2*p.maxObject), p.buffers.Limit()))
	if p.transport == nil {
		p.transport = newTransport(timeout)
	}
	if p.now == nil {
		p.now = time.Now
	}
	minRate := orDefault(cfg.ClientMinRate, 64<<10)
	if cfg.ClientMinRate < 0 {
		minRate = 0 // none
	}
	p.unstored = body.NewUnstored(body.NewBudget(p.buffers.Limit()/4, p.buffers), minRate, p.now)
	if p.log == nil {
		p.log = slog.Default()
	}
	var err error
	p.store, err = stored.New(stored.Config{Store: store, Rules: cfg.Rules, Policy: cfg.Policy, PassTTL: p.passTTL, Unstored: p.unstored, Now: p.now, Log: p.log})
	if err != nil {
		return nil, err
	}
	p.stats.RuleDecisions = p.store.RuleDecisions()
	p.fakeClock = cfg.Now != nil
	p.guard = newGuard(p.transport, cfg, timeout, p.now,
		func(d time.Duration) { p.metrics.Upstream.Observe(d.Seconds()) })
	p.logRequests = p.log.Enabled(context.Background(), slog.LevelDebug)
	p.fetcher = &fetch.Fetcher{
		Store: p.store, Fleet: p.fleet, Origin: p.origin, Guard: p.guard,
		Buffers: p.buffers, MaxObject: p.maxObject, MinRate: p.unstored.MinRate(),
		Timeout: timeout, PassTTL: p.passTTL, Revalidate: p.revalidate,
		Now: p.now, Log: p.log, Count: p.stats.CountUpstream, Go: p.flights.Go,
	}
	if p.fleet != nil {
		p.stopPurges = p.fleet.OnPurge(p.purgedElsewhere)
	}
	p.passer = pass.New(pass.Config{
		Store: p.store, Origin: p.origin, Guard: p.guard, Copies: p.copyBuffers, Unstored: p.unstored,
		MaxObject: p.maxObject, Trusted: p.trustedProxies, Now: p.now, Log: p.log, Count: p.stats.CountUpstream,
		Invalidate: p.invalidate,
	})
	return p, nil
}

// defaultUpstreamTimeout is Config.UpstreamTimeout's default.
const defaultUpstreamTimeout = 30 * time.Second

func orDefault[T int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// revalidateInterval is Config.RevalidateInterval as the proxy uses it:
// zero means the default, negative means none.
func revalidateInterval(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return time.Second
	case d < 0:
		return 0
	}
	return d
}

func newTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
		// The cache stores what the origin sent, encoding included,
		// and varies on Accept-Encoding as the origin says.
		DisableCompression: true,
		ForceAttemptHTTP2:  true,
	}
}

// NewMemory returns an in-memory store of maxBytes for Config.Store, that
// keeps beside each entry what the proxy derives from it, as the store New
// makes when Config.Store is nil does. Its purge records hold for the
// default UpstreamTimeout; past it, a longer fetch's answer is not stored.
func NewMemory(maxBytes int64) *cache.Memory {
	return cache.NewMemory(cache.Config{MaxBytes: maxBytes, Keep: defaultUpstreamTimeout})
}

// Metrics returns the proxy's Prometheus collector, to register where the
// operator serves metrics.
func (p *Proxy) Metrics() *metrics.Metrics { return p.metrics }

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// Wait blocks until the fetches started so far, background refreshes
// included, have finished.
func (p *Proxy) Wait() { p.flights.Wait(context.Background()) } //nolint:errcheck // no deadline

// Shutdown waits, until ctx ends, for the fetches under way to finish,
// background refreshes and those whose clients left included, then stops
// hearing the fleet's purges, closes the idle upstream connections and
// stops the store New made. Call it
// once the server in front has stopped handing the proxy requests.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.flights.Wait(ctx)
	if p.stopPurges != nil {
		p.stopPurges() // the Fleet may outlive the proxy, and serve another
	}
	if t, ok := p.transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	if p.ownStore != nil {
		p.ownStore.Close()
	}
	if err != nil {
		return fmt.Errorf("fetches still running at the deadline: %w", err)
	}
	return nil
}

// ServeHTTP answers r from the cache when it can, and otherwise from the
// origin, and counts what became of it: each request once, in exactly one
// outcome, which the handlers below return rather than count.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.stats.Requests.Add(1)
	start := time.Now()
	if p.logRequests {
		lw := &respond.Logged{ResponseWriter: w, Status: http.StatusOK}
		w = lw
		defer func() {
			p.log.Debug("request", "method", r.Method, "uri", r.URL.RequestURI(), "status", lw.Status,
				"bytes", lw.Bytes, "cache_status", lw.Header().Get("Cache-Status"), "duration", time.Since(start))
		}()
	}
	defer func() { p.metrics.Client.Observe(time.Since(start).Seconds()) }()
	o := p.handle(w, r, start)
	o.count(&p.stats)
	if o == outCut {
		// net/http closes the connection, or resets the stream, so
		// that the client sees the body end early (a chunked one would
		// otherwise look whole).
		panic(http.ErrAbortHandler)
	}
}

// handle answers r: it refuses a request it will not forward, passes one
// the cache stays out of, and answers the others from the store or a
// fetch (answer). It is the one place that answers a request again.
func (p *Proxy) handle(w http.ResponseWriter, r *http.Request, start time.Time) requestOutcome {
	key, err := target.Of(r)
	if err != nil {
		respond.Status(w, http.StatusBadRequest, cachestatus.Status{Detail: cachestatus.BadRequestTarget})
		return outRejected
	}
	if up := r.Header["Upgrade"]; up != nil && !httprule.WebSocketUpgrade(up) {
		// Only WebSocket is tunnelled. Any other upgrade, h2c above
		// all, would open a tunnel to the origin past every rule here
		// (h2c smuggling): the field is hop-by-hop, and a proxy may
		// ignore it (RFC 9110 section 7.8), so the request goes on as
		// an ordinary one.
		delete(r.Header, "Upgrade")
	}
	if hasBody(r) {
		bb, o := p.bufferRequestBody(w, r)
		if bb == nil {
			return o // refused, and answered
		}
		defer bb.Release()
	}
	if fwd, d := httprule.Bypass(r); fwd != "" {
		return p.passThrough(w, r, key, fwd, d)
	}
	req := p.requestDirectives(r)
	now := start // one clock read for the hit path
	if p.fakeClock {
		now = p.now()
	}
	o := p.answer(w, r, req, key, now)
	if o == outOtherVariant {
		// The shared answer turned out to vary, and to be for another
		// variant than r's: look again, now that the store knows what
		// the response varies on, and join the variant's own flight.
		// Should that answer too be for another variant, r goes
		// upstream on its own.
		if o = p.answer(w, r, req, key, p.now()); o == outOtherVariant {
			o = p.passThrough(w, r, key, cachestatus.FwdVaryMiss, "")
		}
	}
	return o
}

// answer looks r up, decides what the store's answer is good for, and
// dispatches: to serving it, serving it stale while refreshing it, passing
// r upstream on its own, or fetching. It returns outOtherVariant, with
// nothing written to w, when the fetch answered another variant than r's.
func (p *Proxy) answer(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, key string, now time.Time) requestOutcome {
	e, vkey, vary := p.store.Lookup(r.Context(), key, r.Header)
	v := p.decide(r, req, key, e, vkey, now)
	switch v.do {
	case doServe:
		if v.refresh {
			p.refresh(r, key, vkey, e) // first, as below
		}
		return p.serve(w, r, e, e.Header, cachestatus.Status{Hit: true, TTL: e.Decision.TTL(now), HasTTL: true, Detail: v.detail}, now, v.hit)
	case doServeStale:
		// The refresh starts first: nothing here may keep e, and its
		// body, alive while a slow client is written it (see body.Ref).
		p.refresh(r, key, vkey, e)
		return p.serve(w, r, e, e.Header, cachestatus.Status{Hit: true, TTL: e.Decision.TTL(now), HasTTL: true, Detail: cachestatus.StaleWhileRevalidate}, now, outStale)
	case doPass:
		return p.passThrough(w, r, key, v.fwd, v.detail)
	case doRefuse:
		respond.Status(w, http.StatusGatewayTimeout, cachestatus.Status{Detail: v.detail})
		return outError
	}
	return p.fetchAndServe(w, r, req, p.fetcher.NewFlight(r, req, key, vkey, vary, e, p.passer.ClientAddr(r)), v.fwd)
}

// verdict is what decide made of a request and what the store holds for
// it.
type verdict struct {
	do     action
	fwd    cachestatus.Fwd    // why the request goes upstream (doPass, doFetch)
	detail cachestatus.Detail // for Cache-Status
	hit    requestOutcome     // which kind of hit serving the stored response is (doServe)
	// refresh says to refresh the stored response in the background
	// too (doServe), as doServeStale does.
	refresh bool
}

// action is what the flow does with a request.
type action uint8

const (
	doFetch      action = iota // ask the origin, coalesced with the requests for the same variant
	doServe                    // serve the stored response
	doServeStale               // serve the stored response stale, and refresh it in the background
	doPass                     // send the request upstream on its own
	doRefuse                   // answer 504: only-if-cached, and nothing usable is stored
)

// decide says what to do with r, given e, what lookup found for it under
// vkey (nil for nothing), at now. It writes nothing and counts nothing.
func (p *Proxy) decide(r *http.Request, req freshness.RequestDirectives, key string, e *stored.Entry, vkey string, now time.Time) verdict {
	if e != nil && e.Kind == cache.PassMark {
		return verdict{do: doPass, fwd: cachestatus.FwdMiss, detail: cachestatus.Uncacheable}
	}
	fwd := cachestatus.FwdURIMiss
	if e != nil {
		switch use := e.Decision.UseFor(now, req, p.revalidate); {
		case use.State == freshness.Fresh:
			v := verdict{do: doServe, hit: outHit}
			if use.Recent {
				v.detail = cachestatus.RevalidatedRecently // the client asked for a fresher one
			}
			return v
		case use.State == freshness.StaleWhileRevalidate:
			return verdict{do: doServeStale}
		case use.Refused && e.FailedRecently(now, fetch.RefreshBackoff):
			// The client asked for a fresher answer, but the last
			// attempt to validate this one failed moments ago: perhaps
			// for one client's fields, so a refresh, which carries
			// none, asks again (unless it failed too).
			return verdict{do: doServe, hit: outHit, detail: cachestatus.RevalidationFailed, refresh: true}
		case use.Refused:
			fwd = cachestatus.FwdRequest // the client asked for a fresher answer
		case e.FailedRecently(now, fetch.RefreshBackoff) && e.Decision.UsableOnErrorFor(now, req):
			// Its validation failed moments ago, and it may stand in
			// for a failing origin: serve it, rather than ask the
			// origin again for every request until it recovers, and
			// refresh it, as above.
			return verdict{do: doServe, hit: outStaleOnError, detail: cachestatus.StaleIfError, refresh: true}
		default:
			fwd = cachestatus.FwdStale
		}
	} else if vkey != key {
		fwd = cachestatus.FwdVaryMiss
	}
	switch {
	case req.OnlyIfCached:
		// RFC 9111 section 5.2.1.7: nothing usable is stored.
		return verdict{do: doRefuse, detail: cachestatus.OnlyIfCached}
	case r.Header.Get("Range") != "" && e == nil:
		// With nothing stored, the range goes upstream as it is. A
		// stored response that needs validating is revalidated whole,
		// coalesced, and the range served from it: a pass-through
		// would leave it unvalidated, and the next ranged reload
		// upstream too.
		return verdict{do: doPass, fwd: fwd, detail: cachestatus.Range}
	case req.NoStore:
		// The answer may not be stored (RFC 9111 section 5.2.1.5),
		// so it could not be shared with a herd either.
		return verdict{do: doPass, fwd: fwd, detail: cachestatus.RequestNoStore}
	}
	return verdict{do: doFetch, fwd: fwd}
}

// requestDirectives reads r's Cache-Control and Pragma. Under
// RequestNoCacheIgnore, every directive that asks for a fresher answer
// than the one stored (no-cache, max-age, min-fresh: what a reload button
// sends, and more) is dropped: the shield holds.
func (p *Proxy) requestDirectives(r *http.Request) freshness.RequestDirectives {
	// Indexed rather than Get: the server has canonicalised the names,
	// and this runs on every hit.
	if r.Header["Cache-Control"] == nil && r.Header["Pragma"] == nil {
		return noDirectives // the common case, without parsing
	}
	req := freshness.ParseRequest(r.Header)
	if p.requestNoCache == RequestNoCacheIgnore {
		req = req.Relaxed()
	}
	return req
}

var noDirectives = freshness.ParseRequest(nil)

// RequestNoCache says what a client's no-cache, Pragma: no-cache,
// max-age or min-fresh does when it asks for a fresher answer than the
// one stored.
type RequestNoCache int

const (
	// RequestNoCacheRevalidate revalidates the stored response with the
	// origin before answering, coalesced like any fetch, unless it was
	// validated less than RevalidateInterval ago: a herd of reloads costs
	// one upstream request per key per interval, not one each.
	RequestNoCacheRevalidate RequestNoCache = iota
	// RequestNoCacheIgnore answers from the cache as if the directives
	// were absent (RFC 9111 section 5.2.1 lets a cache do so).
	RequestNoCacheIgnore
)

// serve writes e to w with header h (see respond.Entry), and returns o,
// what serving e is, or outBusy when it answered 503 instead.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, e *stored.Entry, h http.Header, st cachestatus.Status, now time.Time, o requestOutcome) requestOutcome {
	switch respond.Entry(w, r, e, h, st, now, p.unstored) {
	case respond.Busy:
		return outBusy
	case respond.Cut:
		p.stats.Cut.Add(1)
	}
	return o
}

// serveBusy answers 503 with the guard's Retry-After.
func (p *Proxy) serveBusy(w http.ResponseWriter, busy *upstream.BusyError, st cachestatus.Status) requestOutcome {
	respond.Busy503(w, busy.RetryAfter, st)
	return outBusy
}

// fetchAndServe starts or joins the flight in, built from r, and serves
// what it brought, or returns outOtherVariant, with nothing written to w,
// when the fetch answered another variant than r's.
func (p *Proxy) fetchAndServe(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd) requestOutcome {
	f, leader, err := p.join(w, r, in)
	now := p.now()
	if in.Stale == nil && in.Shared && (err != nil || (f.Source != fetch.LookAgain && httprule.IsServerError(f.Entry.Status))) {
		// The fetch may have found a stale copy in the shared tier,
		// now in memory, that can stand in for the failure.
		if e, _, _ := p.store.Lookup(r.Context(), in.Key, r.Header); e != nil && e.Kind == cache.Response && !httprule.IsServerError(e.Status) {
			in.Stale = e
		}
	}
	if err != nil {
		if r.Context().Err() != nil {
			return outAbandoned // the client left; the flight goes on without it
		}
		return p.serveError(w, r, req, in, fwd, err, now)
	}
	if otherVariant(f, r) {
		return outOtherVariant
	}
	return p.serveFetched(w, r, req, in, fwd, f, leader, now)
}

// join starts or joins in's flight and waits for its answer.
//
// A flight carries its leader's fields, which the origin may need, and its
// answer is everyone's, unless it may speak of the leader's own request
// (fetch.Result.Personal: a spent quota, a refused field): then a waiter
// that sent other fields flies again, in its own flight (fetch.Flight.Own):
// with the clients that send what it sends, and no one else. So does a
// waiter that sent other fields than the leader and waited hedgeAfter
// for it, while it still waits for the first: it takes whichever answer
// comes first. A client whose requests the origin holds (a tarpit, a rate
// limiter's queue) would otherwise hold the herd for UpstreamTimeout; on
// an origin slower than hedgeAfter for everyone, that costs one request
// more per distinct set of fields among the clients still waiting. No one
// else's fields ever lead a client's own flight: one user cannot hand its
// 429 to the clients coalesced with it, or make them wait on its own
// trouble, with however many keys or addresses (issue 23).
func (p *Proxy) join(w http.ResponseWriter, r *http.Request, in fetch.Flight) (f *fetch.Result, leader bool, err error) {
	interim := respond.NewInterim(w)
	defer interim.Close() // the client left: the fetch may go on
	first := p.flights.Start(r.Context(), in.ID, p.lead(in, interim))
	var own *coalesce.Call[*fetch.Result]
	var hedge <-chan time.Time
	if p.hedgeAfter > 0 {
		t := time.NewTimer(p.hedgeAfter)
		defer t.Stop()
		hedge = t.C
	}
	for {
		var firstDone, ownDone <-chan coalesce.Result
		if first != nil {
			firstDone = first.Done()
		}
		if own != nil {
			ownDone = own.Done()
		}
		select {
		case res := <-firstDone:
			f, leader, err = first.Take(res)
			first = nil
			switch {
			case leader || err == nil && !(f.Personal && !httprule.SameFields(f.Sent, in.Header)):
				// Its own answer, or everyone's.
				if own != nil {
					own.Leave()
				}
			case own != nil:
				continue // another's trouble: wait for our own
			case err == nil:
				// The leader's own answer: fly with our fields.
				own = p.flights.Start(r.Context(), in.Own().ID, p.lead(in.Own(), interim))
				continue
			}
		case res := <-ownDone:
			if first != nil {
				first.Leave()
			}
			f, leader, err = own.Take(res)
		case <-hedge:
			hedge = nil
			if first == nil || own != nil {
				continue // flying on our own already
			}
			// Another's request leads the first flight. If it sent what
			// this one sends, this one's would take as long: wait on.
			if sent, ok := p.leading.Load(in.ID); first.Led() || ok && httprule.SameFields(sent.(http.Header), in.Header) {
				continue
			}
			own = p.flights.Start(r.Context(), in.Own().ID, p.lead(in.Own(), interim))
			continue
		case <-r.Context().Done():
			for _, c := range []*coalesce.Call[*fetch.Result]{first, own} {
				if c != nil {
					c.Leave()
				}
			}
			f, leader, err = nil, false, r.Context().Err()
		}
		break
	}
	// net/http's transport may still deliver interim responses it had
	// read when the fetch ended: none may reach w once this handler
	// writes to it.
	interim.Close()
	return f, leader, err
}

// lead returns the fetch of the flight in, which only the caller that
// starts the flight runs: its leader. It may run on after the leader's
// handler returned, and reads in, never the client's request. Its bodies
// count against its leader's share of the buffer budget, and the interim
// answers it gets go to the leader.
func (p *Proxy) lead(in fetch.Flight, interim *respond.Interim) coalesce.Fetch[*fetch.Result] {
	return func(ctx context.Context) (*fetch.Result, error) {
		p.leading.Store(in.ID, in.Header)
		defer p.leading.Delete(in.ID)
		share := p.clientBuffers.Acquire(in.Client)
		defer p.clientBuffers.Release(share)
		in.Budget = &share.Budget
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: interim.Write})
		return p.fetcher.Fetch(ctx, in)
	}
}

// otherVariant reports whether what a flight fetched answers another
// variant than r's: the URI turned out to vary while the flight waited to
// start, or its shareable answer varies on fields that r sent otherwise.
func otherVariant(f *fetch.Result, r *http.Request) bool {
	if f.Source == fetch.LookAgain {
		return true
	}
	e := f.Entry
	return e.Decision.Shareable && len(e.Vary) > 0 && e.VaryKey != httprule.VaryKey(e.Vary, r.Header)
}

// serveFetched serves f, what the flight in fetched for r; leader says
// r's request started it.
func (p *Proxy) serveFetched(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd, f *fetch.Result, leader bool, now time.Time) requestOutcome {
	if f.Stream != nil {
		return p.serveStream(w, r, in, fwd, f, leader)
	}
	stale, e := in.Stale, f.Entry
	st := cachestatus.Status{Fwd: fwd, FwdStatus: f.Status, Stored: f.Stored, Collapsed: !leader}
	if f.Stored {
		st.TTL, st.HasTTL = e.Decision.TTL(now), true
	}
	switch {
	case f.Personal && !leader && !httprule.SameFields(f.Sent, in.Header):
		// The last round's leader's own answer: each its own.
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, cachestatus.Detail(e.Decision.Reason))
	case leader && !e.Decision.Shareable:
		st.Detail = cachestatus.Detail(e.Decision.Reason)
		if fetch.Passes(e.Decision, stale) {
			p.store.MarkPass(r.Context(), in.VKey, e.Decision.Reason)
		}
		return p.serve(w, r, e, f.Own, st, now, outMiss)
	case !e.Decision.Shareable:
		// Meant for the leader's request alone: fetch our own.
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, cachestatus.Detail(e.Decision.Reason))
	case httprule.IsServerError(e.Status) && stale != nil && stale.Decision.UsableOnErrorFor(now, req):
		return p.serveStaleOnError(w, r, stale, f.Status, now)
	}
	if !f.Stored {
		st.Detail = cachestatus.Detail(e.Decision.Reason)
	}
	h := e.Header
	if leader {
		h = f.Own
	}
	o := outMiss
	switch {
	case f.Source == fetch.Memory:
		o, st = outHit, cachestatus.Status{Hit: true, TTL: e.Decision.TTL(now), HasTTL: true, Collapsed: true}
	case f.Source == fetch.SharedTier:
		o, st = outHit, cachestatus.Status{Hit: true, TTL: e.Decision.TTL(now), HasTTL: true, Collapsed: true, Detail: cachestatus.SharedTier}
	case !leader:
		o = outCoalesced
	case f.Status == http.StatusNotModified:
		o = outRevalidated
	}
	return p.serve(w, r, e, h, st, now, o)
}

// serveStream serves f, whose body the flight in could not hold, from its
// stream (see stream): one upstream exchange for the whole herd. A client
// that cannot read it as it comes (a range or a precondition to answer
// from the whole body, an answer that is the leader's alone, or a join
// too late for the body's first byte) goes upstream on its own.
func (p *Proxy) serveStream(w http.ResponseWriter, r *http.Request, in fetch.Flight, fwd cachestatus.Fwd, f *fetch.Result, leader bool) requestOutcome {
	e, s := f.Entry, f.Stream
	if !leader && !e.Decision.Shareable || httprule.ConditionalOrRange(r.Header) {
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, s.Detail)
	}
	var rd *body.StreamReader
	if r.Method != http.MethodHead && httprule.BodyAllowed(e.Status) {
		if rd = s.Join(); rd == nil {
			return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, s.Detail)
		}
		defer rd.Close()
	}
	h := e.Header
	if leader {
		h = f.Own
	}
	st := cachestatus.Status{Fwd: fwd, FwdStatus: f.Status, Collapsed: !leader, Detail: s.Detail}
	var from io.Reader
	if rd != nil {
		from = rd
	}
	if err := respond.Streamed(w, e.Status, h, st, s.Length, from); err != nil {
		p.log.Warn("streamed answer cut short", "path", r.URL.Path, "err", err)
		return outCut
	}
	if leader {
		return outMiss
	}
	return outCoalesced
}

// refresh revalidates stale, which r's lookup found under vkey, in the
// background, once per key at a time, and not again before a failed
// refresh's back-off has passed. The refresh outlives r's handler: it
// starts from a flight built from r, only when it starts.
//
// A refresh serves everyone, so it carries nothing of r's client but the
// fields the response varies on (neutralized), credentials included: a
// client whose field the origin refuses must not fail the refreshes that
// its stale hits start, and push the next one back for everyone (issue
// 23).
func (p *Proxy) refresh(r *http.Request, key, vkey string, stale *stored.Entry) {
	now := p.now()
	if now.UnixNano() < stale.RefreshAt.Load() {
		return
	}
	started := p.flights.Refresh(r.Context(), fetch.FlightID(r, vkey), func() coalesce.Fetch[*fetch.Result] {
		return p.fetcher.Refresh(p.fetcher.NewFlight(r, noDirectives, key, vkey, stale.Vary, stale, p.passer.ClientAddr(r)).Neutralized())
	})
	if started {
		p.stats.Refreshes.Add(1)
	}
}

// serveStaleOnError serves stale in place of an origin failure
// (RFC 5861 section 4).
func (p *Proxy) serveStaleOnError(w http.ResponseWriter, r *http.Request, stale *stored.Entry, fwdStatus int, now time.Time) requestOutcome {
	return p.serve(w, r, stale, stale.Header, cachestatus.Status{Fwd: cachestatus.FwdStale, FwdStatus: fwdStatus, TTL: stale.Decision.TTL(now), HasTTL: true, Detail: cachestatus.StaleIfError}, now, outStaleOnError)
}

// serveError answers a failed fetch of the flight in: with its stale
// entry where it may stand in, upstream on r's own when the answer was
// too large to share, and otherwise as upstreamFailure says.
func (p *Proxy) serveError(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd, err error, now time.Time) requestOutcome {
	key, stale := in.Key, in.Stale
	if errors.Is(err, fetch.ErrPersonal) {
		return p.passThrough(w, r, key, fwd, "")
	}
	if errors.Is(err, body.ErrTooLarge) {
		p.store.MarkPass(r.Context(), in.VKey, string(cachestatus.TooLarge))
		return p.passThrough(w, r, key, cachestatus.FwdMiss, cachestatus.TooLarge)
	}
	if errors.Is(err, body.ErrFull) {
		// Too large for the buffer budget left now, for this fetch
		// only. A stale response that may be served stands in, as when
		// the guard holds a request back; otherwise the waiters go
		// upstream on their own, streamed. The key is not marked; the
		// next fetch may fit.
		if stale != nil && stale.Decision.UsableDisconnected() {
			return p.serve(w, r, stale, stale.Header, cachestatus.Status{Hit: true, TTL: stale.Decision.TTL(now), HasTTL: true, Detail: cachestatus.BuffersFull}, now, outStaleOnBusy)
		}
		return p.passThrough(w, r, key, cachestatus.FwdMiss, cachestatus.BuffersFull)
	}
	status, d, busy := respond.Failure(err)
	if busy != nil {
		// corral held the request back to spare the origin: as good as
		// disconnected from it.
		if stale != nil && stale.Decision.UsableDisconnected() {
			return p.serve(w, r, stale, stale.Header, cachestatus.Status{Hit: true, TTL: stale.Decision.TTL(now), HasTTL: true, Detail: cachestatus.UpstreamBusy}, now, outStaleOnBusy)
		}
		return p.serveBusy(w, busy, cachestatus.Status{Fwd: fwd, Detail: d})
	}
	if stale != nil && stale.Decision.UsableOnErrorFor(now, req) {
		return p.serveStaleOnError(w, r, stale, 0, now)
	}
	p.log.Warn("upstream fetch failed", "path", r.URL.Path, "err", err)
	respond.Status(w, status, cachestatus.Status{Fwd: fwd, Detail: d})
	return outError
}

// passThrough sends r upstream on its own (see pass.Passer.Pass), for
// the reason fwd and detail give in Cache-Status.
func (p *Proxy) passThrough(w http.ResponseWriter, r *http.Request, target string, fwd cachestatus.Fwd, detail cachestatus.Detail) requestOutcome {
	if p.passer.Pass(w, r, target, cachestatus.Status{Fwd: fwd, Detail: detail}) {
		return outBusy
	}
	return outPassed
}
