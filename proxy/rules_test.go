package proxy

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/rules"
)

func TestConformanceTargeted(t *testing.T) {
	runConformance(t, []conformanceCase{{
		name:    "RFC 9213 3: CDN-Cache-Control alone decides, and is forwarded downstream",
		answers: []answerSpec{{header: []string{"CDN-Cache-Control", "max-age=60"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60; corral-field=CDN-Cache-Control", "CDN-Cache-Control", "max-age=60"), upstream: 1},
			{advance: 30 * time.Second, want: ok("x", "Cache-Status", "corral; hit; ttl=30; corral-field=CDN-Cache-Control", "CDN-Cache-Control", "max-age=60"), upstream: 1},
		},
	}, {
		name:    "RFC 9213 2.2: CDN-Cache-Control wins over a conflicting Cache-Control, which goes downstream as sent",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=5", "CDN-Cache-Control", "max-age=60"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{advance: 30 * time.Second, want: ok("x", "Cache-Status", "corral; hit; ttl=30; corral-field=CDN-Cache-Control", "Cache-Control", "max-age=5", "Age", "30"), upstream: 1},
		},
	}, {
		name:    "RFC 9213 3.1: CDN-Cache-Control: no-store keeps out what Cache-Control would share",
		answers: []answerSpec{{header: []string{"Cache-Control", "public, max-age=60", "CDN-Cache-Control", "no-store"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=no-store; corral-field=CDN-Cache-Control"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9213 3.1: and Cache-Control: no-store does not keep out what CDN-Cache-Control lets corral store",
		answers: []answerSpec{{header: []string{"Cache-Control", "no-store", "CDN-Cache-Control", "max-age=60"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x", "Cache-Status", "corral; hit; ttl=60; corral-field=CDN-Cache-Control", "Cache-Control", "no-store"), upstream: 1},
		},
	}, {
		name:    "RFC 9213 2.2: private in CDN-Cache-Control",
		answers: []answerSpec{{header: []string{"Cache-Control", "public, max-age=60", "CDN-Cache-Control", "private"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=private; corral-field=CDN-Cache-Control"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9213 2.2: s-maxage in CDN-Cache-Control",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1", "CDN-Cache-Control", "max-age=1, s-maxage=60"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{advance: 59 * time.Second, want: ok("x", "Cache-Status", "corral; hit; ttl=1; corral-field=CDN-Cache-Control"), upstream: 1},
			{advance: time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name: "RFC 9213 2.2 and RFC 5861: stale directives in CDN-Cache-Control serve stale while corral revalidates",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "no-cache", "CDN-Cache-Control", "max-age=1, stale-while-revalidate=10"}, body: "v1"},
			{header: []string{"Cache-Control", "no-cache", "CDN-Cache-Control", "max-age=1, stale-while-revalidate=10"}, body: "v2"},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{advance: 3 * time.Second, want: ok("v1", "Cache-Status", "corral; hit; ttl=-2; detail=stale-while-revalidate; corral-field=CDN-Cache-Control"), upstream: 2},
			{want: ok("v2", "Cache-Status", "corral; hit; ttl=1; corral-field=CDN-Cache-Control"), upstream: 2},
		},
	}, {
		name:    "RFC 9213 2.1: an invalid CDN-Cache-Control is ignored as a whole",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=5", "CDN-Cache-Control", "max-age=600, Private"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=5", "CDN-Cache-Control", "max-age=600, Private"), upstream: 1},
			{advance: 5 * time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9213 2.2: Corral-Cache-Control wins over CDN-Cache-Control, and never leaves corral",
		answers: []answerSpec{{header: []string{"Cache-Control", "no-store", "CDN-Cache-Control", "max-age=600", "Corral-Cache-Control", "max-age=2"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=2; corral-field=Corral-Cache-Control",
				"Corral-Cache-Control", "", "CDN-Cache-Control", "max-age=600", "Cache-Control", "no-store"), upstream: 1},
			{want: ok("x", "Corral-Cache-Control", "", "CDN-Cache-Control", "max-age=600"), upstream: 1},
			{advance: 2 * time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name: "RFC 9111 4.3.4: a 304 without Corral-Cache-Control keeps the stored one in force",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "no-cache", "Corral-Cache-Control", "max-age=1", "ETag", `"a"`}, body: "x"},
			{status: 304, header: []string{"Cache-Control", "no-cache", "ETag", `"a"`}},
		},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{advance: 5 * time.Second, want: ok("x", "Cache-Status", "corral; fwd=stale; fwd-status=304; stored; ttl=1; corral-field=Corral-Cache-Control", "Corral-Cache-Control", ""),
				upstream: 2, sent: hdr("If-None-Match", `"a"`)},
			{want: ok("x", "Cache-Status", "corral; hit; ttl=1; corral-field=Corral-Cache-Control", "Corral-Cache-Control", ""), upstream: 2},
		},
	}, {
		name:    "Corral-Cache-Control never leaves corral on a passed-through answer either",
		answers: []answerSpec{{header: []string{"Corral-Cache-Control", "max-age=60", "CDN-Cache-Control", "max-age=60"}, body: "x"}},
		steps: []step{
			{method: "POST", want: wantSpec{Status: 200, Body: "x", Header: hdr("Corral-Cache-Control", "", "CDN-Cache-Control", "max-age=60")}, upstream: 1},
			{header: []string{"Range", "bytes=0-0"}, want: ok("x", "Corral-Cache-Control", "",
				"Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=range"), upstream: 2},
		},
	}})
}

func TestConformanceRules(t *testing.T) {
	rule := func(s ...string) Config {
		var cfg Config
		for _, r := range s {
			parsed, err := rules.Parse(r)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Rules = append(cfg.Rules, parsed)
		}
		return cfg
	}
	runConformance(t, []conformanceCase{{
		name:    "the longest matching prefix wins",
		cfg:     rule("/ max-age=60", "/api/ max-age=5", "/api/stats/ max-age=1"),
		answers: []answerSpec{{body: "x"}},
		steps: []step{
			{path: "/api/users", want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=5; corral-rule="/api/"`), upstream: 1},
			{path: "/api/stats/today", want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=1; corral-rule="/api/stats/"`), upstream: 2},
			{path: "/index.html", want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=60; corral-rule="/"`), upstream: 3},
			{path: "/api/users?page=2", want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=5; corral-rule="/api/"`), upstream: 4},
			{path: "/api/users", want: ok("x", "Cache-Status", `corral; hit; ttl=5; corral-rule="/api/"`), upstream: 4},
		},
	}, {
		name:    "a rule on an origin that sends nothing",
		cfg:     rule("/ max-age=5"),
		answers: []answerSpec{{body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Control", ""), upstream: 1},
			{advance: 4 * time.Second, want: ok("x", "Cache-Status", `corral; hit; ttl=1; corral-rule="/"`, "Age", "4"), upstream: 1},
			{advance: time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name:    "a rule on a no-cache origin: corral stores it, clients still see no-cache",
		cfg:     rule("/api/ max-age=1, stale-while-revalidate=10"),
		answers: []answerSpec{{header: []string{"Cache-Control", "no-cache"}, body: "x"}},
		steps: []step{
			{path: "/api/stats", want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=1; corral-rule="/api/"`), upstream: 1},
			{path: "/api/stats", want: ok("x", "Cache-Status", `corral; hit; ttl=1; corral-rule="/api/"`, "Cache-Control", "no-cache"), upstream: 1},
			{path: "/other", want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200"), upstream: 2},
		},
	}, {
		name:    "a rule shortens a max-age too long for the dashboards",
		cfg:     rule("/ max-age=10"),
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=3600"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{advance: 9 * time.Second, want: ok("x", "Cache-Status", `corral; hit; ttl=1; corral-rule="/"`), upstream: 1},
			{advance: time.Second, want: ok("x", "Cache-Status", `corral; fwd=stale; fwd-status=200; stored; ttl=10; corral-rule="/"`), upstream: 2},
		},
	}, {
		name:    "the origin's Corral-Cache-Control wins over the rule",
		cfg:     rule("/ max-age=60"),
		answers: []answerSpec{{header: []string{"Corral-Cache-Control", "max-age=2"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=2; corral-field=Corral-Cache-Control", "Corral-Cache-Control", ""), upstream: 1},
			{advance: 2 * time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name:    "a rule beats CDN-Cache-Control",
		cfg:     rule("/ max-age=5"),
		answers: []answerSpec{{header: []string{"CDN-Cache-Control", "max-age=600"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=5; corral-rule="/"`, "CDN-Cache-Control", "max-age=600"), upstream: 1},
		},
	}, {
		name:    "a rule never shares a response with Set-Cookie",
		cfg:     rule(`/ public, max-age=60, private="Set-Cookie"`),
		answers: []answerSpec{{header: []string{"Set-Cookie", "s=1"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Set-Cookie", "s=1", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; detail=set-cookie; corral-rule="/"`), upstream: 1},
			{want: ok("x", "Set-Cookie", "s=1"), upstream: 2},
		},
	}, {
		name:    "a rule never shares an answer to credentials",
		cfg:     rule("/ public, max-age=60"),
		answers: []answerSpec{{body: "x"}},
		steps: []step{
			{header: []string{"Authorization", "Bearer a"}, want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; detail=authorization; corral-rule="/"`), upstream: 1},
			{want: ok("x", "Cache-Status", `corral; fwd=uri-miss; fwd-status=200; stored; ttl=60; corral-rule="/"`), upstream: 2},
		},
	}})
}

// TestRuleShieldsNoCacheOrigin: an origin that says no-cache, a rule, and a
// herd of pollers every quarter second for five seconds: one upstream
// request per max-age window, and every poll answered.
func TestRuleShieldsNoCacheOrigin(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("no-cache", "stats"))
	r, err := rules.Parse("/api/ max-age=1, stale-while-revalidate=10")
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, o, clk, Config{Rules: []rules.Rule{r}})

	const pollers = 50
	var perWindow, wantPerWindow []int64
	statuses := map[int]int{}
	for window := range 5 {
		for range 4 {
			start := make(chan struct{})
			got := make(chan int, pollers)
			var wg sync.WaitGroup
			for range pollers {
				wg.Go(func() {
					<-start
					res, _ := get(p, "/api/stats")
					got <- res.Status
				})
			}
			close(start)
			wg.Wait()
			p.Wait() // the background refresh, if one started
			close(got)
			for s := range got {
				statuses[s]++
			}
			clk.Advance(250 * time.Millisecond)
		}
		perWindow = append(perWindow, o.count())
		wantPerWindow = append(wantPerWindow, int64(window+1))
	}
	if diff := cmp.Diff(wantPerWindow, perWindow); diff != "" {
		t.Errorf("upstream requests after each second (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[int]int{200: 5 * 4 * pollers}, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	if n := p.Stats().RuleDecisions["/api/"].Load(); n != o.count() {
		t.Errorf("rule decisions = %d, want %d: one per upstream response", n, o.count())
	}
}

func TestRuleDecisionsMetric(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/own" {
			w.Header().Set("Corral-Cache-Control", "max-age=60")
		}
		io.WriteString(w, "x")
	})
	var rs []rules.Rule
	for _, s := range []string{"/ max-age=60", "/api/ max-age=1", "/unused/ max-age=1"} {
		r, err := rules.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	p := newTestProxy(t, o, clk, Config{Rules: rs})
	get(p, "/api/a")
	get(p, "/api/a") // a hit: no new decision
	get(p, "/api/b")
	get(p, "/x")
	get(p, "/own") // the origin's Corral-Cache-Control decides

	got := pick(scrape(t, newAdmin(p, "")), "corral_rule_decisions_total")
	want := map[string]float64{
		`corral_rule_decisions_total{rule="/"}`:        1,
		`corral_rule_decisions_total{rule="/api/"}`:    2,
		`corral_rule_decisions_total{rule="/unused/"}`: 0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestNewRejectsBadRules(t *testing.T) {
	u, _ := url.Parse("http://127.0.0.1:1")
	tests := []struct {
		rules []rules.Rule
		want  string
	}{
		{[]rules.Rule{{Prefix: "/a", Directives: "maxage=1"}}, `rule "/a maxage=1": directives "maxage=1": unknown directive maxage`},
		{[]rules.Rule{{Prefix: "/a/../b", Directives: "max-age=1"}}, `rule "/a/../b max-age=1": dot segments in request-target`},
		{[]rules.Rule{{Prefix: "/~a", Directives: "max-age=1"}, {Prefix: "/%7Ea", Directives: "max-age=2"}}, `rule "/%7Ea max-age=2": a rule for prefix /~a is given already`},
	}
	for _, tt := range tests {
		_, err := New(Config{Upstream: u, Rules: tt.rules})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New with rules %v: error %v, want %q", tt.rules, err, tt.want)
		}
	}
}

// hitWriter is a ResponseWriter that keeps nothing, so that a test counts
// the proxy's allocations alone.
type hitWriter struct {
	h      http.Header
	status int
}

func (w *hitWriter) Header() http.Header         { return w.h }
func (w *hitWriter) WriteHeader(status int)      { w.status = status }
func (w *hitWriter) Write(b []byte) (int, error) { return len(b), nil }

// TestRuleHitAllocatesAsAnyHit: the rule is decided when the response is
// stored, so a hit on what a rule decided costs what any hit costs.
func TestRuleHitAllocatesAsAnyHit(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain" {
			w.Header().Set("Cache-Control", "max-age=3600")
		}
		io.WriteString(w, "x")
	})
	r, err := rules.Parse("/ruled/ max-age=3600")
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, o, clk, Config{Rules: []rules.Rule{r}})
	allocs := map[string]float64{}
	for _, path := range []string{"/plain", "/ruled/x"} {
		req := newRequest(http.MethodGet, path)
		w := &hitWriter{h: http.Header{}}
		p.ServeHTTP(w, req) // the miss
		allocs[path] = testing.AllocsPerRun(100, func() {
			clear(w.h)
			p.ServeHTTP(w, req)
			if w.status != http.StatusOK || w.h.Get("Cache-Status") == "" {
				t.Fatalf("%s: status %d, Cache-Status %q", path, w.status, w.h.Get("Cache-Status"))
			}
		})
	}
	t.Logf("allocations per hit: %v", allocs)
	if allocs["/ruled/x"] > allocs["/plain"] {
		t.Errorf("allocations per hit: %v; a rule's hit must cost no more", allocs)
	}
	if n := p.Stats().RuleDecisions["/ruled/"].Load(); n != 1 {
		t.Errorf("rule decisions after one miss and many hits = %d, want 1", n)
	}
}
