package pass

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestClientBehindATrustedProxy: behind one of the trusted proxies, a client
// is the last address of X-Forwarded-For that is not a trusted proxy's,
// so that clients behind one load balancer do not share one client's
// share of the budget; anywhere else, what a client writes in the field
// names nobody.
func TestClientBehindATrustedProxy(t *testing.T) {
	ps := New(Config{Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	tests := []struct {
		remote, xff, want string
	}{
		{"198.51.100.7:1", "", "198.51.100.7"},
		{"198.51.100.7:1", "203.0.113.9", "198.51.100.7"},                  // not a trusted peer: the field names nobody
		{"10.0.0.1:1", "203.0.113.9", "203.0.113.9"},                       // behind the load balancer
		{"10.0.0.1:1", "192.0.2.66, 203.0.113.9, 10.0.0.2", "203.0.113.9"}, // the client wrote the first entry
		{"10.0.0.1:1", "", "10.0.0.1"},
		{"10.0.0.1:1", "not an address", "10.0.0.1"},
		{"[::ffff:10.0.0.1]:1", "2001:db8::1", "2001:db8::1"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tt.remote
		if tt.xff != "" {
			r.Header.Set("X-Forwarded-For", tt.xff)
		}
		if got := ps.ClientAddr(r).String(); got != tt.want {
			t.Errorf("RemoteAddr %s, X-Forwarded-For %q: client %s, want %s", tt.remote, tt.xff, got, tt.want)
		}
	}
}
