// Package redistest starts throwaway redis-server processes, for tests and
// the fleet demo: each on a free loopback port or a Unix socket, saving
// nothing to disk, killed when its test ends or its caller says so.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// readyWithin bounds how long a server may take to answer PING.
const readyWithin = 10 * time.Second

// maxSocketPath is about the longest path a Unix socket may have (the
// kernel's limit is 108 bytes on Linux, 104 on the BSDs).
const maxSocketPath = 100

// ErrNotInstalled is Run's error when redis-server is not on PATH.
var ErrNotInstalled = errors.New("redis-server is not on PATH; install it with: apt-get install redis-server")

// Server is a running redis-server.
type Server struct {
	// Addr is where it listens: host:port, or a socket's path.
	Addr string
	// URL is Addr as a redis:// or unix:// URL.
	URL string

	t    testing.TB // nil for a server from Run
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	out  *tail
}

// Run starts a redis-server that keeps its files in dir (nothing is saved;
// dir must exist), listening on a Unix socket in dir when unix is true,
// else on a free loopback port, and returns once it answers PING. The
// caller kills it with Kill; dir is left for the caller to remove.
func Run(dir string, unix bool) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNotInstalled
	}
	s := &Server{}
	s.args = []string{"--save", "", "--appendonly", "no", "--dir", dir, "--bind", "127.0.0.1", "--enable-debug-command", "local"}
	if unix {
		s.Addr = filepath.Join(dir, "redis.sock")
		if len(s.Addr) > maxSocketPath {
			return nil, fmt.Errorf("redistest: socket path %s is longer than %d bytes", s.Addr, maxSocketPath)
		}
		s.URL = "unix://" + s.Addr
		s.args = append(s.args, "--port", "0", "--unixsocket", s.Addr)
	} else {
		// The port is free when we look; another process could take it
		// before redis-server binds it, and then start fails.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("redistest: finding a free port: %w", err)
		}
		s.Addr = l.Addr().String()
		l.Close()
		s.URL = "redis://" + s.Addr + "/0"
		s.args = append(s.args, "--port", fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Start starts a redis-server for t with Run, in a directory removed when
// the test ends, and kills it then. Without redis-server on PATH, the test
// fails when CI is "true" and is skipped otherwise.
func Start(t testing.TB, unix bool) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not on PATH, and CI=true requires it (.ci/run installs it)")
		}
		t.Skip("redis-server is not on PATH; install it with: apt-get install redis-server")
	}
	dir := t.TempDir()
	if unix {
		// A socket's path is limited to about 100 bytes: t.TempDir's,
		// named for the test, may be longer.
		var err error
		if dir, err = os.MkdirTemp("", "redis"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	s, err := Run(dir, unix)
	if err != nil {
		t.Fatal(err)
	}
	s.t = t
	t.Cleanup(s.Kill)
	return s
}

// start starts the process and waits for it to answer PING.
func (s *Server) start() error {
	s.out = &tail{max: 4 << 10}
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return fmt.Errorf("redistest: starting redis-server: %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait() //nolint:errcheck // killed on purpose, or seen below
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
			return nil
		}
		select {
		case <-s.done:
			s.cmd = nil
			return fmt.Errorf("redistest: redis-server %v exited before it was ready:\n%s", s.args, s.out)
		case <-ctx.Done():
			s.Kill()
			return fmt.Errorf("redistest: redis-server on %s not ready after %v: %v", s.Addr, readyWithin, err)
		case <-tick.C:
		}
	}
}

// Client returns a new client of the server, with retries off.
func (s *Server) Client() *redis.Client {
	opt, err := redis.ParseURL(s.URL)
	if err != nil {
		// Run made the URL; it parses.
		panic(fmt.Sprintf("redistest: %v", err))
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
	s.cmd.Process.Kill() //nolint:errcheck // it may have exited
	<-s.done
	s.cmd = nil
}

// Restart starts the server again, on the same address, empty. For a
// server from Start, a failure fails the test; from Run, it panics.
func (s *Server) Restart() {
	if s.t != nil {
		s.t.Helper()
	}
	s.Kill()
	if err := s.start(); err != nil {
		if s.t != nil {
			s.t.Fatal(err)
		}
		panic(err)
	}
}

// tail keeps the last max bytes written to it: what redis-server said
// before it exited.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
