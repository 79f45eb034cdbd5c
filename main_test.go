package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"corral/internal/testwait"
	"corral/proxy/fleet"
	"corral/proxy/rules"
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
			if code := run(context.Background(), tt.args, &stderr, noEnv); code != 2 {
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
	if code := run(context.Background(), []string{"-h"}, &stderr, noEnv); code != 0 {
		t.Errorf("-h exit code %d, want 0", code)
	}
	for _, flag := range []string{
		"-listen", "-upstream", "-cache-bytes", "-max-object-bytes", "-upstream-timeout",
		"-default-ttl", "-default-stale-while-revalidate", "-default-stale-if-error",
		"-pass-ttl", "-request-no-cache", "-revalidate-interval", "-shutdown-timeout", "-demo",
		"-admin-listen", "-admin-token", "-log-level", "-log-format",
		"-upstream-max-rps", "-upstream-max-inflight", "-upstream-max-queue", "-upstream-max-pause",
		"-trusted-proxies",
		"-max-request-body-bytes", "-request-body-timeout", "-buffer-bytes",
		"-max-header-bytes", "-client-write-timeout", "-client-min-rate", "-max-connections",
		"-rule", "-demo-origin-cc",
		"-redis", "-redis-timeout", "-redis-prefix", "-redis-max-object-bytes", "-redis-lease-ttl",
		"-demo-replicas",
	} {
		if !strings.Contains(stderr.String(), "  "+flag+" ") && !strings.Contains(stderr.String(), "  "+flag+"\n") {
			t.Errorf("-h does not explain %s:\n%s", flag, stderr.String())
		}
	}
	for _, example := range []string{
		"The origin sends no Cache-Control",
		"-rule '/api/ max-age=5, stale-while-revalidate=30'",
		"The origin sends Cache-Control: no-cache",
		"-rule '/api/stats/ max-age=1, stale-while-revalidate=10'",
		"The origin sends max-age=3600, too long for the dashboards",
		"-rule '/api/dashboard/ max-age=10'",
		"CORRAL_RULES='/api/ max-age=5\n",
		"corral -demo -demo-origin-cc no-cache -rule '/ max-age=1, stale-while-revalidate=10'",
		"A fleet: replicas behind a load balancer share one Redis",
		"-redis redis://cache.internal:6379/0",
		"corral -demo -demo-replicas 3",
	} {
		if !strings.Contains(stderr.String(), example) {
			t.Errorf("-h lacks the worked example %q:\n%s", example, stderr.String())
		}
	}
	if !strings.Contains(stderr.String(), `(default 256MiB)`) {
		t.Errorf("-h does not show the cache budget's default in bytes units:\n%s", stderr.String())
	}
}

// noEnv is an empty environment, so tests do not see the one they run in.
func noEnv(string) (string, bool) { return "", false }

func TestHelpNamesEveryFlagsVariable(t *testing.T) {
	// Every variable run looks up is one flag's; with no flags given and
	// no upstream it looks up all of them and stops.
	var looked []string
	lookup := func(name string) (string, bool) {
		looked = append(looked, name)
		return "", false
	}
	if code := run(context.Background(), nil, io.Discard, lookup); code != 2 {
		t.Fatalf("exit code %d without -upstream, want 2", code)
	}
	for _, v := range []string{"CORRAL_UPSTREAM", "CORRAL_UPSTREAM_TIMEOUT", "CORRAL_CACHE_BYTES", "CORRAL_DEMO"} {
		if !slices.Contains(looked, v) {
			t.Errorf("run never looks up %s; it looked up %v", v, looked)
		}
	}

	var stderr bytes.Buffer
	run(context.Background(), []string{"-h"}, &stderr, noEnv)
	var listed []string
	for _, m := range regexp.MustCompile(`\(env (CORRAL_\w+)\)\n`).FindAllStringSubmatch(stderr.String(), -1) {
		listed = append(listed, m[1])
	}
	if diff := cmp.Diff(looked, listed); diff != "" {
		t.Errorf("variables in -h (-looked up +listed):\n%s\n%s", diff, stderr.String())
	}
	for _, v := range looked {
		flag := "-" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(v, "CORRAL_")), "_", "-")
		if v == "CORRAL_RULES" {
			flag = "-rule" // a repeatable flag's variable is plural
		}
		if !regexp.MustCompile(`(?m)^  ` + flag + `( \w+)?\n.*\(env ` + v + `\)$`).MatchString(stderr.String()) {
			t.Errorf("-h does not list %s next to %s:\n%s", v, flag, stderr.String())
		}
	}
}

func TestBadFlagValueExitsTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"size", []string{"-cache-bytes", "lots"}, `corral: invalid value "lots" for flag -cache-bytes: want a positive size such as 512MiB` + "\n"},
		{"zero size", []string{"-max-object-bytes", "0"}, `corral: invalid value "0" for flag -max-object-bytes: want a positive size such as 512MiB` + "\n"},
		{"duration", []string{"-upstream-timeout", "soon"}, `corral: invalid value "soon" for flag -upstream-timeout: parse error` + "\n"},
		{"bool", []string{"-demo=maybe"}, `corral: invalid boolean value "maybe" for -demo: parse error` + "\n"},
		{"unknown flag", []string{"-upstreams", "http://origin"}, "corral: flag provided but not defined: -upstreams\n"},
		{"no value", []string{"-upstream"}, "corral: flag needs an argument: -upstream\n"},
		{"negative timeout", []string{"-upstream-timeout", "-1s"}, "corral: -upstream-timeout: must be positive, got -1s\n"},
		{"zero timeout", []string{"-upstream-timeout", "0"}, "corral: -upstream-timeout: must be positive, got 0s\n"},
		{"zero shutdown", []string{"-shutdown-timeout", "0s"}, "corral: -shutdown-timeout: must be positive, got 0s\n"},
		{"negative pass-ttl", []string{"-pass-ttl", "-1ms"}, "corral: -pass-ttl: must be zero or more, got -1ms\n"},
		{"negative ttl", []string{"-default-ttl", "-1m"}, "corral: -default-ttl: must be zero or more, got -1m0s\n"},
		{"negative swr", []string{"-default-stale-while-revalidate", "-1s"}, "corral: -default-stale-while-revalidate: must be zero or more, got -1s\n"},
		{"negative sie", []string{"-default-stale-if-error", "-1s"}, "corral: -default-stale-if-error: must be zero or more, got -1s\n"},
		{"no demo clients", []string{"-demo", "-demo-clients", "0"}, "corral: -demo-clients: must be positive, got 0\n"},
		{"no demo duration", []string{"-demo", "-demo-duration", "0s"}, "corral: -demo-duration: must be positive, got 0s\n"},
		{"request-no-cache", []string{"-request-no-cache", "sometimes"}, `corral: -request-no-cache: want revalidate or ignore, got "sometimes"` + "\n"},
		{"negative revalidate-interval", []string{"-revalidate-interval", "-1s"}, "corral: -revalidate-interval: must be zero or more, got -1s\n"},
		{"negative rps", []string{"-upstream-max-rps", "-5"}, "corral: -upstream-max-rps: must be zero or more, got -5\n"},
		{"negative inflight", []string{"-upstream-max-inflight", "-1"}, "corral: -upstream-max-inflight: must be zero or more, got -1\n"},
		{"negative max pause", []string{"-upstream-max-pause", "-1s"}, "corral: -upstream-max-pause: must be zero or more, got -1s\n"},
		{"zero body timeout", []string{"-request-body-timeout", "0s"}, "corral: -request-body-timeout: must be positive, got 0s\n"},
		{"negative write timeout", []string{"-client-write-timeout", "-1s"}, "corral: -client-write-timeout: must be zero or more, got -1s\n"},
		{"negative connections", []string{"-max-connections", "-1"}, "corral: -max-connections: must be zero or more, got -1\n"},
		{"rate", []string{"-client-min-rate", "-1KiB"}, `corral: invalid value "-1KiB" for flag -client-min-rate: want a positive size such as 512MiB` + "\n"},
		{"zero body size", []string{"-max-request-body-bytes", "0"}, `corral: invalid value "0" for flag -max-request-body-bytes: want a positive size such as 512MiB` + "\n"},
		{"huge header limit", []string{"-max-header-bytes", "2GiB"}, "corral: -max-header-bytes: must be at most 1GiB, got 2GiB\n"},
		{"buffers smaller than an object", []string{"-buffer-bytes", "4MiB"}, "corral: -buffer-bytes: 4MiB is too small: want at least twice -max-object-bytes (8MiB) and eight times -max-request-body-bytes (1MiB)\n"},
		{"buffers smaller than a request body", []string{"-buffer-bytes", "64MiB", "-max-request-body-bytes", "16MiB"}, "corral: -buffer-bytes: 64MiB is too small: want at least twice -max-object-bytes (8MiB) and eight times -max-request-body-bytes (16MiB)\n"},
		{"listen without port", []string{"-listen", "localhost"}, `corral: -listen: "localhost" is not host:port: address localhost: missing port in address` + "\n"},
		{"admin port out of range", []string{"-admin-listen", "127.0.0.1:70000"}, `corral: -admin-listen: "127.0.0.1:70000": bad port "70000"` + "\n"},
		{"trusted proxies", []string{"-trusted-proxies", "10.0.0.0/8, lb.internal"}, `corral: -trusted-proxies: "lb.internal" is not an IP address or CIDR prefix such as 10.0.0.0/8` + "\n"},
		{"log level", []string{"-log-level", "loud"}, `corral: -log-level: want debug, info, warn or error, got "loud"` + "\n"},
		{"log format", []string{"-log-format", "xml"}, `corral: -log-format: want text or json, got "xml"` + "\n"},
		{"open admin without token", []string{"-admin-listen", ":9091"}, `corral: -admin-listen: ":9091" is reachable from other hosts; set -admin-token, or listen on a loopback address such as 127.0.0.1:9091` + "\n"},
		{"rule without directives", []string{"-rule", "/api/"}, `corral: invalid value "/api/" for flag -rule: want PATH-PREFIX DIRECTIVES, e.g. /api/stats/ max-age=1, stale-while-revalidate=10` + "\n"},
		{"rule with a typo", []string{"-rule", "/api/ max-age=1, stale-while-revalidat=10"}, `corral: invalid value "/api/ max-age=1, stale-while-revalidat=10" for flag -rule: directives "max-age=1, stale-while-revalidat=10": unknown directive stale-while-revalidat` + "\n"},
		{"rule with a bad prefix", []string{"-rule", "api max-age=1"}, `corral: invalid value "api max-age=1" for flag -rule: prefix "api" must be a path starting with /` + "\n"},
		{"second rule for a prefix", []string{"-rule", "/api/ max-age=1", "-rule", "/api/ max-age=2"}, `corral: invalid value "/api/ max-age=2" for flag -rule: a rule for /api/ is given already: "/api/ max-age=1"` + "\n"},
		{"admin on all addresses without token", []string{"-admin-listen", "0.0.0.0:9091"}, `corral: -admin-listen: "0.0.0.0:9091" is reachable from other hosts; set -admin-token, or listen on a loopback address such as 127.0.0.1:9091` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			args := append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...)
			if code := run(context.Background(), args, &stderr, noEnv); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if diff := cmp.Diff(tt.want, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRevalidateInterval(t *testing.T) {
	// proxy.Config reads zero as its default and a negative interval as
	// none; the flag reads 0 as none.
	tests := []struct {
		args []string
		want time.Duration
	}{
		{nil, time.Second},
		{[]string{"-revalidate-interval", "250ms"}, 250 * time.Millisecond},
		{[]string{"-revalidate-interval", "0"}, -1},
	}
	for _, tt := range tests {
		c, code := parseFlags(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), io.Discard, noEnv)
		if c == nil {
			t.Fatalf("parseFlags(%q): exit code %d", tt.args, code)
		}
		if got := c.proxy.RevalidateInterval; got != tt.want {
			t.Errorf("parseFlags(%q): RevalidateInterval %s, want %s", tt.args, got, tt.want)
		}
	}
}

func TestEnvironment(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     string
	}{
		{
			name:     "sets a flag",
			env:      map[string]string{"CORRAL_UPSTREAM": "http://127.0.0.1:1", "CORRAL_LISTEN": "127.0.0.1:99999"},
			wantCode: 2,
			want:     `corral: CORRAL_LISTEN (-listen): "127.0.0.1:99999": bad port "99999"` + "\n",
		},
		{
			name:     "flag beats variable",
			args:     []string{"-upstream", "ftp://from-flag"},
			env:      map[string]string{"CORRAL_UPSTREAM": "ftp://from-env"},
			wantCode: 2,
			want:     `corral: -upstream: "ftp://from-flag" must be an absolute http:// or https:// URL` + "\n",
		},
		{
			name:     "flag set, its bad variable unread",
			args:     []string{"-cache-bytes", "1MiB", "-request-no-cache", "sometimes"},
			env:      map[string]string{"CORRAL_CACHE_BYTES": "lots", "CORRAL_UPSTREAM": "http://127.0.0.1:1"},
			wantCode: 2,
			want:     `corral: -request-no-cache: want revalidate or ignore, got "sometimes"` + "\n",
		},
		{
			name:     "bad size",
			env:      map[string]string{"CORRAL_CACHE_BYTES": "lots"},
			wantCode: 2,
			want:     `corral: CORRAL_CACHE_BYTES: invalid value "lots" for -cache-bytes: want a positive size such as 512MiB` + "\n",
		},
		{
			name:     "bad bool",
			env:      map[string]string{"CORRAL_DEMO": "maybe"},
			wantCode: 2,
			want:     `corral: CORRAL_DEMO: invalid value "maybe" for -demo: parse error` + "\n",
		},
		{
			name:     "bool as ParseBool reads it",
			env:      map[string]string{"CORRAL_DEMO": "F", "CORRAL_UPSTREAM": "ftp://origin"},
			wantCode: 2,
			want:     `corral: CORRAL_UPSTREAM (-upstream): "ftp://origin" must be an absolute http:// or https:// URL` + "\n",
		},
		{
			name:     "empty is a value",
			env:      map[string]string{"CORRAL_UPSTREAM_TIMEOUT": ""},
			wantCode: 2,
			want:     `corral: CORRAL_UPSTREAM_TIMEOUT: invalid value "" for -upstream-timeout: parse error` + "\n",
		},
		{
			name:     "out of range",
			env:      map[string]string{"CORRAL_UPSTREAM": "http://127.0.0.1:1", "CORRAL_UPSTREAM_TIMEOUT": "-1s"},
			wantCode: 2,
			want:     "corral: CORRAL_UPSTREAM_TIMEOUT (-upstream-timeout): must be positive, got -1s\n",
		},
		{
			name:     "not one of",
			env:      map[string]string{"CORRAL_UPSTREAM": "http://127.0.0.1:1", "CORRAL_REQUEST_NO_CACHE": "sometimes"},
			wantCode: 2,
			want:     `corral: CORRAL_REQUEST_NO_CACHE (-request-no-cache): want revalidate or ignore, got "sometimes"` + "\n",
		},
		{
			name:     "a bad rule names its line",
			env:      map[string]string{"CORRAL_UPSTREAM": "http://127.0.0.1:1", "CORRAL_RULES": "/api/ max-age=1\n/b maxage=1\n"},
			wantCode: 2,
			want:     `corral: CORRAL_RULES: invalid value "/b maxage=1" for -rule: directives "maxage=1": unknown directive maxage` + "\n",
		},
		{
			name:     "other names ignored",
			env:      map[string]string{"UPSTREAM": "http://127.0.0.1:1", "corral_upstream": "http://127.0.0.1:1", "CORRAL_CACHE": "lots"},
			wantCode: 2,
			want:     "corral: -upstream: missing; give the origin's URL, e.g. -upstream http://127.0.0.1:9000\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A case that fails to apply its variables may start serving;
			// the deadline ends it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			getenv := func(name string) (string, bool) {
				v, ok := tt.env[name]
				return v, ok
			}
			var stderr bytes.Buffer
			if code := run(ctx, tt.args, &stderr, getenv); code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.want, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUpstreamMaxPause checks how -upstream-max-pause and its variable
// reach proxy.Config, where zero means the default: the flag's 0 (never
// pause) must arrive as a negative value.
func TestUpstreamMaxPause(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want time.Duration
	}{
		{"default", nil, nil, 30 * time.Second},
		{"flag", []string{"-upstream-max-pause", "2m"}, nil, 2 * time.Minute},
		{"variable", nil, map[string]string{"CORRAL_UPSTREAM_MAX_PAUSE": "5s"}, 5 * time.Second},
		{"zero never pauses", []string{"-upstream-max-pause", "0"}, nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(name string) (string, bool) {
				v, ok := tt.env[name]
				return v, ok
			}
			var stderr bytes.Buffer
			c, code := parseFlags(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), &stderr, getenv)
			if c == nil {
				t.Fatalf("parseFlags failed with %d: %s", code, stderr.String())
			}
			if diff := cmp.Diff(tt.want, c.proxy.UpstreamMaxPause); diff != "" {
				t.Errorf("proxy.Config.UpstreamMaxPause (-want +got):\n%s", diff)
			}
		})
	}
}

// Issue 23, finding 4: the client listener takes -max-connections at once,
// 4096 unless told; -client-min-rate reaches proxy.Config, where a
// negative rate is none, as the flag's 0 is.
func TestClientLimits(t *testing.T) {
	type limits struct {
		MaxConnections int
		ClientMinRate  int64
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want limits
	}{
		{"default", nil, nil, limits{4096, 64 << 10}},
		{"flags", []string{"-max-connections", "100", "-client-min-rate", "1MiB"}, nil, limits{100, 1 << 20}},
		{"variables", nil, map[string]string{"CORRAL_MAX_CONNECTIONS": "0", "CORRAL_CLIENT_MIN_RATE": "16KiB"}, limits{0, 16 << 10}},
		{"zero rate is none", []string{"-client-min-rate", "0"}, nil, limits{4096, -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(name string) (string, bool) {
				v, ok := tt.env[name]
				return v, ok
			}
			var stderr bytes.Buffer
			c, code := parseFlags(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), &stderr, getenv)
			if c == nil {
				t.Fatalf("parseFlags failed with %d: %s", code, stderr.String())
			}
			if diff := cmp.Diff(tt.want, limits{c.maxConnections, c.proxy.ClientMinRate}); diff != "" {
				t.Errorf("limits (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRulesFromTheEnvironment(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  string
		want []rules.Rule
	}{
		{"one per line, blank lines skipped", nil, "/api/ max-age=5\n\n  /api/stats/ max-age=1, stale-while-revalidate=10  \n",
			[]rules.Rule{{Prefix: "/api/", Directives: "max-age=5"}, {Prefix: "/api/stats/", Directives: "max-age=1, stale-while-revalidate=10"}}},
		{"a -rule flag beats the variable", []string{"-rule", "/ max-age=60"}, "/api/ max-age=5",
			[]rules.Rule{{Prefix: "/", Directives: "max-age=60"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(name string) (string, bool) {
				switch name {
				case "CORRAL_RULES":
					return tt.env, true
				case "CORRAL_UPSTREAM":
					return "http://127.0.0.1:1", true
				}
				return "", false
			}
			var stderr bytes.Buffer
			c, code := parseFlags(tt.args, &stderr, getenv)
			if c == nil {
				t.Fatalf("exit code %d: %s", code, stderr.String())
			}
			if diff := cmp.Diff(tt.want, c.proxy.Rules); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
		})
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
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1"}, &stderr, noEnv)
	}()
	cancel() // what SIGTERM does through signal.NotifyContext
	if code := <-done; code != 0 {
		t.Errorf("exit code %d after shutdown, want 0; stderr: %s", code, stderr.String())
	}
}

// Issue 9, item 6: Go's default header limit of 1 MiB let 400 connections
// of endless header lines take 365 MiB. -max-header-bytes (64KiB) turns a
// 100 KiB header away with 431 (RFC 6585 section 5).
func TestHeaderFloodIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	listen := freeAddr(t)
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-listen", listen, "-admin-listen", "", "-upstream", "http://127.0.0.1:1"}, &stderr, noEnv)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit code %d, stderr: %s", code, stderr.String())
		}
	}()
	var conn net.Conn
	testwait.UntilNil(t, "corral to listen on "+listen, func() (err error) {
		conn, err = net.Dial("tcp", listen)
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		// The server answers before it has read all of this; a write
		// failing then is expected.
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nX-Flood: "+strings.Repeat("a", 100<<10)+"\r\n\r\n")
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("status %d for a 100 KiB header, want 431", resp.StatusCode)
	}
}

// Issue 9, item 6: the public listener disconnects a client that asks for
// a large answer and stops reading, once -client-write-timeout passes
// without it taking a byte. The handler's end shows in the request
// duration histogram.
func TestClientThatStopsReadingIsDisconnected(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		chunk := bytes.Repeat([]byte("corral "), 64<<10)
		for range 1 << 12 { // 1.75 GiB: more than any socket buffers hold
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer origin.Close()
	ctx, cancel := context.WithCancel(context.Background())
	listen, adminAddr := freeAddr(t), freeAddr(t)
	done := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-listen", listen, "-admin-listen", adminAddr, "-upstream", origin.URL, "-client-write-timeout", "100ms"}, &stderr, noEnv)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit code %d, stderr: %s", code, stderr.String())
		}
	}()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	waitFor(t, client, "http://"+adminAddr+"/readyz", http.StatusOK)

	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Poll the admin listener: the handler ends on its own, or never.
	testwait.Until(t, "the handler of a client that stopped reading to end", func() bool {
		resp, err := client.Get("http://" + adminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(b), "\ncorral_request_duration_seconds_count 1\n")
	})
}

// Issue 11, item 1: stale on origin failure is on by default.
func TestDefaultStaleIfError(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 5 * time.Minute},
		{[]string{"-default-stale-if-error", "0"}, 0},
		{[]string{"-default-stale-if-error", "30s"}, 30 * time.Second},
	} {
		var stderr bytes.Buffer
		c, code := parseFlags(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), &stderr, noEnv)
		if c == nil {
			t.Fatalf("%q: exit %d: %s", tt.args, code, stderr.String())
		}
		if got := c.proxy.Policy.DefaultSIE; got != tt.want {
			t.Errorf("%q: DefaultSIE %s, want %s", tt.args, got, tt.want)
		}
	}
}

// Issue 12, item 5: the -redis flags and their CORRAL_ variables reach
// fleet.Config; the defaults are package fleet's.
func TestRedisFlags(t *testing.T) {
	defaults := fleet.Config{
		Prefix:         "corral:",
		Timeout:        fleet.DefaultTimeout,
		MaxObjectBytes: fleet.DefaultMaxObjectBytes,
		LeaseTTL:       fleet.DefaultLeaseTTL,
	}
	with := func(f func(*fleet.Config)) fleet.Config {
		c := defaults
		f(&c)
		return c
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want fleet.Config
	}{
		{"defaults: no shared tier", nil, nil, defaults},
		{
			name: "flags",
			args: []string{"-redis", "redis://cache.internal:6379/0", "-redis-timeout", "20ms", "-redis-prefix", "stats:", "-redis-max-object-bytes", "256KiB", "-redis-lease-ttl", "5s"},
			want: fleet.Config{Addr: "redis://cache.internal:6379/0", Prefix: "stats:", Timeout: 20 * time.Millisecond, MaxObjectBytes: 256 << 10, LeaseTTL: 5 * time.Second},
		},
		{
			name: "variables",
			env: map[string]string{
				"CORRAL_REDIS":                  "rediss://:secret@cache.internal:6380/1",
				"CORRAL_REDIS_TIMEOUT":          "100ms",
				"CORRAL_REDIS_PREFIX":           "b:",
				"CORRAL_REDIS_MAX_OBJECT_BYTES": "2MiB",
				"CORRAL_REDIS_LEASE_TTL":        "3s",
			},
			want: fleet.Config{Addr: "rediss://:secret@cache.internal:6380/1", Prefix: "b:", Timeout: 100 * time.Millisecond, MaxObjectBytes: 2 << 20, LeaseTTL: 3 * time.Second},
		},
		{
			name: "a Redis Cluster",
			args: []string{"-redis", "redis+cluster://cache1.internal:6379?addr=cache2.internal:6379&addr=cache3.internal:6379"},
			want: with(func(c *fleet.Config) {
				c.Addr = "redis+cluster://cache1.internal:6379?addr=cache2.internal:6379&addr=cache3.internal:6379"
			}),
		},
		{
			name: "a Unix socket",
			env:  map[string]string{"CORRAL_REDIS": "unix:///run/redis/redis.sock"},
			want: with(func(c *fleet.Config) { c.Addr = "unix:///run/redis/redis.sock" }),
		},
		{
			name: "flag beats variable",
			args: []string{"-redis", "redis://from-flag:6379", "-redis-timeout", "10ms"},
			env:  map[string]string{"CORRAL_REDIS": "redis://from-env:6379", "CORRAL_REDIS_TIMEOUT": "1s"},
			want: with(func(c *fleet.Config) { c.Addr, c.Timeout = "redis://from-flag:6379", 10*time.Millisecond }),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(name string) (string, bool) {
				v, ok := tt.env[name]
				return v, ok
			}
			var stderr bytes.Buffer
			c, code := parseFlags(append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...), &stderr, getenv)
			if c == nil {
				t.Fatalf("parseFlags failed with %d: %s", code, stderr.String())
			}
			if diff := cmp.Diff(tt.want, c.fleet, cmpopts.IgnoreFields(fleet.Config{}, "Logger", "Now")); diff != "" {
				t.Errorf("fleet.Config (-want +got):\n%s", diff)
			}
			if strings.Contains(c.redisShown, "secret") {
				t.Errorf("the -redis URL for logs shows its password: %s", c.redisShown)
			}
		})
	}
}

func TestBadRedisFlagExitsTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"http URL", []string{"-redis", "http://cache.internal:6379"}, nil, `corral: -redis: "http://cache.internal:6379" must be a redis://, rediss:// or unix:// URL, e.g. redis://cache.internal:6379/0, or a redis+cluster:// URL` + "\n"},
		{"host:port", []string{"-redis", "cache.internal:6379"}, nil, `corral: -redis: "cache.internal:6379" must be a redis://, rediss:// or unix:// URL, e.g. redis://cache.internal:6379/0, or a redis+cluster:// URL` + "\n"},
		{"not a URL", []string{"-redis", "redis://cache internal:6379"}, nil, "corral: -redis: not a URL; want e.g. redis://cache.internal:6379/0\n"},
		{"bad database", []string{"-redis", "redis://cache.internal:6379/zero"}, nil, `corral: -redis: "redis://cache.internal:6379/zero": redis: invalid database number: "zero"` + "\n"},
		{"password not shown", []string{"-redis", "redis://:secret@cache.internal:6379/x"}, nil, `corral: -redis: "redis://:xxxxx@cache.internal:6379/x": redis: invalid database number: "x"` + "\n"},
		{"empty socket", []string{"-redis", "unix://"}, nil, `corral: -redis: "unix://": redis: empty unix socket path` + "\n"},
		{"bad cluster option", []string{"-redis", "redis+cluster://:secret@cache1.internal:6379?addr=cache2.internal:6379&max_retries=x"}, nil, `corral: -redis: "redis+cluster://:xxxxx@cache1.internal:6379?addr=cache2.internal:6379&max_retries=x": redis: invalid max_retries number: strconv.Atoi: parsing "x": invalid syntax` + "\n"},
		{"unknown cluster option", []string{"-redis", "rediss+cluster://cache1.internal:6379?db=1"}, nil, `corral: -redis: "rediss+cluster://cache1.internal:6379?db=1": redis: unexpected option: db` + "\n"},
		{"brace in prefix", []string{"-redis-prefix", "corral{"}, nil, "corral: -redis-prefix: must be free of braces, which would move the hash tag of every key, got corral{\n"},
		{"from the variable", nil, map[string]string{"CORRAL_REDIS": "memcached://cache.internal"}, `corral: CORRAL_REDIS (-redis): "memcached://cache.internal" must be a redis://, rediss:// or unix:// URL, e.g. redis://cache.internal:6379/0, or a redis+cluster:// URL` + "\n"},
		{"negative timeout", []string{"-redis-timeout", "-1ms"}, nil, "corral: -redis-timeout: must be positive, got -1ms\n"},
		{"zero timeout", []string{"-redis-timeout", "0"}, nil, "corral: -redis-timeout: must be positive, got 0s\n"},
		{"negative lease", nil, map[string]string{"CORRAL_REDIS_LEASE_TTL": "-2s"}, "corral: CORRAL_REDIS_LEASE_TTL (-redis-lease-ttl): must be positive, got -2s\n"},
		{"negative size", []string{"-redis-max-object-bytes", "-1MiB"}, nil, `corral: invalid value "-1MiB" for flag -redis-max-object-bytes: want a positive size such as 512MiB` + "\n"},
		{"no demo replicas", []string{"-demo", "-demo-replicas", "0"}, nil, "corral: -demo-replicas: must be positive, got 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(name string) (string, bool) {
				v, ok := tt.env[name]
				return v, ok
			}
			var stderr bytes.Buffer
			args := append([]string{"-upstream", "http://127.0.0.1:1"}, tt.args...)
			if code := run(context.Background(), args, &stderr, getenv); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if diff := cmp.Diff(tt.want, stderr.String()); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
		})
	}
}

// Issue 12, item 3: a Redis where nothing listens does not fail the start;
// the replica serves, and is ready, as it is without -redis.
func TestRedisDownDoesNotFailTheStart(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "ok")
	}))
	defer origin.Close()
	nowhere, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	redisURL := "redis://" + nowhere.Addr().String() + "/0"
	nowhere.Close()
	listen, admin := freeAddr(t), freeAddr(t)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var stderr bytes.Buffer // read once run has returned
	go func() {
		done <- run(ctx, []string{"-upstream", origin.URL, "-listen", listen, "-admin-listen", admin, "-redis", redisURL}, &stderr, noEnv)
	}()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	waitFor(t, client, "http://"+admin+"/readyz", http.StatusOK)
	for range 3 {
		resp, err := client.Get("http://" + listen + "/a")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Errorf("with Redis down: %d %q, want 200 \"ok\"", resp.StatusCode, body)
		}
	}
	// The replica did try the shared tier: -redis reached the proxy.
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte(`corral_redis_commands_total{op="lookup",result="error"} 1`)) {
		t.Errorf("/metrics shows no failed lookup in Redis: -redis did not reach the proxy\n%s", metrics)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code %d, want 0; stderr: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("corral did not stop")
	}
}
