package proxy

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/rules"
)

// Issue 23, finding 7: with the README's pair of rules, '/ max-age=60' and
// '/admin/ no-store', an origin that answered its admin console "private,
// no-store" had it shared under /admin, /Admin, /admin?tab=users,
// /admin./me, /admin%20/me and /admin.;/me (corral-rule="/"): bob got
// alice's console.

// mustParseRules parses each line as -rule does.
func mustParseRules(t *testing.T, lines ...string) []rules.Rule {
	t.Helper()
	var rs []rules.Rule
	for _, line := range lines {
		r, err := rules.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

// consoleOrigin answers with the header fields hdr names and a page for
// whoever the Cookie names.
func consoleOrigin(t *testing.T, clk *clock, hdr ...string) *origin {
	return newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Set(hdr[i], hdr[i+1])
		}
		io.WriteString(w, "console of "+strings.TrimPrefix(r.Header.Get("Cookie"), "user="))
	})
}

// bobAfterAlice has alice, then bob, ask for each path, and returns what bob
// got for each.
func bobAfterAlice(p http.Handler, paths []string) map[string]string {
	got := map[string]string{}
	for _, path := range paths {
		get(p, path, "Cookie", "user=alice")
		res, _ := get(p, path, "Cookie", "user=bob")
		got[path] = res.Body
		if res.Body != "console of bob" {
			got[path] += " (" + res.CacheStatus + ")"
		}
	}
	return got
}

func allBob(paths []string) map[string]string {
	want := map[string]string{}
	for _, path := range paths {
		want[path] = "console of bob"
	}
	return want
}

// adminSpellings are paths an origin reads as /admin or under it: a
// prefix ending in "/" covers the path without it, and IIS, Windows and
// frameworks that drop ";params" or trailing dots and spaces read the rest
// alike.
var adminSpellings = []string{
	"/admin/me",
	"/admin",
	"/Admin",
	"/admin?tab=users",
	"/admin./me",
	"/admin%20/me",
	"/admin.;/me",
	"/ADMIN.",
	"/admin%2E%20.%20/me",
	"/admin%20",
}

func TestOtherSpellingOfExcludedPathSharesNoPrivatePage(t *testing.T) {
	readme := []string{"/ max-age=60", "/admin/ no-store"}
	for _, tt := range []struct {
		name   string
		header []string // what the origin sends
		rules  []string
		paths  []string
	}{
		// The finding: the exclusion and the origin's private both
		// fell to the broad rule.
		{"README's pair, origin says private, no-store", []string{"Cache-Control", "private, no-store"}, readme, adminSpellings},
		// The exclusion alone must hold: an origin that says nothing
		// relies on it entirely.
		{"README's pair, origin says nothing", nil, readme, adminSpellings},
		// private alone must hold: a broad rule written for the
		// dashboards does not make the origin's private answers
		// everyone's, in whichever field would decide without it.
		{"a broad rule, origin says private", []string{"Cache-Control", "private"},
			[]string{"/ max-age=60, stale-while-revalidate=30"}, []string{"/account", "/admin/me"}},
		{"a broad rule, origin says private in CDN-Cache-Control", []string{"Cache-Control", "max-age=60", "CDN-Cache-Control", "private"},
			[]string{"/ max-age=60"}, []string{"/account"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := consoleOrigin(t, clk, tt.header...)
			p := newTestProxy(t, o, clk, Config{Rules: mustParseRules(t, tt.rules...)})
			if diff := cmp.Diff(allBob(tt.paths), bobAfterAlice(p, tt.paths)); diff != "" {
				t.Errorf("what bob got after alice, by path (-want +got):\n%s", diff)
			}
		})
	}
}

// share-private is the operator saying, on one path, that the origin's
// private answers are the same for everyone: then the rule shares them,
// though never one with Set-Cookie.
func TestSharePrivateRuleSharesPrivateAnswers(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, no-store")
		if r.URL.Path == "/stats/cookie" {
			w.Header().Set("Set-Cookie", "s=1")
		}
		io.WriteString(w, "stats")
	})
	p := newTestProxy(t, o, clk, Config{Rules: mustParseRules(t, "/ max-age=60", "/stats/ max-age=5, share-private")})
	var got []response
	for _, path := range []string{"/stats/today", "/stats/today", "/stats", "/stats", "/account", "/account", "/stats/cookie", "/stats/cookie"} {
		res, _ := get(p, path)
		got = append(got, res)
	}
	want := []response{
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=uri-miss; fwd-status=200; stored; ttl=5; corral-rule="/stats/"`},
		{Status: 200, Body: "stats", CacheStatus: `corral; hit; ttl=5; corral-rule="/stats/"`, Age: "0"},
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=uri-miss; fwd-status=200; stored; ttl=5; corral-rule="/stats/"`},
		{Status: 200, Body: "stats", CacheStatus: `corral; hit; ttl=5; corral-rule="/stats/"`, Age: "0"},
		// Without share-private, a private answer is passed, as
		// without a rule.
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=uri-miss; fwd-status=200; detail=private; corral-rule="/"`},
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=miss; fwd-status=200; detail=uncacheable; corral-rule="/"`},
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=uri-miss; fwd-status=200; detail=set-cookie; corral-rule="/stats/"`},
		{Status: 200, Body: "stats", CacheStatus: `corral; fwd=miss; fwd-status=200; detail=uncacheable; corral-rule="/stats/"`},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// A field the origin names in a qualified private is stored without it
// under a rule too; the rest of the answer is shared.
func TestRuleStoresWithoutOriginsPrivateFields(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", `no-cache, private="X-User"`)
		w.Header().Set("X-User", strings.TrimPrefix(r.Header.Get("Cookie"), "user="))
		io.WriteString(w, "page")
	})
	p := newTestProxy(t, o, clk, Config{Rules: mustParseRules(t, "/ max-age=60")})
	get(p, "/page", "Cookie", "user=alice")
	res, h := get(p, "/page", "Cookie", "user=bob")
	if res.CacheStatus != `corral; hit; ttl=60; corral-rule="/"` || h.Get("X-User") != "" {
		t.Errorf("bob got X-User %q (%s), want a hit without alice's X-User", h.Get("X-User"), res.CacheStatus)
	}
}

// Two prefixes that name one path in the form rules compare are one rule
// given twice.
func TestRulePrefixesAreComparedAsPaths(t *testing.T) {
	u, _ := url.Parse("http://127.0.0.1:1")
	_, err := New(Config{Upstream: u, Rules: []rules.Rule{{Prefix: "/admin/", Directives: "no-store"}, {Prefix: "/Admin./", Directives: "max-age=60"}}})
	if want := `rule "/Admin./ max-age=60": a rule for prefix /admin/ is given already`; err == nil || err.Error() != want {
		t.Errorf("New with /admin/ and /Admin./: error %v, want %q", err, want)
	}
}
