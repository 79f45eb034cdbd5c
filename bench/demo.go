package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"corral/proxy"
)

// DemoCacheControl is what the demo origin sends unless told otherwise: it
// lets caches serve its answer for a second and stale for ten more while
// they refresh it.
const DemoCacheControl = "max-age=1, stale-while-revalidate=10"

// DemoOrigin returns the origin of the demo: a stats endpoint that allows
// 5 requests a second, takes about 50 ms, and sends cacheControl ("" for
// no Cache-Control at all).
func DemoOrigin(cacheControl string) *Origin {
	return &Origin{
		Latency:      50 * time.Millisecond,
		RateLimit:    5,
		CacheControl: cacheControl,
		Body:         []byte(`{"visitors":1234,"orders":56,"status":"ok"}` + "\n"),
	}
}

// Demo runs a herd of clients polling /api/stats once a second for d, first
// straight at a demo origin that sends originCC as its Cache-Control and
// then through corral configured by cfg, and writes a table comparing the
// two runs to w.
func Demo(ctx context.Context, w io.Writer, clients int, d time.Duration, originCC string, cfg proxy.Config) error {
	demoHeader(w, clients, d, originCC, cfg)
	herd := Herd{Clients: clients, Interval: time.Second, Duration: d, Client: NewClient(clients)}

	fmt.Fprintln(w, "running straight at the origin...")
	direct := DemoOrigin(originCC)
	directRes, err := runAgainst(ctx, herd, direct, nil)
	if err != nil {
		return err
	}

	fmt.Fprintln(w, "running through corral...")
	shielded := DemoOrigin(originCC)
	corralRes, err := runAgainst(ctx, herd, shielded, &cfg)
	if err != nil {
		return err
	}

	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tdirect\tvia corral\t")
	row := func(name string, a, b any) { fmt.Fprintf(tw, "%s\t%v\t%v\t\n", name, a, b) }
	row("client requests", directRes.Requests, corralRes.Requests)
	row("client errors", directRes.Errors, corralRes.Errors)
	row("p50 latency", directRes.P50.Round(10*time.Microsecond), corralRes.P50.Round(10*time.Microsecond))
	row("p99 latency", directRes.P99.Round(10*time.Microsecond), corralRes.P99.Round(10*time.Microsecond))
	row("upstream requests", direct.Requests(), shielded.Requests())
	row("upstream 503s", direct.Rejected(), shielded.Rejected())
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(cfg.Rules) == 0 && originCC != DemoCacheControl {
		fmt.Fprintf(w, "With a rule, corral decides how long to keep the answer whatever the origin sends:\n  corral -demo -demo-origin-cc '%s' -rule '/ max-age=1, stale-while-revalidate=10'\n", originCC)
	}
	return nil
}

// demoHeader says what the demo runs.
func demoHeader(w io.Writer, clients int, d time.Duration, originCC string, cfg proxy.Config) {
	fmt.Fprintf(w, "%d clients poll /api/stats every second for %s; the origin allows 5 req/s.\n", clients, d)
	if originCC == "" {
		fmt.Fprintln(w, "The origin sends no Cache-Control.")
	} else {
		fmt.Fprintf(w, "The origin sends Cache-Control: %s\n", originCC)
	}
	for _, r := range cfg.Rules {
		fmt.Fprintf(w, "corral -rule '%s'\n", r)
	}
}

// runAgainst serves origin on a loopback port, puts corral in front of it
// when cfg is not nil, and runs the herd against the front.
func runAgainst(ctx context.Context, herd Herd, origin *Origin, cfg *proxy.Config) (Result, error) {
	if cfg == nil {
		return runReplicas(ctx, herd, origin, nil, 0, nil)
	}
	return runReplicas(ctx, herd, origin, cfg, 1, nil)
}

// serve runs h on a loopback port until stop is called.
func serve(h http.Handler) (u *url.URL, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Println("bench: serve:", err)
		}
	}()
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx) //nolint:errcheck
		<-done
	}
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, stop, nil
}
