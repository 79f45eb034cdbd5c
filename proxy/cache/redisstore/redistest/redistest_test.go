package redistest

import (
	"context"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestRunServesUntilKilled(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip(ErrNotInstalled)
	}
	for _, unix := range []bool{false, true} {
		// A socket's path must be short: not under t.TempDir.
		dir, err := os.MkdirTemp("", "redistest")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		s, err := Run(dir, unix)
		if err != nil {
			t.Fatalf("Run(unix=%v): %v", unix, err)
		}
		c := s.Client()
		if err := c.Ping(context.Background()).Err(); err != nil {
			t.Errorf("unix=%v: PING after Run: %v", unix, err)
		}
		s.Kill()
		if err := c.Ping(context.Background()).Err(); err == nil {
			t.Errorf("unix=%v: PING answered after Kill", unix)
		}
		c.Close()
		s.Kill() // twice is fine
	}
}

func TestStartCluster(t *testing.T) {
	c := StartCluster(t)
	cc := c.Client()
	defer cc.Close()
	ctx := context.Background()
	// Ten keys land on more than one node: the client follows the slots.
	for i := range 10 {
		k := string(rune('a' + i))
		if err := cc.Set(ctx, k, k, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	var masters atomic.Int32
	err := cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		masters.Add(1)
		return n.Ping(ctx).Err()
	})
	if err != nil || masters.Load() != 3 {
		t.Errorf("ForEachMaster: %d masters, %v; want 3", masters.Load(), err)
	}
}
