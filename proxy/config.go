package proxy

import (
	"context"
	"corral/coalesce"
	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
	"corral/proxy/internal/body"
	"corral/proxy/internal/fetch"
	"corral/proxy/internal/pass"
	"corral/proxy/internal/stored"
	"corral/proxy/internal/target"
	"corral/proxy/metrics"
	"corral/proxy/rules"
	"corral/proxy/upstream"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
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

	// NoRefreshAhead turns off refreshing ahead: by default, a fresh
	// hit in the last moments of a response's freshness (twice the time
	// its fetch took, at most a tenth of its lifetime) refreshes it in
	// the background, once, so that the requests for a popular key
	// without stale-while-revalidate never wait for its refetch.
	NoRefreshAhead bool

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

// New returns a Proxy for cfg.
func New(cfg Config) (*Proxy, error) {
	u := cfg.Upstream
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("upstream must be an absolute http or https URL, got %q", u.String())
	}
	p := &Proxy{requestNoCache: cfg.RequestNoCache, now: cfg.Now, fakeClock: cfg.Now != nil, log: cfg.Logger}
	if p.now == nil {
		p.now = time.Now
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.logRequests = p.log.Enabled(context.Background(), slog.LevelDebug)
	timeout := orDefault(cfg.UpstreamTimeout, defaultUpstreamTimeout)
	maxObject := orDefault(cfg.MaxObjectBytes, 8<<20)
	passTTL := orDefault(cfg.PassTTL, 10*time.Second)
	cacheBytes := orDefault(cfg.CacheBytes, 256<<20)

	// The buffer budget. Request bodies, the copies passed-through
	// answers keep, and the bodies being written that the store does not
	// hold each take at most a quarter, so that what clients hold open
	// can never take all that shared fetches need. By default a quarter
	// holds the largest body. One client's fetches may hold a quarter of
	// it, or what one object of MaxObjectBytes needs while its buffer
	// doubles, if that is more.
	p.requests = requestBodies{
		max:     orDefault(cfg.MaxRequestBodyBytes, 1<<20),
		timeout: orDefault(cfg.RequestBodyTimeout, 30*time.Second),
	}
	buffers := body.NewBudget(orDefault(cfg.BufferBytes, max(cacheBytes/4, 4*maxObject, 8*p.requests.max)), nil)
	quarter := func() *body.Budget { return body.NewBudget(buffers.Limit()/4, buffers) }
	// Each client may hold a quarter of the request bodies' quarter at
	// once, or two bodies of the largest size if that is more (a buffer
	// holding a body of the largest size reserves a little more).
	bodies := quarter()
	p.requests.shares = body.NewShares(bodies, min(max(bodies.Limit()/4, 2*p.requests.max), bodies.Limit()))
	minRate := orDefault(cfg.ClientMinRate, 64<<10)
	if cfg.ClientMinRate < 0 {
		minRate = 0 // none
	}
	p.requests.uploads = newUploads(bodies, minRate, p.now)
	p.unstored = body.NewUnstored(quarter(), minRate, p.now)
	p.herds = herds{
		flights: &coalesce.Group[*fetch.Result]{Timeout: timeout},
		shares:  body.NewShares(buffers, min(max(buffers.Limit()/4, 2*maxObject), buffers.Limit())),
		owned:   make(map[string]int),
	}
	if hedge := orDefault(cfg.HedgeAfter, timeout/4); cfg.HedgeAfter >= 0 && hedge < timeout {
		p.herds.hedgeAfter.Store(int64(hedge)) // else never
	}

	store := cfg.Store
	if store == nil {
		// Purge records hold as long as a fetch can run.
		own := cache.NewMemory(cache.Config{MaxBytes: cacheBytes, Keep: timeout})
		p.stops = append(p.stops, own.Close)
		store = own
	}
	var err error
	p.store, err = stored.New(stored.Config{Store: store, Rules: cfg.Rules, Policy: cfg.Policy, PassTTL: passTTL, Unstored: p.unstored, Now: p.now, Log: p.log})
	if err != nil {
		return nil, err
	}
	p.stats.RuleDecisions = p.store.RuleDecisions()
	p.metrics = metrics.New(metrics.Source{
		Stats:    &p.stats,
		Guard:    func() upstream.Stats { return p.guard.Stats() },
		Buffered: buffers.InUse,
		Unstored: p.unstored.InUse,
		Sizer:    p.store.Sizer,
	})

	transport := cfg.Transport
	if transport == nil {
		transport = newTransport(timeout)
	}
	if t, ok := transport.(interface{ CloseIdleConnections() }); ok {
		p.stops = append(p.stops, t.CloseIdleConnections)
	}
	p.guard = newGuard(transport, cfg, timeout, p.now, func(d time.Duration) { p.metrics.Upstream.Observe(d.Seconds()) })
	origin := target.NewUpstream(u)
	p.fetcher = &fetch.Fetcher{
		Store: p.store, Fleet: cfg.Fleet, Origin: origin, Guard: p.guard,
		Buffers: buffers, MaxObject: maxObject, MinRate: p.unstored.MinRate(),
		Timeout: timeout, PassTTL: passTTL, Revalidate: revalidateInterval(cfg.RevalidateInterval), Ahead: !cfg.NoRefreshAhead,
		Now: p.now, Log: p.log, Count: p.stats.CountUpstream, Go: p.herds.flights.Go,
	}
	p.passer = pass.New(pass.Config{
		Store: p.store, Origin: origin, Guard: p.guard, Copies: quarter(), Unstored: p.unstored,
		MaxObject: maxObject, Trusted: cfg.TrustedProxies, Now: p.now, Log: p.log, Count: p.stats.CountUpstream,
		Invalidate: p.invalidate,
	})
	if cfg.Fleet != nil {
		// The Fleet may outlive the proxy, and serve another.
		p.stops = append(p.stops, cfg.Fleet.OnPurge(p.purgedElsewhere))
	}
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

// newGuard returns the upstream guard (package upstream) in front of next
// with cfg's caps, which every upstream request goes through, shared
// fetches and passed-through requests alike. What it holds back fails
// with an *upstream.BusyError, which the proxy answers with a stale
// response or a 503. A zero rps or
// inflight puts no cap on that dimension; UpstreamMaxQueue bounds the
// waiters when either is set, and maxWait how long each may wait.
func newGuard(next http.RoundTripper, cfg Config, maxWait time.Duration, now func() time.Time, observe func(time.Duration)) *upstream.Guard {
	var base string
	if cfg.Upstream != nil {
		base = cfg.Upstream.EscapedPath()
	}
	return upstream.New(upstream.Config{
		Transport:   next,
		MaxRPS:      cfg.UpstreamMaxRPS,
		MaxInflight: cfg.UpstreamMaxInflight,
		MaxQueue:    cfg.UpstreamMaxQueue,
		MaxWait:     maxWait,
		MaxPause:    cfg.UpstreamMaxPause,
		BasePath:    base,
		Now:         now,
		Observe:     observe,
		Logger:      cfg.Logger,
	})
}
