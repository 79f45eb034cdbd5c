package bench

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"corral/proxy"
)

// TestReplicasAloneEachFetch is the fleet demo's middle column, shortened:
// the herd spread over three replicas without a shared tier. Every poll is
// answered, and each replica asks the origin on its own, so the origin
// sees at least one request per replica (the clients reached all three)
// and at most one per replica per max-age window, plus its first miss.
func TestReplicasAloneEachFetch(t *testing.T) {
	const (
		replicas = 3
		clients  = 30
		d        = 2 * time.Second
	)
	origin := DemoOrigin(DemoCacheControl)
	cfg := proxy.Config{Logger: slog.New(slog.DiscardHandler)}
	herd := Herd{Clients: clients, Interval: 500 * time.Millisecond, Duration: d, Client: NewClient(clients)}
	res, err := runReplicas(context.Background(), herd, origin, &cfg, replicas, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests < clients || res.Errors != 0 {
		t.Errorf("herd made %d polls with %d errors, want at least %d and 0", res.Requests, res.Errors, clients)
	}
	windows := int64(d / time.Second) // max-age=1
	if n := origin.Requests(); n < replicas || n > replicas*(windows+1) {
		t.Errorf("origin saw %d requests, want %d to %d: one per replica per window", n, replicas, replicas*(windows+1))
	}
}

// TestDemoFleetPrintsThreeColumns runs the fleet demo, shortened, and
// checks its table.
func TestDemoFleetPrintsThreeColumns(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not on PATH, and CI=true requires it (.ci/run installs it)")
		}
		t.Skip("redis-server is not on PATH; install it with: apt-get install redis-server")
	}
	var out bytes.Buffer
	cfg := proxy.Config{Logger: slog.New(slog.DiscardHandler)}
	err := DemoFleet(context.Background(), &out, 3, 12, time.Second, DemoCacheControl, cfg)
	if err != nil {
		t.Fatalf("DemoFleet: %v\n%s", err, out.String())
	}
	for _, want := range []string{"direct", "3 replicas alone", "3 replicas + Redis", "client errors", "upstream requests", "upstream per second"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the fleet demo's table lacks %q:\n%s", want, out.String())
		}
	}
}
