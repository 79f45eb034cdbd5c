package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBadUpstreamExitsTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing", nil, "corral: -upstream: missing; give the origin's URL, e.g. -upstream http://127.0.0.1:9000\n"},
		{"not http", []string{"-upstream", "ftp://origin"}, `corral: -upstream: "ftp://origin" must be an absolute http:// or https:// URL` + "\n"},
		{"no host", []string{"-upstream", "http://"}, `corral: -upstream: "http://" must be an absolute http:// or https:// URL` + "\n"},
		{"relative", []string{"-upstream", "origin:9000"}, `corral: -upstream: "origin:9000" must be an absolute http:// or https:// URL` + "\n"},
		{"query", []string{"-upstream", "http://origin/?a=1"}, `corral: -upstream: "http://origin/?a=1" must not have a query or fragment` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stderr); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if diff := cmp.Diff(tt.want, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stderr); code != 0 {
		t.Errorf("-h exit code %d, want 0", code)
	}
	for _, flag := range []string{
		"-listen", "-upstream", "-cache-bytes", "-max-object-bytes", "-upstream-timeout",
		"-default-ttl", "-default-stale-while-revalidate", "-default-stale-if-error",
		"-pass-ttl", "-request-no-cache", "-shutdown-timeout", "-demo",
	} {
		if !strings.Contains(stderr.String(), "  "+flag+" ") && !strings.Contains(stderr.String(), "  "+flag+"\n") {
			t.Errorf("-h does not explain %s:\n%s", flag, stderr.String())
		}
	}
	if !strings.Contains(stderr.String(), `(default 256MiB)`) {
		t.Errorf("-h does not show the cache budget's default in bytes units:\n%s", stderr.String())
	}
}

func TestBadSizeFlagExitsTwo(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"-upstream", "http://127.0.0.1:1", "-cache-bytes", "lots"}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), `invalid value "lots" for flag -cache-bytes`) {
		t.Errorf("exit %d, stderr %q: want 2 naming the flag", code, stderr.String())
	}
}

func TestBadRequestNoCacheExitsTwo(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"-upstream", "http://127.0.0.1:1", "-request-no-cache", "sometimes"}, &stderr)
	if want := "corral: -request-no-cache: want revalidate or ignore, got \"sometimes\"\n"; code != 2 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q: want 2 and %q", code, stderr.String(), want)
	}
}

func TestByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"1024", 1024},
		{"64KiB", 64 << 10},
		{"256MiB", 256 << 20},
		{"1GiB", 1 << 30},
		{"2GB", 2 << 30},
		{"512M", 512 << 20},
		{"10B", 10},
	}
	for _, tt := range tests {
		var b byteSize
		if err := b.Set(tt.in); err != nil || int64(b) != tt.want {
			t.Errorf("Set(%q) = %d, %v; want %d", tt.in, b, err, tt.want)
		}
	}
	for _, bad := range []string{"", "-1", "0", "MiB", "1.5GiB", "9999999999GiB"} {
		var b byteSize
		if err := b.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted %d, want an error", bad, b)
		}
	}
}

func TestShutdownOnSignalExitsZero(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1"}, &stderr)
	}()
	cancel() // what SIGTERM does through signal.NotifyContext
	if code := <-done; code != 0 {
		t.Errorf("exit code %d after shutdown, want 0; stderr: %s", code, stderr.String())
	}
}
