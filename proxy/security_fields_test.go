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

	"corral/internal/testwait"
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

// Issue 23, finding 9: one client chose the language everyone got. The
// variant key held Accept-Language as a set of members, but the request
// went upstream in the client's order and lines: an origin that reads the
// first tag answered English to "en;q=0.7, fr" (French preferred), and a
// French browser, "fr, en;q=0.7", got that English answer from the cache.

// firstMemberOrigin answers max-age=60, varying on field, with the first
// member of the first line of field as the origin got it, as an origin
// that reads Header.Get and splits on commas would. Its first answer for
// a path under /marked/ marks the URL uncacheable. It sends the lines of
// field it got on sent.
func firstMemberOrigin(t *testing.T, clk *clock, field string, sent chan<- []string) *origin {
	t.Helper()
	var marked sync.Once
	return newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/marked/") {
			marked.Do(func() { w.Header().Set("Set-Cookie", "s=1") })
		}
		sent <- r.Header.Values(field)
		first, _, _ := strings.Cut(r.Header.Get(field), ",")
		first, _, _ = strings.Cut(first, ";")
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", field)
		io.WriteString(w, strings.TrimSpace(first))
	})
}

// One client's Accept-Language, in an order or lines of its choosing,
// goes upstream on a shared fetch, or on a passed-through GET whose answer
// is stored on the way; the next client, whose request the variant key
// says is the same, gets the stored answer. The origin must have got the
// one form the key says, so that the next client gets what the origin
// answers to it.
func TestOneClientCannotChooseTheLanguageEveryoneGets(t *testing.T) {
	for _, tt := range []struct {
		name   string
		field  string
		attack []string // the field lines of the first client
		victim []string // the field lines of the next, whose request the key says is the same
		sent   string   // what the origin must have got for both
		want   string   // what the origin answers to sent
	}{
		{"English listed first, French preferred", "Accept-Language", []string{"en;q=0.7, fr"}, []string{"fr, en;q=0.7"}, "fr,en;q=0.7", "fr"},
		{"the preferred language on a second line", "Accept-Language", []string{"en;q=0.5", "DE"}, []string{"de, en;q=0.5"}, "de,en;q=0.5", "de"},
		{"equal preference", "Accept-Language", []string{"it, de"}, []string{"de, it"}, "de,it", "de"},
		{"a coding listed first, another preferred", "Accept-Encoding", []string{"gzip;q=0.5, br"}, []string{"br, gzip;q=0.5"}, "br,gzip;q=0.5", "br"},
	} {
		for _, path := range []string{"/shared/page", "/marked/page"} {
			t.Run(tt.name+" "+path, func(t *testing.T) {
				clk := newClock()
				sent := make(chan []string, 2)
				o := firstMemberOrigin(t, clk, tt.field, sent)
				p := newTestProxy(t, o, clk, Config{})
				if path == "/marked/page" {
					get(p, path) // the URL passes from now on
					testwait.Receive(t, sent, "the request that marks the URL")
				}
				var first, next []string
				for _, v := range tt.attack {
					first = append(first, tt.field, v)
				}
				for _, v := range tt.victim {
					next = append(next, tt.field, v)
				}
				get(p, path, first...)
				if diff := cmp.Diff([]string{tt.sent}, testwait.Receive(t, sent, "the first client's request upstream")); diff != "" {
					t.Errorf("%s the origin got for %q (-want +got):\n%s", tt.field, tt.attack, diff)
				}
				res, _ := get(p, path, next...)
				want := response{Status: http.StatusOK, Body: tt.want, CacheStatus: "corral; hit; ttl=60", Age: "0"}
				if diff := cmp.Diff(want, res); diff != "" {
					t.Errorf("the next client, %s %q (-want +got):\n%s", tt.field, tt.victim, diff)
				}
			})
		}
	}
}

// An empty Accept-Encoding asks for no content coding; an absent one
// accepts any (RFC 9110 section 12.5.3). RFC 9111 section 4.1: a field
// absent from one request matches only a request where it is absent too.
func TestEmptyAcceptEncodingIsNotAnAbsentOne(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Encoding")
		if r.Header["Accept-Encoding"] == nil {
			w.Header().Set("Content-Encoding", "gzip")
			io.WriteString(w, "gzip")
			return
		}
		io.WriteString(w, "identity "+strings.Join(r.Header["Accept-Encoding"], ","))
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/page")
	res, _ := get(p, "/page", "Accept-Encoding", "")
	want := response{Status: http.StatusOK, Body: "identity ", CacheStatus: "corral; fwd=vary-miss; fwd-status=200; stored; ttl=60"}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("an empty Accept-Encoding after an absent one (-want +got):\n%s", diff)
	}
}

// identityAndOverrideFields are what the second attack pass still got
// through: fields that name the client's address or identity to an
// origin behind an auth proxy, and fields some origins take as the URL
// to serve: common 403-bypass fields.
var identityAndOverrideFields = []string{
	"X-Originating-Ip", "X-Remote-Ip", "X-Remote-Addr", "X-Proxyuser-Ip", "X-Custom-Ip-Authorization",
	"X-Override-Url", "X-Http-Destinationurl", "X-Proxy-Url", "Base-Url", "Proxy-Host",
	"Remote-User", "X-Remote-User", "X-Auth-Request-User", "X-Auth-Request-Email", "X-Webauth-User",
	"X-Ms-Client-Principal-Name", "X-Goog-Authenticated-User-Email",
}

// TestIdentityAndURLOverrideFieldsNeverReachTheOrigin is the second
// attack pass's sixth finding: address, identity and URL-override fields
// outside the forwarding families reached the origin, on shared fetches
// whose answers are stored, and on requests passed through.
func TestIdentityAndURLOverrideFieldsNeverReachTheOrigin(t *testing.T) {
	clk := newClock()
	o := newFieldsOrigin(t, clk, identityAndOverrideFields)
	p := newTestProxy(t, o.origin, clk, Config{})
	var attack []string
	for _, f := range identityAndOverrideFields {
		attack = append(attack, f, "evil")
	}
	get(p, "/shared/x", attack...)
	do(p, http.MethodPost, "/form", attack...)
	for _, key := range []string{"GET /shared/x", "POST /form"} {
		if got := o.got(key, identityAndOverrideFields); len(got) != 0 {
			t.Errorf("%s: the origin got the client's %q", key, got)
		}
	}
}
