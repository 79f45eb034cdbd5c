package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"corral/proxy"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// DemoFleet runs the demo's herd three ways and writes one table of them to
// w: straight at a demo origin, through replicas corral replicas that each
// fetch on their own, and through the same replicas sharing a throwaway
// redis-server as their fleet. Each replica is a proxy configured by cfg
// with its own memory store, on its own loopback port; the clients are
// spread over them round-robin, as a load balancer would spread them.
func DemoFleet(ctx context.Context, w io.Writer, replicas, clients int, d time.Duration, originCC string, cfg proxy.Config) error {
	// Redis first: without redis-server, say so before polling anything.
	dir, err := os.MkdirTemp("", "corral-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	redis, err := redistest.Run(dir, false)
	if errors.Is(err, redistest.ErrNotInstalled) {
		return fmt.Errorf("%w (make demo-fleet installs it)", err)
	}
	if err != nil {
		return err
	}
	defer redis.Kill()

	demoHeader(w, clients, d, originCC, cfg)
	fmt.Fprintf(w, "%d corral replicas, each with its own memory, get the clients round-robin;\nthe last run shares a throwaway redis-server on %s.\n", replicas, redis.Addr)
	herd := Herd{Clients: clients, Interval: time.Second, Duration: d, Client: NewClient(clients)}

	fmt.Fprintln(w, "running straight at the origin...")
	direct := DemoOrigin(originCC)
	directRes, err := runAgainst(ctx, herd, direct, nil)
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "running through %d replicas alone...\n", replicas)
	alone := DemoOrigin(originCC)
	aloneRes, err := runReplicas(ctx, herd, alone, &cfg, replicas, nil)
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "running through %d replicas sharing Redis...\n", replicas)
	shared := DemoOrigin(originCC)
	join := func() (*fleet.Fleet, error) {
		return fleet.New(fleet.Config{Addr: redis.URL, Logger: cfg.Logger})
	}
	sharedRes, err := runReplicas(ctx, herd, shared, &cfg, replicas, join)
	if err != nil {
		return err
	}

	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tdirect\t%d replicas alone\t%d replicas + Redis\t\n", replicas, replicas)
	row := func(name string, f func(Result, *Origin) any) {
		fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t\n", name, f(directRes, direct), f(aloneRes, alone), f(sharedRes, shared))
	}
	row("client requests", func(r Result, _ *Origin) any { return r.Requests })
	row("client errors", func(r Result, _ *Origin) any { return r.Errors })
	row("p50 latency", func(r Result, _ *Origin) any { return r.P50.Round(10 * time.Microsecond) })
	row("p99 latency", func(r Result, _ *Origin) any { return r.P99.Round(10 * time.Microsecond) })
	row("upstream requests", func(_ Result, o *Origin) any { return o.Requests() })
	row("upstream per second", func(_ Result, o *Origin) any { return fmt.Sprintf("%.1f", float64(o.Requests())/d.Seconds()) })
	row("upstream 503s", func(_ Result, o *Origin) any { return o.Rejected() })
	return tw.Flush()
}

// runReplicas serves origin on a loopback port, puts n corral replicas in
// front of it when cfg is not nil (each on its own port, with its own
// memory store, and with the Fleet join returns when join is not nil), and
// runs the herd against them, spread round-robin.
func runReplicas(ctx context.Context, herd Herd, origin *Origin, cfg *proxy.Config, n int, join func() (*fleet.Fleet, error)) (Result, error) {
	originURL, stop, err := serve(origin)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	herd.URL = originURL.String() + "/api/stats"
	if cfg == nil {
		return herd.Run(ctx), nil
	}
	herd.URL, herd.URLs = "", nil
	for range n {
		front, done, err := startReplica(*cfg, originURL, join)
		if err != nil {
			return Result{}, err
		}
		defer done()
		herd.URLs = append(herd.URLs, front.String()+"/api/stats")
	}
	return herd.Run(ctx), nil
}

// startReplica starts one corral in front of originURL, and returns its
// address and the function that stops it: the listener first, then the
// fetches under way, then its Fleet.
func startReplica(c proxy.Config, originURL *url.URL, join func() (*fleet.Fleet, error)) (*url.URL, func(), error) {
	c.Upstream = originURL
	c.Store = nil // a memory store of its own
	if join != nil {
		f, err := join()
		if err != nil {
			return nil, nil, err
		}
		c.Fleet = f
	}
	closeFleet := func() {
		if c.Fleet != nil {
			c.Fleet.Close() //nolint:errcheck // the demo is over
		}
	}
	p, err := proxy.New(c)
	if err != nil {
		closeFleet()
		return nil, nil, err
	}
	front, stopFront, err := serve(p)
	if err != nil {
		p.Wait()
		closeFleet()
		return nil, nil, err
	}
	return front, func() {
		stopFront()
		p.Wait()
		closeFleet()
	}, nil
}
