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
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"corral/bench"
	"corral/proxy"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stderr, os.LookupEnv))
}

// run parses args, then takes every flag they leave out from its CORRAL_
// variable in getenv, serves until ctx ends or SIGINT/SIGTERM arrives, and
// returns the exit code: 0 after a clean shutdown, 2 for bad flags.
func run(ctx context.Context, args []string, stderr io.Writer, getenv func(string) (string, bool)) int {
	fs := flag.NewFlagSet("corral", flag.ContinueOnError)
	// A bad value gets one line from run below, not the flag package's
	// line followed by the whole usage.
	fs.SetOutput(io.Discard)
	var (
		listen          = fs.String("listen", ":8080", "address to serve clients on")
		upstream        = fs.String("upstream", "", "origin URL every request goes to, e.g. http://stats.internal:9000 (required)")
		cacheBytes      = byteSize(256 << 20)
		maxObjectBytes  = byteSize(8 << 20)
		upstreamTimeout = fs.Duration("upstream-timeout", 30*time.Second, "longest an upstream exchange may take, body included; waiters then get 504")
		passTTL         = fs.Duration("pass-ttl", 10*time.Second, "how long a URL whose response could not be shared goes upstream without coalescing")
		defaultTTL      = fs.Duration("default-ttl", 0, "freshness lifetime for cacheable responses that carry none (0: RFC 9111 heuristic only)")
		defaultSWR      = fs.Duration("default-stale-while-revalidate", 0, "stale-while-revalidate window for responses that carry none (0: off)")
		defaultSIE      = fs.Duration("default-stale-if-error", 0, "stale-if-error window for responses that carry none (0: off)")
		requestNoCache  = fs.String("request-no-cache", "revalidate", "what a client's Cache-Control: no-cache, max-age=0 or Pragma: no-cache does: revalidate (one coalesced upstream request, not one per client) or ignore (answer from the cache)")
		shutdownTimeout = fs.Duration("shutdown-timeout", 10*time.Second, "how long to let in-flight requests finish after SIGINT or SIGTERM")
		demo            = fs.Bool("demo", false, "run the demo: a rate-limited origin, a herd of pollers, with and without corral")
		demoClients     = fs.Int("demo-clients", 200, "number of polling clients in the demo")
		demoDuration    = fs.Duration("demo-duration", 10*time.Second, "how long each half of the demo polls")
	)
	fs.Var(&cacheBytes, "cache-bytes", "memory budget of the cache: bodies, headers and keys (e.g. 256MiB)")
	fs.Var(&maxObjectBytes, "max-object-bytes", "largest response body that is cached (e.g. 8MiB)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "usage: corral -upstream URL [flags]\n\nA caching reverse proxy that shields one HTTP origin from herds of pollers.\nEvery flag can also be set by the environment variable named after it; a flag beats the variable.\n\nFlags:")
			printFlags(stderr, fs)
			return 0
		}
		fmt.Fprintln(stderr, "corral:", err)
		return 2
	}
	fromEnv, err := setFromEnv(fs, getenv)
	if err != nil {
		fmt.Fprintln(stderr, "corral:", err)
		return 2
	}
	// named is how errors name a flag: with its variable if that set it.
	named := func(name string) string {
		if fromEnv[name] {
			return envName(name) + " (-" + name + ")"
		}
		return "-" + name
	}

	// Ranges the flag types cannot express.
	for _, c := range []struct {
		name string
		ok   bool
		want string
	}{
		{"upstream-timeout", *upstreamTimeout > 0, "positive"},
		{"shutdown-timeout", *shutdownTimeout > 0, "positive"},
		{"pass-ttl", *passTTL >= 0, "zero or more"},
		{"default-ttl", *defaultTTL >= 0, "zero or more"},
		{"default-stale-while-revalidate", *defaultSWR >= 0, "zero or more"},
		{"default-stale-if-error", *defaultSIE >= 0, "zero or more"},
		{"demo-clients", *demoClients > 0, "positive"},
		{"demo-duration", *demoDuration > 0, "positive"},
	} {
		if !c.ok {
			fmt.Fprintf(stderr, "corral: %s: must be %s, got %s\n", named(c.name), c.want, fs.Lookup(c.name).Value)
			return 2
		}
	}

	noCache, ok := map[string]proxy.RequestNoCache{"revalidate": proxy.RequestNoCacheRevalidate, "ignore": proxy.RequestNoCacheIgnore}[*requestNoCache]
	if !ok {
		fmt.Fprintf(stderr, "corral: %s: want revalidate or ignore, got %q\n", named("request-no-cache"), *requestNoCache)
		return 2
	}
	cfg := proxy.Config{
		RequestNoCache:  noCache,
		CacheBytes:      int64(cacheBytes),
		MaxObjectBytes:  int64(maxObjectBytes),
		UpstreamTimeout: *upstreamTimeout,
		PassTTL:         *passTTL,
	}
	cfg.Policy.DefaultTTL = *defaultTTL
	cfg.Policy.DefaultSWR = *defaultSWR
	cfg.Policy.DefaultSIE = *defaultSIE

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if *demo {
		// The demo's own origin is noisy by design; keep its warnings out.
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if err := bench.Demo(ctx, os.Stdout, *demoClients, *demoDuration, cfg); err != nil {
			fmt.Fprintln(stderr, "corral: demo:", err)
			return 1
		}
		return 0
	}

	u, err := parseUpstream(*upstream)
	if err != nil {
		fmt.Fprintf(stderr, "corral: %s: %v\n", named("upstream"), err)
		return 2
	}
	cfg.Upstream = u
	p, err := proxy.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "corral:", err)
		return 2
	}

	srv := &http.Server{
		Addr:              *listen,
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	slog.Info("corral listening", "listen", *listen, "upstream", u.String())

	select {
	case err := <-errc:
		fmt.Fprintln(stderr, "corral:", err)
		return 1
	case <-ctx.Done():
	}
	slog.Info("shutting down", "timeout", *shutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintln(stderr, "corral: shutdown:", err)
		return 1
	}
	// Let background refreshes finish too, within the same deadline.
	refreshed := make(chan struct{})
	go func() { p.Wait(); close(refreshed) }()
	select {
	case <-refreshed:
	case <-sctx.Done():
		fmt.Fprintln(stderr, "corral: shutdown: background refreshes still running at the deadline")
		return 1
	}
	return 0
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

// byteSize is a flag value in bytes that accepts KiB, MiB and GiB suffixes
// (and KB, MB, GB as the same powers of two).
type byteSize int64

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
