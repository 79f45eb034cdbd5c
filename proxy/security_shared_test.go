package proxy

import (
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// These tests play one user who wants to hurt the others (issue 23): with
// a spent quota, a field the origin refuses, and as many addresses as it
// likes. The invariant: nothing one user does makes corral give the others
// errors, older data or less coalescing than the origin itself would give
// them.

// spentKeyOrigin answers requests that carry X-Api-Key: spent with status
// and Retry-After: 30, as an origin does to one user whose quota is spent,
// and everything else with a cacheable 200 that names the path.
func spentKeyOrigin(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") == "spent" {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(status)
			return
		}
		answer("max-age=60", "ok "+r.URL.Path)(w, r)
	}
}

// TestSpentKeyFromTwoAddressesPausesNothing is issue 23's first finding:
// one API key whose quota is spent, sent from two addresses to three
// endpoints (six requests), paused every URL: other users' cold GETs got
// 503 for 30 s, renewable. A 429 speaks of whoever asked, and a request
// that carries a client's fields is that client's: its answer pauses
// nothing, whatever the status, and counts toward no origin-wide pause.
func TestSpentKeyFromTwoAddressesPausesNothing(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, spentKeyOrigin(status))
			p := newTestProxy(t, o, clk, Config{})
			for _, path := range []string{"/a/1", "/b/1", "/c/1"} {
				for _, client := range []string{"127.0.0.2:40000", "127.0.0.5:40000"} {
					if got, _ := doFrom(p, client, http.MethodGet, path, "X-Api-Key", "spent"); got.Status != status {
						t.Fatalf("the abuser's GET %s from %s got %d (%s), want the origin's %d", path, client, got.Status, got.CacheStatus, status)
					}
				}
			}
			type seen struct {
				Status      int
				CacheStatus string
			}
			for _, path := range []string{"/d/1", "/a/1"} {
				got, _ := doFrom(p, clientC, http.MethodGet, path)
				want := seen{200, "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"}
				if diff := cmp.Diff(want, seen{got.Status, got.CacheStatus}); diff != "" {
					t.Errorf("another user's GET %s after the abuser's answers (-want +got):\n%s", path, diff)
				}
			}
			if s := p.guard.Stats(); s.OriginPaused || s.PausedKeys != 0 {
				t.Errorf("the guard paused the origin (%v) or %d keys for one user's answers; want nothing", s.OriginPaused, s.PausedKeys)
			}
		})
	}
}
