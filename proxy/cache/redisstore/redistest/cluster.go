package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// clusterNodes is how many masters StartCluster starts.
const clusterNodes = 3

// Cluster is a running Redis Cluster of masters only, on loopback ports.
type Cluster struct {
	// Addrs are the nodes' host:port.
	Addrs []string
	// URL names them all as a redis+cluster:// URL, as corral's -redis
	// takes it.
	URL string

	nodes []*Server
}

// StartCluster starts three redis-server nodes in cluster mode, joins
// them with redis-cli --cluster create, waits until every node says the
// cluster is ok, and kills them when the test ends. Without redis-server
// or redis-cli on PATH, the test fails when CI is "true" and is skipped
// otherwise.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not on PATH, and CI=true requires it (.ci/run installs it)", bin)
			}
			t.Skipf("%s is not on PATH; install it with: apt-get install redis-server", bin)
		}
	}
	dir := t.TempDir()
	c := &Cluster{}
	t.Cleanup(c.Kill)
	for range clusterNodes {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: finding a free port: %v", err)
		}
		addr := l.Addr().String()
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		s := &Server{Addr: addr, URL: "redis://" + addr, t: t}
		s.args = []string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
			"--enable-debug-command", "local"}
		if err := s.start(); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, s)
		c.Addrs = append(c.Addrs, addr)
	}
	c.URL = "redis+cluster://" + c.Addrs[0]
	for i, a := range c.Addrs[1:] {
		c.URL += map[bool]string{true: "?", false: "&"}[i == 0] + "addr=" + a
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*readyWithin)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "redis-cli", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	for _, s := range c.nodes {
		nc := s.Client()
		for {
			info, err := nc.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			select {
			case <-ctx.Done():
				nc.Close()
				t.Fatalf("redistest: node %s: cluster not ok after %v: %v\n%s", s.Addr, 4*readyWithin, err, info)
			case <-time.After(20 * time.Millisecond):
			}
		}
		nc.Close()
	}
	return c
}

// Client returns a new client of the cluster, with retries off.
func (c *Cluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                    c.Addrs,
		MaxRetries:               -1,
		MaxRedirects:             3,
		ContextTimeoutEnabled:    true,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// Kill kills every node and waits for them to exit.
func (c *Cluster) Kill() {
	for _, s := range c.nodes {
		s.Kill()
	}
}
