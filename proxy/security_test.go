package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/internal/testwait"
	"corral/proxy/internal/httprule"
	"corral/proxy/rules"
)

// These tests attack corral the way issue 9 found it broken: each sends
// the raw request, or plays the origin, that did the damage.

// rawExchange writes raw to addr and reads one response.
func rawExchange(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	return dialExchange(t, addr, raw, false, nil)
}

// serveProxy serves p on a loopback listener and returns its address.
func serveProxy(t *testing.T, p http.Handler) string {
	t.Helper()
	s := httptest.NewUnstartedServer(p)
	s.Config.DisableGeneralOptionsHandler = true // as main's server does
	s.Start()
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// pathLog records the request-targets a server receives.
type pathLog struct {
	mu    sync.Mutex
	paths []string
}

func (l *pathLog) add(r *http.Request) {
	l.mu.Lock()
	l.paths = append(l.paths, r.RequestURI)
	l.mu.Unlock()
}

func (l *pathLog) addValue(v string) {
	l.mu.Lock()
	l.paths = append(l.paths, v)
	l.mu.Unlock()
}

func (l *pathLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.paths...)
}

// pathOrigin is an origin that answers with cacheControl and records the
// request-targets it receives.
func pathOrigin(t *testing.T, clk *clock, cacheControl string) (*origin, *pathLog) {
	seen := &pathLog{}
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		seen.add(r)
		w.Header().Set("Cache-Control", cacheControl)
		io.WriteString(w, "origin")
	})
	return o, seen
}

// Issue 9, item 1: a request-target must not choose the upstream's scheme,
// host, port or userinfo. The opaque form http:@host:port/ used to make the
// configured upstream the userinfo of a URL the client picked.
func TestRequestTargetCannotChooseTheHost(t *testing.T) {
	clk := newClock()
	o, seen := pathOrigin(t, clk, "max-age=60")
	var secretHits pathLog
	secret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secretHits.add(r)
		io.WriteString(w, "secret")
	}))
	defer secret.Close()
	sec := strings.TrimPrefix(secret.URL, "http://")
	addr := serveProxy(t, newTestProxy(t, o, clk, Config{}))

	for _, tt := range []struct {
		name, line string
		status     int
		upstream   string // what the origin must have received; "" for nothing
	}{
		{"opaque form with empty userinfo", "GET http:@" + sec + "/anything HTTP/1.1", 400, ""},
		{"opaque form, POST", "POST http:@" + sec + "/anything HTTP/1.1", 400, ""},
		{"userinfo in absolute-form", "GET http://user@" + sec + "/anything HTTP/1.1", 400, ""},
		{"another scheme", "GET ftp://" + sec + "/anything HTTP/1.1", 400, ""},
		{"asterisk-form", "GET * HTTP/1.1", 400, ""},
		{"asterisk-form OPTIONS", "OPTIONS * HTTP/1.1", 400, ""},
		{"authority-form", "CONNECT " + sec + " HTTP/1.1", 400, ""},
		{"dot segments", "GET /a/../../admin HTTP/1.1", 400, ""},
		{"escaped dot segments", "GET /a/%2e%2E/admin HTTP/1.1", 400, ""},
		{"malformed escape", "GET /a%zz HTTP/1.1", 400, ""},
		{"escaped slash after dots", "GET /..%2Fadmin HTTP/1.1", 400, ""},
		{"escaped dots and slash", "GET /x/%2E%2E%2F..%2Fadmin HTTP/1.1", 400, ""},
		{"escaped backslash after dots", "GET /x/..%5C..%5Cadmin HTTP/1.1", 400, ""},
		{"dots with a parameter", "GET /..;/admin/x HTTP/1.1", 400, ""},
		{"dots with an escaped parameter", "GET /..%3B/admin HTTP/1.1", 400, ""},
		{"escaped NUL", "GET /..%00/admin HTTP/1.1", 400, ""},
		{"absolute-form uses its path only", "GET http://" + sec + "/abs?q=1 HTTP/1.1", 200, "/abs?q=1"},
		{"double slash is a path, not an authority", "GET //" + sec + "/x HTTP/1.1", 200, "//" + sec + "/x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(seen.get())
			resp, _ := rawExchange(t, addr, tt.line+"\r\nHost: "+addr+"\r\nContent-Length: 0\r\n\r\n")
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			got := seen.get()[before:]
			var want []string
			if tt.upstream != "" {
				want = []string{tt.upstream}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("origin received (-want +got):\n%s", diff)
			}
		})
	}
	if got := secretHits.get(); len(got) != 0 {
		t.Errorf("the other service was reached: %q", got)
	}
}

// Issue 9, items 1 and 9: percent-encoding is normalised once, for the key
// and for what goes upstream, so that two spellings of one URL are one
// entry and one upstream request.
func TestPercentEncodingIsOneKey(t *testing.T) {
	clk := newClock()
	o, seen := pathOrigin(t, clk, "max-age=60")
	p := newTestProxy(t, o, clk, Config{})
	for _, path := range []string{"/keys/%64?x=%7e", "/keys/d?x=~", "/keys/%2f", "/keys/%2F", "/k%c3%a9", "/k%C3%A9", "/e?", "/e"} {
		if res, _ := get(p, path); res.Status != 200 {
			t.Fatalf("GET %s: %d", path, res.Status)
		}
	}
	want := []string{"/keys/d?x=~", "/keys/%2F", "/k%C3%A9", "/e"}
	if diff := cmp.Diff(want, seen.get()); diff != "" {
		t.Errorf("origin received (-want +got):\n%s", diff)
	}
}

// An upstream with a path is a prefix no request can leave.
func TestUpstreamPathIsAPrefix(t *testing.T) {
	clk := newClock()
	o, seen := pathOrigin(t, clk, "no-store")
	p := newTestProxy(t, o, clk, Config{Upstream: &url.URL{Path: "/base/"}})
	get(p, "/a%20b?q")
	do(p, http.MethodPost, "/c")
	if diff := cmp.Diff([]string{"/base/a%20b?q", "/base/c"}, seen.get()); diff != "" {
		t.Errorf("origin received (-want +got):\n%s", diff)
	}
}

// Issue 9, item 2: a field the client names in Connection is hop-by-hop
// and never reaches the origin, so the answer must not be stored under
// the variant of that field's value.
func TestVariantIsKeyedOnWhatWasSent(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		lang := r.Header.Get("Accept-Language")
		if lang == "" {
			lang = "en"
		}
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Language")
		io.WriteString(w, "lang:"+lang)
	})
	p := newTestProxy(t, o, clk, Config{})
	var got []string
	for _, hdr := range [][]string{
		{"Accept-Language", "fr", "Connection", "Accept-Language"}, // the attack: fr stripped on the way
		{"Accept-Language", "fr"},                                  // a French visitor
		{},                                                         // no preference: the default
		{"Accept-Language", "fr", "Connection", "keep-alive, Accept-Language"},
	} {
		res, _ := get(p, "/page", hdr...)
		got = append(got, res.Body)
	}
	want := []string{"lang:en", "lang:fr", "lang:en", "lang:en"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bodies (-want +got):\n%s", diff)
	}
	if n := o.count(); n != 2 {
		t.Errorf("origin requests = %d, want 2 (one per variant actually sent)", n)
	}
}

// Issue 9, item 3: no client-sent forwarding field reaches the origin on a
// request whose answer may be stored, through either path, and the
// client's Host is not sent as X-Forwarded-Host there.
func TestForwardingFieldsCannotPoisonTheCache(t *testing.T) {
	clk := newClock()
	var (
		mu   sync.Mutex
		sent []http.Header
	)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sent = append(sent, r.Header.Clone())
		n := len(sent)
		mu.Unlock()
		host := r.Header.Get("X-Forwarded-Host")
		if host == "" {
			host = r.Host
		}
		if r.URL.Path == "/marked" && n == 2 {
			w.Header().Set("Set-Cookie", "s=1") // the first answer marks the URL uncacheable
		}
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "<script src=https://"+host+"/app.js>")
	})
	p := newTestProxy(t, o, clk, Config{})
	addr := serveProxy(t, p)
	attack := "Host: evil.example\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: gopher\r\n" +
		"X_Forwarded_Host: evil.example\r\nX-Original_URL: /admin\r\n" +
		"X-Forwarded-For: 6.6.6.6\r\nForwarded: host=evil.example\r\nX-Original-URL: /admin\r\n" +
		"X-Real-IP: 6.6.6.6\r\nX-HTTP-Method-Override: DELETE\r\n"

	// The shared fetch, then the pass-through of a URL marked uncacheable
	// whose answer turns cacheable and is stored on the way.
	for _, path := range []string{"/shared", "/marked", "/marked"} {
		rawExchange(t, addr, "GET "+path+" HTTP/1.1\r\n"+attack+"\r\n")
	}
	for _, path := range []string{"/shared", "/marked"} {
		res, _ := get(p, path)
		if strings.Contains(res.Body, "evil") || !strings.Contains(res.CacheStatus, "hit") {
			t.Errorf("GET %s from the cache: %q (%s)", path, res.Body, res.CacheStatus)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, h := range sent {
		for _, f := range []string{"X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For", "Forwarded", "X-Original-Url", "X-Real-Ip", "X-Http-Method-Override"} {
			if v := h.Get(f); v != "" {
				t.Errorf("upstream request %d carried %s: %q", i, f, v)
			}
		}
		for k := range h {
			if strings.Contains(k, "_") {
				t.Errorf("upstream request %d carried %s, which CGI reads as a dashed name", i, k)
			}
		}
		if got := h.Values("Via"); !cmp.Equal(got, []string{httprule.Via}) {
			t.Errorf("upstream request %d: Via %q, want %q", i, got, httprule.Via)
		}
	}
	if len(sent) != 3 {
		t.Errorf("origin requests = %d, want 3", len(sent))
	}
}

// A request answered for its client alone carries corral's own forwarding
// fields; a trusted proxy's chain is kept and extended.
func TestForwardingFieldsForUnsafeRequests(t *testing.T) {
	clk := newClock()
	sent := make(chan http.Header, 2)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		sent <- r.Header.Clone()
	})
	for _, tt := range []struct {
		name    string
		trusted []netip.Prefix
		want    map[string]string
	}{
		{"untrusted client", nil, map[string]string{
			"X-Forwarded-For": "192.0.2.1", "X-Forwarded-Host": "", "X-Forwarded-Proto": "http", "Forwarded": "",
		}},
		{"trusted proxy", []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, map[string]string{
			"X-Forwarded-For": "203.0.113.9, 192.0.2.1", "X-Forwarded-Host": "public.example", "X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.9",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProxy(t, o, clk, Config{TrustedProxies: tt.trusted})
			req := httptest.NewRequest(http.MethodPost, "http://corral.example/form", nil)
			for k, v := range map[string]string{
				"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "public.example", "X-Forwarded-Proto": "https", "Forwarded": "for=203.0.113.9",
			} {
				req.Header.Set(k, v)
			}
			req.RemoteAddr = "192.0.2.1:4711"
			p.ServeHTTP(httptest.NewRecorder(), req)
			h := testwait.Receive(t, sent, "the upstream request")
			got := map[string]string{}
			for k := range tt.want {
				got[k] = strings.Join(h.Values(k), ", ")
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("forwarding fields (-want +got):\n%s", diff)
			}
		})
	}
}

// Issue 9, item 7: an origin that answers a plain GET with 101 and holds
// the connection is an upstream error at once, not a 30-second hang that
// hands the leader a 101 and blocks shutdown.
func TestSwitchingProtocolsToAPlainRequestIsAnError(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	defer close(release)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
		buf.Flush()
		<-release
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: time.Hour})
	done := make(chan []response, 1)
	go func() {
		a, _ := get(p, "/ws")
		b, _ := do(p, http.MethodPost, "/ws")
		done <- []response{a, b}
	}()
	got := testwait.Receive(t, done, "answers to requests the origin switched protocols on")
	for _, res := range got {
		if res.Status != http.StatusBadGateway {
			t.Errorf("status %d (%s), want 502", res.Status, res.CacheStatus)
		}
	}
	idle := make(chan struct{})
	go func() { p.Wait(); close(idle) }()
	testwait.Receive(t, idle, "the fetch to end")
}

// Issue 9, item 9: a purge names the keys requests are stored under, every
// url= it is given, and a malformed one is refused rather than ignored.
func TestPurgeNamesWhatRequestsStore(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	p := newTestProxy(t, o, clk, Config{})
	a := newAdmin(p, "")
	for _, path := range []string{"/a", "/b", "/keys/%64", "/q?x=%7e"} {
		get(p, path)
	}
	for _, tt := range []struct{ path, want string }{
		{"/purge?url=/a&url=/b", `{"purged":2}` + "\n"},
		{"/purge?url=/keys/d", `{"purged":1}` + "\n"},
		{"/purge?url=" + url.QueryEscape("/q?x=~"), `{"purged":1}` + "\n"},
		{"/purge?url=/bad%25zz", `"/bad%zz" is not a URL path (such as /api/stats) or an absolute URL` + "\n"},
	} {
		if _, body := callAdmin(a, http.MethodPost, tt.path, ""); body != tt.want {
			t.Errorf("POST %s: %q, want %q", tt.path, body, tt.want)
		}
	}
	before := o.count()
	for _, path := range []string{"/a", "/b", "/keys/d", "/q?x=~"} {
		get(p, path)
	}
	if n := o.count() - before; n != 4 {
		t.Errorf("%d of 4 purged URLs went upstream again; the rest were still served from the cache", n)
	}
}

// A GET with a body may mean something to the origin: it is never answered
// by a shared fetch, which sends no body, nor stored for others.
func TestGetWithABodyIsNeverShared(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "query:"+string(b))
	})
	p := newTestProxy(t, o, clk, Config{})
	var got []string
	for _, body := range []string{`{"user":"a"}`, `{"user":"b"}`, ""} {
		req := httptest.NewRequest(http.MethodGet, "/search", strings.NewReader(body))
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, req)
		got = append(got, rec.Body.String())
	}
	want := []string{`query:{"user":"a"}`, `query:{"user":"b"}`, "query:"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if n := o.count(); n != 3 {
		t.Errorf("origin requests = %d, want 3", n)
	}
}

// Attacks found in review of the fixes above.

// An Upgrade request is answered for its client alone and carries that
// client's fields upstream: its answer must never be stored, even when the
// origin ignores the upgrade. Any upgrade but WebSocket is dropped, so no
// tunnel (h2c) opens past corral.
func TestUpgradeRequestsAreNeverStored(t *testing.T) {
	clk := newClock()
	var upgrades pathLog
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if u := r.Header.Get("Upgrade"); u != "" {
			upgrades.addValue(u)
		}
		// The origin ignores the upgrade and answers with what marks
		// this request as one client's.
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "upgrade:"+r.Header.Get("Upgrade")+" for:"+r.Header.Get("X-Forwarded-For"))
	})
	p := newTestProxy(t, o, clk, Config{})
	for _, upgrade := range []string{"websocket", "h2c", "foo"} {
		path := "/page-" + upgrade
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.RemoteAddr = "198.51.100.7:4711"
		req.Header.Set("Upgrade", upgrade)
		req.Header.Set("Connection", "Upgrade")
		p.ServeHTTP(httptest.NewRecorder(), req)
		// h2c and foo were dropped: those requests went as ordinary ones,
		// and their answers are everyone's.
		if res, _ := get(p, path); res.Body != "upgrade: for:" {
			t.Errorf("after an Upgrade: %s, everyone got %q (%s), want an ordinary answer", upgrade, res.Body, res.CacheStatus)
		}
	}
	if diff := cmp.Diff([]string{"websocket"}, upgrades.get()); diff != "" {
		t.Errorf("upgrades the origin saw (-want +got):\n%s", diff)
	}
}

// A passed-through request keeps its client's preconditions; the answer
// to them (a 412 here) is that client's alone and must not be stored.
func TestPassedThroughConditionalIsNeverStored(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=60")
		if r.Header.Get("Cookie") == "" {
			w.Header().Set("Set-Cookie", "s=1")
		}
		if m := r.Header.Get("If-Match"); m != "" && m != `"v1"` {
			w.WriteHeader(http.StatusPreconditionFailed)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		io.WriteString(w, "lib")
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/lib.js") // Set-Cookie: the URL is passed through for a while
	if res, _ := get(p, "/lib.js", "Cookie", "s=1", "If-Match", `"bogus"`); res.Status != http.StatusPreconditionFailed {
		t.Fatalf("the attacker's own answer: %d, want 412", res.Status)
	}
	if res, _ := get(p, "/lib.js", "Cookie", "s=1"); res.Status != 200 || res.Body != "lib" {
		t.Errorf("the next client got %d %q (%s), want 200 \"lib\"", res.Status, res.Body, res.CacheStatus)
	}
}

// A refresh started by a stale hit that carried credentials gets an answer
// for those credentials: it must not mark the URL as unshareable.
func TestRefreshWithCredentialsKeepsTheShield(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=1, stale-while-revalidate=30", "v"))
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/swr")
	clk.Advance(2 * time.Second)
	get(p, "/swr", "Authorization", "Bearer x") // stale, and a refresh with the credentials
	p.Wait()
	// A herd meets an origin that answers once all of it has arrived:
	// passed through, every client would cost a request of its own.
	release := make(chan struct{})
	o.set(holding(make(chan struct{}, 64), release, answer("max-age=1, stale-while-revalidate=30", "v")))
	before := o.count()
	herd(t, p, 20, "/swr", nil, releaseWhenEntered(20, release))
	p.Wait()
	if n := o.count() - before; n > 1 {
		t.Errorf("20 anonymous requests after a refresh with credentials cost %d upstream requests, want at most 1", n)
	}
}

// One variant too large to store passes that variant, not the URL: the
// other variants stay stored.
func TestTooLargeVariantPassesOnlyItself(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Encoding")
		if r.Header.Get("Accept-Encoding") == "gzip" {
			io.WriteString(w, "small")
			return
		}
		w.Write(bytes.Repeat([]byte("x"), 2<<10))
	})
	p := newTestProxy(t, o, clk, Config{MaxObjectBytes: 1 << 10})
	get(p, "/enc", "Accept-Encoding", "gzip")
	if res, _ := get(p, "/enc", "Accept-Encoding", "identity"); res.Status != 200 || len(res.Body) != 2<<10 {
		t.Fatalf("the large variant: %d with %d bytes", res.Status, len(res.Body))
	}
	before := o.count()
	for range 10 {
		if res, _ := get(p, "/enc", "Accept-Encoding", "gzip"); res.Body != "small" {
			t.Fatalf("gzip variant: %q", res.Body)
		}
	}
	if n := o.count() - before; n != 0 {
		t.Errorf("10 requests for the stored variant cost %d upstream requests, want 0", n)
	}
}

// Attacks found in the second review.

// A POST answer that names its own URL may answer later GETs, but only a
// 200 or 203 with the origin's own freshness, to a POST that carried
// nothing that makes the answer one client's.
func TestPostCannotPlantAnAnswer(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Location", r.URL.Path)
		host := r.Header.Get("X-Forwarded-Host")
		if host == "" {
			host = r.Host
		}
		switch b, _ := io.ReadAll(r.Body); {
		case r.Method == http.MethodGet:
			io.WriteString(w, "good")
		case string(b) == "crash":
			w.WriteHeader(http.StatusInternalServerError)
		case string(b) == "bad":
			w.WriteHeader(http.StatusBadRequest)
		case r.Header.Get("If-Match") != "":
			w.WriteHeader(http.StatusPreconditionFailed)
		default:
			io.WriteString(w, "posted "+r.Header.Get("X-Http-Method-Override")+" <a href=//"+host+"/login>")
		}
	})
	p := newTestProxy(t, o, clk, Config{})
	post := func(path, body string, hdr ...string) {
		req := httptest.NewRequest(http.MethodPost, "http://evil.example"+path, strings.NewReader(body))
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		p.ServeHTTP(httptest.NewRecorder(), req)
	}
	for _, tt := range []struct {
		name, body string
		hdr        []string
	}{
		{"a 500", "crash", nil},
		{"a 400", "bad", nil},
		{"a 412 to a precondition", "x", []string{"If-Match", `"nope"`}},
		{"a method override", "x", []string{"X-HTTP-Method-Override", "DELETE"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := "/p-" + strings.ReplaceAll(tt.name, " ", "-")
			get(p, path) // a good answer stored
			post(path, tt.body, tt.hdr...)
			if res, _ := get(p, path); res.Status != 200 || res.Body != "good" {
				t.Errorf("after the POST, everyone got %d %q (%s), want the good answer", res.Status, res.Body, res.CacheStatus)
			}
		})
	}
	// A POST from a client that gave its own Host: the answer is stored,
	// but nothing of that Host went upstream to end up in it.
	post("/page", "x")
	if res, _ := get(p, "/page"); strings.Contains(res.Body, "evil") || !strings.Contains(res.CacheStatus, "hit") {
		t.Errorf("after a POST with Host evil.example, everyone got %q (%s)", res.Body, res.CacheStatus)
	}
}

// A rule decides how long what any client gets stays fresh: never that a
// POST body's answer, or an error one request's fields caused, is stored
// for everyone.
func TestRuleCannotStoreOneClientsAnswer(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method == http.MethodPost {
			w.Header().Set("Content-Location", r.URL.Path)
			io.WriteString(w, "posted "+string(b))
			return
		}
		if r.Header.Get("X-Bad") != "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		io.WriteString(w, "good")
	})
	r, err := rules.Parse("/ max-age=60")
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, o, clk, Config{Rules: []rules.Rule{r}})
	req := httptest.NewRequest(http.MethodPost, "/cl", strings.NewReader("evil=1"))
	p.ServeHTTP(httptest.NewRecorder(), req)
	get(p, "/cpdos", "X-Bad", "1")
	for _, path := range []string{"/cl", "/cpdos"} {
		if res, _ := get(p, path); res.Body != "good" {
			t.Errorf("GET %s: everyone got %d %q (%s), want the good answer", path, res.Status, res.Body, res.CacheStatus)
		}
	}
}

// A path-prefix rule that keeps part of the site out of the cache holds
// for every spelling of the path an origin may read alike.
func TestExclusionRuleHoldsForEverySpelling(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, no-store")
		io.WriteString(w, "page for "+r.Header.Get("Cookie"))
	})
	var rs []rules.Rule
	for _, line := range []string{"/ max-age=60", "/admin/ no-store"} {
		r, err := rules.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	p := newTestProxy(t, o, clk, Config{Rules: rs})
	for _, path := range []string{"/admin/me", "/admin%2Fme", "/ADMIN/me", "//admin/me", "/admin;x/me"} {
		get(p, path, "Cookie", "session=VICTIM")
		if res, _ := get(p, path); strings.Contains(res.Body, "VICTIM") {
			t.Errorf("GET %s without the cookie got %q (%s)", path, res.Body, res.CacheStatus)
		}
	}
}
