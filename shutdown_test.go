package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"corral/internal/testwait"
)

// TestSIGTERMMidLoadFinishesAcceptedRequests sends SIGTERM while requests
// wait on the origin: every one of them must still get its answer, readiness
// must fail at once, the exit code must be 0 and no goroutine may be left.
func TestSIGTERMMidLoadFinishesAcceptedRequests(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		// os/signal's watcher starts with the first Notify and never ends.
		goleak.IgnoreTopFunction("os/signal.signal_recv"), goleak.IgnoreTopFunction("os/signal.loop"))

	const clients = 20
	arrived := make(chan struct{}, clients)
	release := make(chan struct{})
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprint(w, "answer for ", r.URL.Path)
	}))
	defer origin.Close()

	listen, admin := freeAddr(t), freeAddr(t)
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), []string{"-listen", listen, "-admin-listen", admin, "-upstream", origin.URL}, &stderr, noEnv)
	}()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	waitFor(t, client, "http://"+admin+"/readyz", http.StatusOK)

	// Each client asks for its own key, so each is a fetch of its own.
	type answer struct {
		status int
		body   string
		err    error
	}
	answers := make(chan answer, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(fmt.Sprintf("http://%s/k/%d", listen, i))
			if err != nil {
				answers <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			answers <- answer{resp.StatusCode, string(b), err}
		}()
	}
	for range clients {
		<-arrived // every request is accepted and waits on the origin
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, client, "http://"+admin+"/readyz", http.StatusServiceUnavailable)
	close(release)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.err != nil || a.status != http.StatusOK || len(a.body) < len("answer for /k/0") {
			t.Errorf("accepted request ended with status %d, body %q, err %v; want its 200", a.status, a.body, a.err)
		}
	}
	if code := <-done; code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, stderr.String())
	}
	if _, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		t.Errorf("%s still accepts connections after shutdown", listen)
	}
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitFor polls url until it answers want: the server under test runs on
// its own.
func waitFor(t *testing.T, c *http.Client, url string, want int) {
	t.Helper()
	testwait.UntilNil(t, fmt.Sprintf("%s to answer %d", url, want), func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

func TestPortInUseExitsOneNamingTheFlag(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"-upstream", "http://127.0.0.1:1", "-listen", "127.0.0.1:0", "-admin-listen", ln.Addr().String()}, &stderr, noEnv)
	if want := "corral: -admin-listen: listen tcp " + ln.Addr().String() + ": bind: address already in use\n"; code != 1 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), want)
	}
}
