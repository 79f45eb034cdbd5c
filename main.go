// Command corral is a caching reverse proxy that shields one slow or
// rate-limited HTTP origin from herds of pollers.
//
//	corral -upstream http://stats.internal:9000 -listen :8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/bench"
	"corral/proxy"
	"corral/proxy/admin"
	"corral/proxy/cache/redisstore"
	"corral/proxy/fleet"
	"corral/proxy/listen"
	"corral/proxy/rules"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr, os.LookupEnv))
}

// run parses args, then takes every flag they leave out from its CORRAL_
// variable in getenv, serves until ctx ends or SIGINT/SIGTERM arrives, and
// returns the exit code: 0 after a clean shutdown, 2 for bad flags.
func run(ctx context.Context, args []string, stderr io.Writer, getenv func(string) (string, bool)) int {
	c, code := parseFlags(args, stderr, getenv)
	if c == nil {
		return code
	}
	log := slog.New(c.logHandler(stderr))
	c.proxy.Logger = log

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if c.demo {
		// The demo's own origin is noisy by design; keep its warnings out.
		c.proxy.Logger = slog.New(slog.DiscardHandler)
		demo := bench.Demo
		if c.demoReplicas > 1 {
			demo = func(ctx context.Context, w io.Writer, clients int, d time.Duration, originCC string, cfg proxy.Config) error {
				return bench.DemoFleet(ctx, w, c.demoReplicas, clients, d, originCC, cfg)
			}
		}
		if err := demo(ctx, os.Stdout, c.demoClients, c.demoDuration, c.demoOriginCC, c.proxy); err != nil {
			fmt.Fprintln(stderr, "corral: demo:", err)
			return 1
		}
		return 0
	}

	// The shared tier. fleet.New does not wait for Redis: a Redis that is
	// down makes this replica local-only until it answers, and never
	// fails the start.
	var fl *fleet.Fleet
	if c.fleet.Addr != "" {
		fc := c.fleet
		fc.Logger = log
		// The Redis client's own lines (a dial that failed, again and
		// again while Redis is down) go to the debug level: the fleet
		// says once, at warn, that Redis fails.
		redis.SetLogger(redisLog{log})
		var err error
		if fl, err = fleet.New(fc); err != nil {
			fmt.Fprintln(stderr, "corral: -redis:", err)
			return 2
		}
		c.proxy.Fleet = fl
	}
	// closeFleet runs once the proxy is done with the fleet: after its
	// Shutdown, or when the start fails.
	closeFleet := func() {
		if fl == nil {
			return
		}
		if err := fl.Close(); err != nil {
			log.Warn("closing the shared tier", "err", err)
		}
		fl = nil
	}
	defer closeFleet()

	p, err := proxy.New(c.proxy)
	if err != nil {
		fmt.Fprintln(stderr, "corral:", err)
		return 2
	}
	servers := []*server{{name: "listen", addr: c.listen, handler: p, maxHeaderBytes: c.maxHeaderBytes, writeTimeout: c.clientWriteTimeout, maxConns: c.maxConnections}}
	var adm *admin.Admin
	if c.adminListen != "" {
		adm = admin.New(p, c.adminToken, log, p.Metrics())
		if fl != nil {
			if err := adm.Register(fl); err != nil {
				fmt.Fprintln(stderr, "corral: metrics:", err)
				return 1
			}
		}
		servers = append(servers, &server{name: "admin-listen", addr: c.adminListen, handler: adm, maxHeaderBytes: c.maxHeaderBytes})
	}
	// Bind every listener before serving on any: a port in use fails the
	// start, and once /readyz answers, the public port accepts.
	for _, s := range servers {
		if err := s.listen(); err != nil {
			fmt.Fprintf(stderr, "corral: -%s: %v\n", s.name, err)
			closeAll(servers)
			return 1
		}
	}
	errc := make(chan error, len(servers))
	for _, s := range servers {
		go func() { errc <- s.serve() }()
		log.Info("serving", "flag", s.name, "addr", s.ln.Addr().String())
	}
	if fl != nil {
		log.Info("corral started", "upstream", c.proxy.Upstream.String(), "redis", c.redisShown)
	} else {
		log.Info("corral started", "upstream", c.proxy.Upstream.String())
	}

	select {
	case err := <-errc:
		fmt.Fprintln(stderr, "corral:", err)
		closeAll(servers)
		return 1
	case <-ctx.Done():
	}
	stop() // a second signal ends the process at once

	// Shut down in order, all within one deadline: fail readiness, stop
	// accepting and finish the requests under way, let the fetches and
	// background refreshes finish, then close the admin listener.
	log.Info("shutting down", "timeout", c.shutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if adm != nil {
		adm.Drain()
	}
	code = 0
	fail := func(what string, err error) {
		fmt.Fprintf(stderr, "corral: shutdown: %s: %v\n", what, err)
		code = 1
	}
	if err := servers[0].srv.Shutdown(sctx); err != nil {
		fail("requests still running", err)
	}
	if err := p.Shutdown(sctx); err != nil {
		fail("upstream", err)
	}
	closeFleet() // no fetch of the proxy's uses it any more
	for _, s := range servers[1:] {
		if err := s.srv.Shutdown(sctx); err != nil {
			fail(s.name, err)
		}
	}
	closeAll(servers)
	if code == 0 {
		log.Info("stopped")
	}
	return code
}

// server is one listener and the HTTP server on it.
type server struct {
	name    string // its flag
	addr    string
	handler http.Handler
	ln      net.Listener
	srv     *http.Server

	maxHeaderBytes int           // request line and header fields
	writeTimeout   time.Duration // how long a client may accept no bytes; 0: for ever
	maxConns       int           // connections open at once; 0: no cap
}

func (s *server) listen() (err error) {
	s.ln, err = net.Listen("tcp", s.addr)
	if err == nil {
		// The cap outermost: the server reports its connections to it,
		// so that it can close those without a request to make room.
		s.ln = listen.Limit(listen.WriteTimeout(s.ln, s.writeTimeout), s.maxConns)
	}
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// Go's default is 1 MiB, which 400 connections sending endless
		// header lines turn into 400 MiB. (Go reads 4,096 bytes more
		// than this before it answers 431.)
		MaxHeaderBytes: s.maxHeaderBytes,
		// OPTIONS * goes to the handler, which refuses every request-target
		// that is not a path.
		DisableGeneralOptionsHandler: true,
		IdleTimeout:                  120 * time.Second,
	}
	if l, ok := s.ln.(interface {
		ConnState(net.Conn, http.ConnState)
	}); ok {
		s.srv.ConnState = l.ConnState
	}
	return err
}

func (s *server) serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("-%s: %w", s.name, err)
	}
	return nil
}

// closeAll ends what shutdown left open: a server still running after the
// deadline, or listeners bound before a failed start.
func closeAll(servers []*server) {
	for _, s := range servers {
		if s.srv != nil {
			s.srv.Close() //nolint:errcheck // nothing more to do
		}
		if s.ln != nil {
			s.ln.Close() //nolint:errcheck // closed already after Serve
		}
	}
}

// config is what the flags say.
type config struct {
	proxy              proxy.Config
	listen             string
	adminListen        string
	adminToken         string
	logLevel           slog.Level
	logJSON            bool
	shutdownTimeout    time.Duration
	maxHeaderBytes     int
	clientWriteTimeout time.Duration
	maxConnections     int
	demo               bool
	demoClients        int
	demoDuration       time.Duration
	demoOriginCC       string
	demoReplicas       int
	fleet              fleet.Config // Addr empty: no shared tier
	redisShown         string       // the -redis URL without its password, for logs
}

func (c *config) logHandler(w io.Writer) slog.Handler {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logJSON {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// parseFlags reads args and the environment into a config. On -h or an
// error it prints to stderr and returns nil with the exit code.
func parseFlags(args []string, stderr io.Writer, getenv func(string) (string, bool)) (*config, int) {
	fs := flag.NewFlagSet("corral", flag.ContinueOnError)
	// A bad value gets one line from below, not the flag package's line
	// followed by the whole usage.
	fs.SetOutput(io.Discard)
	var (
		c               config
		upstream        = fs.String("upstream", "", "origin URL every request goes to, e.g. http://stats.internal:9000 (required)")
		cacheBytes      = byteSize(256 << 20)
		maxObjectBytes  = byteSize(8 << 20)
		maxBodyBytes    = byteSize(1 << 20)
		bufferBytes     = byteSize(0)
		maxHeaderBytes  = byteSize(64 << 10)
		clientMinRate   = zeroOrSize{64 << 10}
		bodyTimeout     = fs.Duration("request-body-timeout", 30*time.Second, "longest a client may take to send a whole request body, which is read before the request goes upstream; past it, 408")
		upstreamTimeout = fs.Duration("upstream-timeout", 30*time.Second, "longest a shared upstream fetch may take, body included (a passed-through request: until its header arrives); waiters then get 504")
		hedgeAfter      = fs.Duration("hedge-after", 0, "how long a client waits on a shared fetch that another client's request leads with other fields before it also asks the origin with its own, taking whichever answer comes first, so that a client whose requests the origin holds (a tarpit, a rate limiter's queue) cannot hold the others; on an origin slower than this for everyone, it costs one upstream request more per distinct set of request fields among the waiting clients (0: a quarter of -upstream-timeout; at -upstream-timeout or more: never)")
		passTTL         = fs.Duration("pass-ttl", 10*time.Second, "how long a URL whose response could not be shared goes upstream without coalescing")
		defaultTTL      = fs.Duration("default-ttl", 0, "freshness lifetime for cacheable responses that carry none (0: RFC 9111 heuristic only)")
		defaultSWR      = fs.Duration("default-stale-while-revalidate", 0, "stale-while-revalidate window for responses that carry none (0: off)")
		defaultSIE      = fs.Duration("default-stale-if-error", 5*time.Minute, "how long past its freshness a stored response stands in when the origin cannot be reached, times out, or answers 500, 502, 503 or 504, for responses that carry no stale-if-error of their own and do not forbid stale use (must-revalidate, proxy-revalidate, s-maxage, no-cache); 0: off")
		requestNoCache  = fs.String("request-no-cache", "revalidate", "what a client's Cache-Control: no-cache, max-age, min-fresh or Pragma: no-cache does when the stored response is not fresh enough for it: revalidate (one coalesced upstream request, at most once per -revalidate-interval) or ignore (answer from the cache)")
		refreshAhead    = fs.Bool("refresh-ahead", true, "refresh a response in the background when a client asks for it in the last moments of its freshness (twice the time its fetch took, at most a tenth of its lifetime), once per response, so that the clients of a popular URL without stale-while-revalidate never wait for its refetch; costs at most a tenth more upstream requests for such URLs (false: refetch once expired)")
		revalidateIntvl = fs.Duration("revalidate-interval", time.Second, "under -request-no-cache=revalidate, how long a response validated with the origin satisfies a client's no-cache, max-age or min-fresh, so that a herd of reloads costs about one upstream request per URL per interval (0: every such request revalidates)")
		maxRPS          = fs.Float64("upstream-max-rps", 0, "most requests a second sent upstream, across all URLs (0: no cap)")
		maxInflight     = fs.Int("upstream-max-inflight", 0, "most upstream requests in flight at once (0: no cap)")
		maxQueue        = fs.Int("upstream-max-queue", 1000, "most upstream requests waiting for the caps above; past it clients get stale or 503 with Retry-After")
		trustedProxies  = fs.String("trusted-proxies", "", "comma-separated addresses or CIDR prefixes of proxies in front of corral whose X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto and Forwarded fields are passed on for requests answered for one client (never for cacheable GETs)")
		maxPause        = fs.Duration("upstream-max-pause", 30*time.Second, "longest the origin's Retry-After on a 503 or 429 to a GET or HEAD that carried nothing of one client's holds back upstream requests that carry nothing of one client's either: for that URL, or for every URL once 3 endpoints (first path segments) answered so within 10s; clients get stale or 503 meanwhile (0: never pause)")
		logLevel        = fs.String("log-level", "info", "debug (a line per request), info, warn or error")
		logFormat       = fs.String("log-format", "text", "text or json")
		redisMaxObject  = byteSize(fleet.DefaultMaxObjectBytes)
		ruleFlags       ruleList
	)
	fs.Var(&ruleFlags, "rule", "a freshness `rule` 'PATH-PREFIX DIRECTIVES', e.g. '/api/stats/ max-age=1, stale-while-revalidate=10': corral caches responses for paths under the prefix (a prefix ending in / covers the path without it) as if the origin had sent Corral-Cache-Control: DIRECTIVES, over its Cache-Control, no-cache and no-store included (clients still get that Cache-Control). Repeatable; the longest prefix wins. Set-Cookie responses and answers to requests with Authorization are never shared; answers the origin marked private only under a rule that says share-private. The variable takes one rule per line")
	fs.StringVar(&c.listen, "listen", ":8080", "address to serve clients on")
	fs.StringVar(&c.adminListen, "admin-listen", "127.0.0.1:9091", "address of the admin listener: /metrics, /healthz, /readyz, /purge, /debug/pprof/ (empty: none); a non-loopback address needs -admin-token")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token that /metrics, /purge and /debug/pprof/ on the admin listener require")
	fs.Var(&cacheBytes, "cache-bytes", "memory budget of the cache, a `size` such as 256MiB or 1GiB: bodies, headers and keys count")
	fs.Var(&maxObjectBytes, "max-object-bytes", "largest response body that is cached, a `size` such as 8MiB; larger ones stream through")
	fs.Var(&maxBodyBytes, "max-request-body-bytes", "largest request body accepted, a `size`; larger ones get 413")
	fs.Var(&bufferBytes, "buffer-bytes", "memory budget of the bodies held on their way through, a `size`: shared fetches until stored (at least a quarter of it is theirs), copies of passed-through answers, request bodies, and answers of 64KiB or more being written whose body the cache no longer holds (at most a quarter each); past it answers stream unstored or stale stands in, request bodies get 503, and answers the cache no longer holds get 503 or are cut (see -client-min-rate); unset, a quarter of -cache-bytes but at least four times -max-object-bytes and eight times -max-request-body-bytes")
	fs.Var(&maxHeaderBytes, "max-header-bytes", "largest request line and header fields, a `size`; larger ones get 431 (Go reads 4KiB more before it refuses)")
	fs.DurationVar(&c.clientWriteTimeout, "client-write-timeout", 30*time.Second, "how long a client may accept no bytes of its answer before it is disconnected (at most 1.5 times this); long downloads that keep moving are not cut (0: for ever)")
	fs.Var(&clientMinRate, "client-min-rate", "slowest a client may read an answer of 64KiB or more whose body the cache no longer holds, a `size` a second over its last 256KiB, and keep that body's room in the buffer budget when another needs it; and slowest, over the time it had bytes of it to take, a client may read a body streamed to a herd when it holds that body back, alone or with others; and slowest, over its last second or two, a client may send an upload and keep its room when a new upload needs it; a slower one is cut then (0: no client is cut for its pace; an upload idle for a second still is)")
	fs.IntVar(&c.maxConnections, "max-connections", 4096, "most client connections open at once, idle keep-alive ones included; past it one without a request is closed to make room (silent or with its header arriving for more than 1s, or idle between requests), and with every one serving a request new ones wait to be accepted (0: no cap)")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long to let in-flight requests and upstream fetches finish after SIGINT or SIGTERM")
	fs.StringVar(&c.fleet.Addr, "redis", "", "the `URL` of the Redis that this replica shares with the others (redis://host:6379/0, rediss:// for TLS, or unix:///path/redis.sock; for a Redis Cluster, redis+cluster://host1:6379?addr=host2:6379&addr=host3:6379, or rediss+cluster://): a second cache tier, and one upstream request per key per freshness window across the fleet; Redis 7 or later. Redis down never fails a client or the start; the replica then serves alone (empty: no shared tier)")
	fs.DurationVar(&c.fleet.Timeout, "redis-timeout", fleet.DefaultTimeout, "longest each Redis call may take; no call is retried, and repeated failures keep the replica local-only until a probe succeeds")
	fs.StringVar(&c.fleet.Prefix, "redis-prefix", "corral:", "what every Redis key and channel of this deployment starts with, so that several deployments can share one Redis")
	fs.Var(&redisMaxObject, "redis-max-object-bytes", "largest response body written to Redis, a `size`; larger ones stay in each replica's memory only")
	fs.DurationVar(&c.fleet.LeaseTTL, "redis-lease-ttl", fleet.DefaultLeaseTTL, "how long a replica's lease on a key lives unless renewed (it is renewed while the fetch runs): the longest the others wait for a replica that died mid-fetch before one of them takes over")
	fs.BoolVar(&c.demo, "demo", false, "run the demo: a rate-limited origin, a herd of pollers, with and without corral")
	fs.IntVar(&c.demoClients, "demo-clients", 200, "number of polling clients in the demo")
	fs.DurationVar(&c.demoDuration, "demo-duration", 10*time.Second, "how long each half of the demo polls")
	fs.IntVar(&c.demoReplicas, "demo-replicas", 1, "corral replicas in the demo; more than 1 starts a throwaway redis-server and compares the replicas alone and sharing it")
	fs.StringVar(&c.demoOriginCC, "demo-origin-cc", bench.DemoCacheControl, "the Cache-Control the demo's origin sends (empty: none); with no-cache and a -rule, the demo shows corral shield an origin that asks for no caching")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "usage: corral -upstream URL [flags]\n\nA caching reverse proxy that shields one HTTP origin from herds of pollers.\nEvery flag can also be set by the environment variable named after it; a flag beats the variable.\n\nFlags:")
			printFlags(stderr, fs)
			fmt.Fprint(stderr, examples)
			return nil, 0
		}
		fmt.Fprintln(stderr, "corral:", err)
		return nil, 2
	}
	fromEnv, err := setFromEnv(fs, getenv)
	if err != nil {
		fmt.Fprintln(stderr, "corral:", err)
		return nil, 2
	}
	// bad prints one line naming the flag, with its variable if that set it.
	bad := func(name, format string, a ...any) (*config, int) {
		if fromEnv[name] {
			name = envName(fs.Lookup(name)) + " (-" + name + ")"
		} else {
			name = "-" + name
		}
		fmt.Fprintf(stderr, "corral: %s: %s\n", name, fmt.Sprintf(format, a...))
		return nil, 2
	}

	// Ranges the flag types cannot express.
	for _, r := range []struct {
		name string
		ok   bool
		want string
	}{
		{"upstream-timeout", *upstreamTimeout > 0, "positive"},
		{"shutdown-timeout", c.shutdownTimeout > 0, "positive"},
		{"request-body-timeout", *bodyTimeout > 0, "positive"},
		{"client-write-timeout", c.clientWriteTimeout >= 0, "zero or more"},
		{"max-connections", c.maxConnections >= 0, "zero or more"},
		{"max-header-bytes", maxHeaderBytes <= 1<<30, "at most 1GiB"},
		{"hedge-after", *hedgeAfter >= 0, "zero or more"},
		{"pass-ttl", *passTTL >= 0, "zero or more"},
		{"revalidate-interval", *revalidateIntvl >= 0, "zero or more"},
		{"default-ttl", *defaultTTL >= 0, "zero or more"},
		{"default-stale-while-revalidate", *defaultSWR >= 0, "zero or more"},
		{"default-stale-if-error", *defaultSIE >= 0, "zero or more"},
		{"upstream-max-rps", *maxRPS >= 0, "zero or more"},
		{"upstream-max-inflight", *maxInflight >= 0, "zero or more"},
		{"upstream-max-queue", *maxQueue >= 0, "zero or more"},
		{"upstream-max-pause", *maxPause >= 0, "zero or more"},
		{"demo-clients", c.demoClients > 0, "positive"},
		{"demo-duration", c.demoDuration > 0, "positive"},
		{"demo-replicas", c.demoReplicas > 0, "positive"},
		{"redis-timeout", c.fleet.Timeout > 0, "positive"},
		{"redis-lease-ttl", c.fleet.LeaseTTL > 0, "positive"},
		{"redis-prefix", !strings.ContainsAny(c.fleet.Prefix, "{}"), "free of braces, which would move the hash tag of every key"},
	} {
		if !r.ok {
			return bad(r.name, "must be %s, got %s", r.want, fs.Lookup(r.name).Value)
		}
	}

	noCache, ok := map[string]proxy.RequestNoCache{"revalidate": proxy.RequestNoCacheRevalidate, "ignore": proxy.RequestNoCacheIgnore}[*requestNoCache]
	if !ok {
		return bad("request-no-cache", "want revalidate or ignore, got %q", *requestNoCache)
	}
	if err := c.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return bad("log-level", "want debug, info, warn or error, got %q", *logLevel)
	}
	switch *logFormat {
	case "text":
	case "json":
		c.logJSON = true
	default:
		return bad("log-format", "want text or json, got %q", *logFormat)
	}
	for _, name := range []string{"listen", "admin-listen"} {
		addr := fs.Lookup(name).Value.String()
		if addr == "" && name == "admin-listen" {
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil {
			return bad(name, "%q is not host:port: %v", addr, err)
		} else if _, err := net.LookupPort("tcp", port); err != nil {
			return bad(name, "%q: bad port %q", addr, port)
		}
	}
	if bufferBytes != 0 && (bufferBytes/2 < maxObjectBytes || bufferBytes/8 < maxBodyBytes) {
		// Request bodies take a quarter, which must hold a body of the
		// largest size while its buffer doubles (half of it, and all of
		// it, live at once). The largest body must fit twice: being
		// fetched, and held for a client. (Four times, the default, lets
		// each quarter hold one.)
		return bad("buffer-bytes", "%s is too small: want at least twice -max-object-bytes (%s) and eight times -max-request-body-bytes (%s)", &bufferBytes, &maxObjectBytes, &maxBodyBytes)
	}
	c.maxHeaderBytes = int(maxHeaderBytes)
	if c.adminListen != "" && c.adminToken == "" && !loopback(c.adminListen) {
		return bad("admin-listen", "%q is reachable from other hosts; set -admin-token, or listen on a loopback address such as 127.0.0.1:9091", c.adminListen)
	}
	c.proxy = proxy.Config{
		RequestNoCache:      noCache,
		RevalidateInterval:  *revalidateIntvl,
		NoRefreshAhead:      !*refreshAhead,
		CacheBytes:          int64(cacheBytes),
		MaxObjectBytes:      int64(maxObjectBytes),
		MaxRequestBodyBytes: int64(maxBodyBytes),
		RequestBodyTimeout:  *bodyTimeout,
		BufferBytes:         int64(bufferBytes),
		ClientMinRate:       clientMinRate.rate(),
		UpstreamTimeout:     *upstreamTimeout,
		HedgeAfter:          *hedgeAfter,
		PassTTL:             *passTTL,
		UpstreamMaxRPS:      *maxRPS,
		UpstreamMaxInflight: *maxInflight,
		UpstreamMaxQueue:    *maxQueue,
		UpstreamMaxPause:    *maxPause,
		Rules:               ruleFlags,
	}
	if *maxPause == 0 {
		c.proxy.UpstreamMaxPause = -1 // never pause; zero would be the default
	}
	if c.proxy.TrustedProxies, err = parsePrefixes(*trustedProxies); err != nil {
		return bad("trusted-proxies", "%v", err)
	}
	if *revalidateIntvl == 0 {
		c.proxy.RevalidateInterval = -1 // none; zero is the default in proxy.Config
	}
	c.proxy.Policy.DefaultTTL = *defaultTTL
	c.proxy.Policy.DefaultSWR = *defaultSWR
	c.proxy.Policy.DefaultSIE = *defaultSIE
	c.fleet.MaxObjectBytes = int64(redisMaxObject)
	if c.fleet.Addr != "" {
		if c.redisShown, err = checkRedisURL(c.fleet.Addr); err != nil {
			return bad("redis", "%v", err)
		}
	}
	if c.demo {
		return &c, 0
	}
	u, err := parseUpstream(*upstream)
	if err != nil {
		return bad("upstream", "%v", err)
	}
	c.proxy.Upstream = u
	return &c, 0
}

// examples end corral -h: the operator deciding freshness, three ways; a
// fleet; the demos.
const examples = `
Examples:
  Let the origin's headers decide: Cache-Control, or CDN-Cache-Control and
  Corral-Cache-Control (RFC 9213), which win over it for corral:
    corral -upstream http://stats.internal:9000

  The origin sends no Cache-Control: keep its /api/ answers 5 s, and serve
  them up to 30 s stale while one request refreshes them:
    corral -upstream http://stats.internal:9000 -rule '/api/ max-age=5, stale-while-revalidate=30'

  The origin sends Cache-Control: no-cache: corral answers /api/stats/ from
  its copy and asks the origin about once a second, however many poll;
  clients still see no-cache:
    corral -upstream http://stats.internal:9000 -rule '/api/stats/ max-age=1, stale-while-revalidate=10'

  The origin sends max-age=3600, too long for the dashboards: corral
  refreshes its copy every 10 s (a browser keeps its own copy as long as the
  origin's Cache-Control says):
    corral -upstream http://stats.internal:9000 -rule '/api/dashboard/ max-age=10'

  Rules from the environment, one per line:
    CORRAL_RULES='/api/ max-age=5
    /api/stats/ max-age=1, stale-while-revalidate=10' corral -upstream http://stats.internal:9000

  Responses say what decided in Cache-Status, e.g.
    Cache-Status: corral; hit; ttl=1; corral-rule="/api/stats/"

  A fleet: replicas behind a load balancer share one Redis as a second
  tier, and the origin sees one request per key per freshness window however
  many run; when Redis is down each replica serves alone, as without -redis:
    corral -upstream http://stats.internal:9000 -listen :8080 -redis redis://cache.internal:6379/0
  or, on a Redis Cluster:
    corral -upstream http://stats.internal:9000 -listen :8080 -redis 'redis+cluster://cache1.internal:6379?addr=cache2.internal:6379'

  See corral shield an origin that sends no-cache:
    corral -demo -demo-origin-cc no-cache -rule '/ max-age=1, stale-while-revalidate=10'

  See three replicas alone and sharing a throwaway redis-server:
    corral -demo -demo-replicas 3
`

// ruleList is the -rule flag: rules in the order given, one per prefix.
type ruleList []rules.Rule

func (l *ruleList) list() {}

func (l *ruleList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, r := range *l {
		s[i] = r.String()
	}
	return strings.Join(s, "\n")
}

func (l *ruleList) Set(s string) error {
	r, err := rules.Parse(s)
	if err != nil {
		return err
	}
	for _, old := range *l {
		if old.Prefix == r.Prefix {
			return fmt.Errorf("a rule for %s is given already: %q", r.Prefix, old.String())
		}
	}
	*l = append(*l, r)
	return nil
}

// loopback reports whether addr (host:port) listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseUpstream accepts an absolute http or https URL with a host.
func parseUpstream(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("missing; give the origin's URL, e.g. -upstream http://127.0.0.1:9000")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL", s)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q must be an absolute http:// or https:// URL", s)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q must not have a query or fragment", s)
	}
	return u, nil
}

// checkRedisURL accepts what -redis may be: a redis://, rediss:// or
// unix:// URL that go-redis parses, or a redis+cluster:// or
// rediss+cluster:// URL that it parses as a Redis Cluster's. It returns
// the URL without its password, to show in logs and errors.
func checkRedisURL(s string) (shown string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URL; want e.g. redis://cache.internal:6379/0")
	}
	shown = s
	if _, ok := u.User.Password(); ok {
		shown = u.Redacted()
	}
	if cu, ok := redisstore.ClusterURL(s); ok {
		if _, err := redis.ParseClusterURL(cu); err != nil {
			return "", fmt.Errorf("%q: %v", shown, err)
		}
		return shown, nil
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix" {
		return "", fmt.Errorf("%q must be a redis://, rediss:// or unix:// URL, e.g. redis://cache.internal:6379/0, or a redis+cluster:// URL", shown)
	}
	if _, err := redis.ParseURL(s); err != nil {
		// go-redis's errors quote no password, only the part at fault.
		return "", fmt.Errorf("%q: %v", shown, err)
	}
	return shown, nil
}

// parsePrefixes reads a comma-separated list of IP addresses and CIDR
// prefixes.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		pfx, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address or CIDR prefix such as 10.0.0.0/8", f)
		}
		out = append(out, pfx.Masked())
	}
	return out, nil
}

// byteSize is a flag value in bytes that accepts KiB, MiB and GiB suffixes
// (and KB, MB, GB as the same powers of two).
type byteSize int64

// zeroOrSize is a byteSize flag that 0 turns off.
type zeroOrSize struct{ byteSize }

func (z *zeroOrSize) Set(s string) error {
	if strings.TrimSpace(s) == "0" {
		z.byteSize = 0
		return nil
	}
	return z.byteSize.Set(s)
}

// rate is z as a proxy.Config rate: negative for off, since zero there
// means the default.
func (z *zeroOrSize) rate() int64 {
	if z.byteSize == 0 {
		return -1
	}
	return int64(z.byteSize)
}

func (b *byteSize) String() string {
	n := int64(*b)
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(strings.ToUpper(num), strings.ToUpper(u.suffix)) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.size
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return errors.New("want a positive size such as 512MiB")
	}
	*b = byteSize(n * mult)
	return nil
}

// redisLog hands the Redis client's log lines to slog, at debug level.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}
