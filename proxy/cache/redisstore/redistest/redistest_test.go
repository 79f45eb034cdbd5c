package redistest

import (
	"context"
	"os"
	"os/exec"
	"testing"
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
