package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/internal/fakeclock"
)

// clock is a settable clock for Config.Now.
type clock = fakeclock.Clock

func newClock() *clock { return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)) }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestPausedKeysStayBounded floods the guard with keys that each answer 503
// with Retry-After, as an origin's one broken endpoint does under queries a
// client makes up: the records stay bounded, a key past the bound goes
// unpaused rather than growing them, and ended pauses make room.
func TestPausedKeysStayBounded(t *testing.T) {
	clk := newClock()
	unavailable := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 503, Header: http.Header{"Retry-After": {"60"}}, Body: http.NoBody, Request: r}, nil
	})
	g := New(Config{Transport: unavailable, MaxWait: time.Minute, Now: clk.Now})
	send := func(i int) error {
		req, err := http.NewRequestWithContext(WithNeutral(context.Background()), http.MethodGet, "http://origin.example/broken?i="+strconv.Itoa(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := g.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	var busy *BusyError
	for i := range maxPausedKeys + 100 {
		if err := send(i); err != nil {
			t.Fatalf("key %d, asked for the first time, was not sent: %v", i, err)
		}
		if n := len(g.pauses.keys); n > maxPausedKeys {
			t.Fatalf("after %d keys, %d pause records; want at most %d", i+1, n, maxPausedKeys)
		}
	}
	if err := send(0); !errors.As(err, &busy) {
		t.Errorf("the first key, paused, was sent again: %v", err)
	}
	if err := send(maxPausedKeys + 50); err != nil {
		t.Errorf("a key past the bound was held back (%v); want it sent, unpaused", err)
	}
	if g.holdUntil.Load() != 0 {
		t.Errorf("one path's 503s paused the whole origin")
	}
	clk.Advance(30 * time.Second) // every pause ended
	if err := send(maxPausedKeys + 50); err != nil {
		t.Fatalf("after the pauses, a key was held back: %v", err)
	}
	if err := send(maxPausedKeys + 50); !errors.As(err, &busy) {
		t.Errorf("after the pauses ended, a new key's pause was not recorded: %v", err)
	}
}

// TestEndpoint pins the identity under which answers count as evidence of
// an overloaded origin.
func TestEndpoint(t *testing.T) {
	tests := map[string]string{
		"/":                    "",
		"":                     "",
		"/broken":              "broken",
		"/broken/":             "broken",
		"//broken":             "broken",
		"///BROKEN//a":         "broken",
		"/Broken;jsessionid=1": "broken",
		"/broken%2Fa":          "broken",
		"/broken%2fa":          "broken",
		"/broken%3Bx":          "broken",
		"/broken%5Ca":          "broken",
		"/broken%20a":          "broken%20a",
		"/broken%2":            "broken%2",
		"/api/stats?x=1":       "api",
		"/api/users":           "api",
		"/;x/broken":           "",
	}
	got := make(map[string]string, len(tests))
	for path := range tests {
		got[path] = endpoint(path)
	}
	if diff := cmp.Diff(tests, got); diff != "" {
		t.Errorf("endpoint (-want +got):\n%s", diff)
	}
}

// TestOnlyNeutralRequestsPause: a 503 or 429 with Retry-After pauses its
// key only when the request carried nothing of one client's
// (WithNeutral). Any other request may carry a spent key or a field the
// origin refuses, and its answer is that client's (issue 23).
func TestOnlyNeutralRequestsPause(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		for _, neutral := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d neutral=%v", status, neutral), func(t *testing.T) {
				clk := newClock()
				answer := roundTripFunc(func(r *http.Request) (*http.Response, error) {
					return &http.Response{StatusCode: status, Header: http.Header{"Retry-After": {"60"}}, Body: http.NoBody, Request: r}, nil
				})
				g := New(Config{Transport: answer, Now: clk.Now})
				ctx := context.Background()
				if neutral {
					ctx = WithNeutral(ctx)
				}
				for _, path := range []string{"/a", "/b", "/c"} {
					req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://origin.example"+path, nil)
					if err != nil {
						t.Fatal(err)
					}
					resp, err := g.RoundTrip(req)
					if err != nil {
						t.Fatalf("GET %s was not sent: %v", path, err)
					}
					resp.Body.Close()
				}
				s := g.Stats()
				want := Stats{OriginPaused: neutral, LastAnswer: s.LastAnswer}
				if neutral {
					want.PausedKeys = 3
				}
				if diff := cmp.Diff(want, s); diff != "" {
					t.Errorf("after three endpoints answered %d (-want +got):\n%s", status, diff)
				}
			})
		}
	}
}
