// Package redistest starts throwaway redis-server processes, for tests and
// the fleet demo:
// on a free port or a Unix socket under t.TempDir, saving nothing to
// disk, stopped when the test ends.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// readyWithin bounds how long a server may take to answer PING.
const readyWithin = 10 * time.Second

// Server is a redis-server that a test started.
type Server struct {
	// Addr is where it listens: host:port, or a socket's path.
	Addr string
	// URL is Addr as a redis:// or unix:// URL.
	URL string

	t    testing.TB
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts a redis-server for t, listening on a Unix socket under
// t.TempDir when unix is true, else on a free loopback port. Without
// redis-server on PATH, the test fails when CI is "true" and is skipped
// otherwise.
func Start(t testing.TB, unix bool) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not on PATH, and CI=true requires it (.ci/run installs it)")
		}
		t.Skip("redis-server is not on PATH; install it with: apt-get install redis-server")
	}
	s := &Server{t: t}
	s.args = []string{"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--bind", "127.0.0.1"}
	if unix {
		// A socket's path is limited to about 100 bytes: t.TempDir's,
		// named for the test, may be longer.
		dir, err := os.MkdirTemp("", "redis")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		s.Addr = filepath.Join(dir, "redis.sock")
		s.URL = "unix://" + s.Addr
		s.args = append(s.args, "--port", "0", "--unixsocket", s.Addr)
	} else {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Addr = l.Addr().String()
		l.Close()
		s.URL = "redis://" + s.Addr + "/0"
		s.args = append(s.args, "--port", fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
	}
	s.start()
	t.Cleanup(s.Kill)
	return s
}

// start starts the process and waits for it to answer PING.
func (s *Server) start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(s.cmd, s.done)

	c := s.Client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyWithin)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return
		}
		select {
		case <-s.done:
			s.t.Fatalf("redis-server %v exited before it was ready", s.args)
		case <-ctx.Done():
			s.Kill()
			s.t.Fatalf("redis-server on %s not ready after %v: %v", s.Addr, readyWithin, err)
		case <-tick.C:
		}
	}
}

// Client returns a new client of the server, with retries off.
func (s *Server) Client() *redis.Client {
	opt, err := redis.ParseURL(s.URL)
	if err != nil {
		s.t.Fatal(err)
	}
	opt.MaxRetries = -1
	opt.ContextTimeoutEnabled = true
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return redis.NewClient(opt)
}

// Kill kills the server, if it runs, and waits for it to exit.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again, on the same address, empty.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}
