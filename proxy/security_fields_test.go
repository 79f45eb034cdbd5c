package proxy

import (
	"io"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Issue 23, finding 8: forwarding fields outside a fixed list of names
// reached the origin on shared fetches, and the answer was stored for
// everyone. X-Forwarded-User and X-Forwarded-Client-Cert are identity
// fields some origins trust.

// unlistedForwarding are forwarding fields that passed the list of names
// corral dropped before issue 23: each is named the way a proxy or a
// framework in front of an origin names what it tells the origin about the
// client, its connection or the URL it asked for.
var unlistedForwarding = []string{
	"X-Forwarded-Uri", "X-Forwarded-Path", "X-Forwarded-Url", "X-Forwarded-Protocol",
	"X-Forwarded-Hostname", "X-Forwarded-Pathbase", "X-Forwarded-Client-Cert", "X-Forwarded-User",
	"X-Forwarded-Email", "X-Forwarded-Tls-Client-Cert",
	"X-Original-Uri", "X-Original-Proto", "X-Original-For", "X-Original-Method",
	"X-Envoy-Original-Path", "X-Envoy-Internal", "X-Envoy-External-Address",
	"X-Amzn-Oidc-Identity", "X-Amzn-Mtls-Clientcert",
	"Cf-Connecting-Ip", "Cf-Ipcountry", "Cf-Visitor", "Cf-Access-Authenticated-User-Email",
	"Fastly-Client-Ip", "X-Cluster-Client-Ip", "X-Forwarded", "Front-End-Https", "X-Url-Scheme",
}

// fieldsOrigin is an origin that answers every request cacheably, with a
// body that echoes the request fields it got whose names the test lists,
// and keeps the header of each request it got.
type fieldsOrigin struct {
	*origin
	mu   sync.Mutex
	sent map[string][]http.Header // by method and path
}

func newFieldsOrigin(t *testing.T, clk *clock, echo []string) *fieldsOrigin {
	t.Helper()
	o := &fieldsOrigin{sent: map[string][]http.Header{}}
	o.origin = newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.sent[r.Method+" "+r.URL.Path] = append(o.sent[r.Method+" "+r.URL.Path], r.Header.Clone())
		n := len(o.sent[r.Method+" "+r.URL.Path])
		o.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/marked/") && n == 1 {
			w.Header().Set("Set-Cookie", "s=1") // the first answer marks the URL uncacheable
		}
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "page")
		for _, f := range echo {
			if v := r.Header.Get(f); v != "" {
				io.WriteString(w, " "+f+"="+v)
			}
		}
	})
	return o
}

// got returns the names of the fields of echo that the requests for key
// ("METHOD /path") carried.
func (o *fieldsOrigin) got(key string, echo []string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var names []string
	for _, h := range o.sent[key] {
		for _, f := range echo {
			if h.Get(f) != "" {
				names = append(names, f)
			}
		}
	}
	sort.Strings(names)
	return names
}

// A client sends each forwarding field on a GET the origin answers
// cacheably, through a shared fetch and through a passed-through request,
// and on a POST: the origin sees none of them, and the next client gets
// the stored answer, which holds none of them either.
func TestUnlistedForwardingFieldsCannotPoisonTheCache(t *testing.T) {
	clk := newClock()
	o := newFieldsOrigin(t, clk, unlistedForwarding)
	p := newTestProxy(t, o.origin, clk, Config{})
	var attack []string
	for _, f := range unlistedForwarding {
		attack = append(attack, f, "evil")
	}
	// A shared fetch; a URL whose first answer marks it uncacheable, so
	// that the next GET passes through and its answer is stored on the
	// way; a POST, answered for its client alone.
	get(p, "/shared/x", attack...)
	get(p, "/marked/x")
	get(p, "/marked/x", attack...)
	do(p, http.MethodPost, "/form", attack...)

	for _, key := range []string{"GET /shared/x", "GET /marked/x", "POST /form"} {
		if got := o.got(key, unlistedForwarding); len(got) != 0 {
			t.Errorf("%s: the origin got the client's %q", key, got)
		}
	}
	for _, path := range []string{"/shared/x", "/marked/x"} {
		res, _ := get(p, path)
		want := response{Status: http.StatusOK, Body: "page", CacheStatus: "corral; hit; ttl=60", Age: "0"}
		if diff := cmp.Diff(want, res); diff != "" {
			t.Errorf("another client's GET %s (-want +got):\n%s", path, diff)
		}
	}
}

// From a trusted proxy, X-Forwarded-For, -Host, -Proto and Forwarded are
// kept on a request answered for one client; the rest of the family is
// not, for no proxy can be told apart from its clients by those fields.
func TestTrustedProxyKeepsOnlyItsForwardingChain(t *testing.T) {
	clk := newClock()
	chain := []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}
	o := newFieldsOrigin(t, clk, append(append([]string{}, chain...), unlistedForwarding...))
	p := newTestProxy(t, o.origin, clk, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	hdr := []string{"Forwarded", "for=203.0.113.9", "X-Forwarded-For", "203.0.113.9", "X-Forwarded-Host", "public.example", "X-Forwarded-Proto", "https"}
	for _, f := range unlistedForwarding {
		hdr = append(hdr, f, "evil")
	}
	doFrom(p, "192.0.2.1:4711", http.MethodPost, "/form", hdr...)
	if diff := cmp.Diff(chain, o.got("POST /form", append(append([]string{}, chain...), unlistedForwarding...))); diff != "" {
		t.Errorf("fields a trusted proxy's POST took upstream (-want +got):\n%s", diff)
	}
}
