package proxy

import (
	stdcmp "cmp"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"corral/freshness"
)

// A conformance case is a script: the origin's answers, in order (the
// last one repeats), and the client's steps, each with what the client
// must see and how many requests the origin must have had by then.

type answerSpec struct {
	status int // 0 means 200
	header []string
	body   string
}

type step struct {
	advance time.Duration
	method  string // GET when empty
	path    string // /r when empty
	header  []string

	want     wantSpec
	upstream int64 // origin requests after the step, refreshes included
	// sent are fields the origin must have received on its latest request
	// ("" means absent).
	sent map[string]string
}

type wantSpec struct {
	Status int
	Body   string
	// Header lists fields to compare; "" means the field must be absent.
	Header map[string]string
}

type conformanceCase struct {
	name    string
	cfg     Config
	answers []answerSpec
	steps   []step
}

func runConformance(t *testing.T, tests []conformanceCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			var (
				mu   sync.Mutex
				n    int
				last http.Header
			)
			o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				a := tt.answers[min(n, len(tt.answers)-1)]
				n++
				last = r.Header.Clone()
				mu.Unlock()
				for i := 0; i+1 < len(a.header); i += 2 {
					w.Header().Add(a.header[i], a.header[i+1])
				}
				w.WriteHeader(stdcmp.Or(a.status, 200))
				io.WriteString(w, a.body)
			})
			p := newTestProxy(t, o, clk, tt.cfg)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				req := httptest.NewRequest(stdcmp.Or(s.method, "GET"), stdcmp.Or(s.path, "/r"), nil)
				for j := 0; j+1 < len(s.header); j += 2 {
					req.Header.Add(s.header[j], s.header[j+1])
				}
				rec := httptest.NewRecorder()
				p.ServeHTTP(rec, req)
				p.Wait()
				got := wantSpec{Status: rec.Code, Body: rec.Body.String(), Header: map[string]string{}}
				for f := range s.want.Header {
					got.Header[f] = strings.Join(rec.Header().Values(f), ", ")
				}
				if diff := cmp.Diff(s.want, got, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("step %d (-want +got):\n%s", i, diff)
				}
				if c := o.count(); c != s.upstream {
					t.Errorf("step %d: origin has had %d requests, want %d", i, c, s.upstream)
				}
				mu.Lock()
				for f, v := range s.sent {
					if got := last.Get(f); got != v {
						t.Errorf("step %d: origin received %s %q, want %q", i, f, got, v)
					}
				}
				mu.Unlock()
			}
		})
	}
}

func hdr(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func ok(body string, kv ...string) wantSpec {
	return wantSpec{Status: 200, Body: body, Header: hdr(kv...)}
}

func TestConformanceValidation(t *testing.T) {
	runConformance(t, []conformanceCase{{
		name: "RFC 9111 4.3.1: a stale entry with an ETag is revalidated with If-None-Match, and a 304 refreshes it",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=1", "ETag", `"a"`}, body: "v1"},
			{status: 304, header: []string{"Cache-Control", "max-age=60", "ETag", `"a"`}},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{advance: 5 * time.Second, want: ok("v1", "Cache-Status", "corral; fwd=stale; fwd-status=304; stored; ttl=60", "Content-Length", "2"),
				upstream: 2, sent: hdr("If-None-Match", `"a"`)},
			{advance: 30 * time.Second, want: ok("v1", "Cache-Status", "corral; hit; ttl=30", "Age", "30"), upstream: 2},
		},
	}, {
		name: "RFC 9111 4.3.1: Last-Modified is sent back as If-Modified-Since",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=1", "Last-Modified", "Mon, 23 Nov 2026 12:00:00 GMT"}, body: "v1"},
			{status: 304, header: []string{"Cache-Control", "max-age=60"}},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{advance: 5 * time.Second, want: ok("v1"), upstream: 2, sent: hdr("If-Modified-Since", "Mon, 23 Nov 2026 12:00:00 GMT")},
		},
	}, {
		name: "RFC 9111 4.3.4: a 304 updates stored fields but not the body or its length",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=1", "ETag", `"a"`, "X-Version", "1"}, body: "hello"},
			{status: 304, header: []string{"Cache-Control", "max-age=60", "ETag", `"a"`, "X-Version", "2", "Content-Length", "999"}},
		},
		steps: []step{
			{want: ok("hello", "X-Version", "1"), upstream: 1},
			{advance: 5 * time.Second, want: ok("hello", "X-Version", "2", "Content-Length", "5", "Cache-Control", "max-age=60"), upstream: 2},
			{want: ok("hello", "X-Version", "2", "Content-Length", "5"), upstream: 2},
		},
	}, {
		name: "RFC 9111 4.3.2: a client's If-None-Match is answered 304 from a fresh entry",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=60", "ETag", `"a"`}, body: "v1"},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{header: []string{"If-None-Match", `"a"`}, want: wantSpec{Status: 304, Header: hdr("ETag", `"a"`, "Cache-Status", "corral; hit; ttl=60")}, upstream: 1},
			{header: []string{"If-None-Match", `W/"a"`}, want: wantSpec{Status: 304}, upstream: 1},
			{header: []string{"If-None-Match", `"b"`}, want: ok("v1"), upstream: 1},
		},
	}, {
		name: "RFC 9111 4.3.2: a client's If-Modified-Since is answered from Last-Modified",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=60", "Last-Modified", "Mon, 23 Nov 2026 12:00:00 GMT"}, body: "v1"},
		},
		steps: []step{
			{header: []string{"If-Modified-Since", "Tue, 24 Nov 2026 12:00:00 GMT"}, want: wantSpec{Status: 304}, upstream: 1,
				sent: hdr("If-Modified-Since", "")},
			{header: []string{"If-Modified-Since", "Sun, 22 Nov 2026 12:00:00 GMT"}, want: ok("v1"), upstream: 1},
		},
	}, {
		// The origin's Date is the clock's: 25 Nov 2026 12:00:00 GMT.
		name: "RFC 9111 4.3.2: without Last-Modified, If-Modified-Since is answered from Date",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=60", "ETag", `"a"`}, body: "v1"},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{header: []string{"If-Modified-Since", "Wed, 25 Nov 2026 12:00:00 GMT"}, want: wantSpec{Status: 304, Header: hdr("Last-Modified", "", "ETag", `"a"`)}, upstream: 1},
			{header: []string{"If-Modified-Since", "Thu Nov 26 12:00:00 2026"}, want: wantSpec{Status: 304}, upstream: 1},
			{header: []string{"If-Modified-Since", "Tue, 24 Nov 2026 12:00:00 GMT"}, want: ok("v1"), upstream: 1},
			{header: []string{"If-Modified-Since", "Thu, 26 Nov 2026 12:00:00 GMT", "If-None-Match", `"b"`}, want: ok("v1"), upstream: 1},
			{method: "HEAD", header: []string{"If-Modified-Since", "Thu, 26 Nov 2026 12:00:00 GMT"}, want: wantSpec{Status: 304}, upstream: 1},
		},
	}})
}

func TestConformanceVary(t *testing.T) {
	vary := []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Vary", "Accept-Encoding"}, body: "x"}}
	runConformance(t, []conformanceCase{{
		name:    "RFC 9111 4.1: each variant is stored on its own",
		answers: vary,
		steps: []step{
			{header: []string{"Accept-Encoding", "gzip"}, want: ok("x"), upstream: 1},
			{header: []string{"Accept-Encoding", "br"}, want: ok("x", "Cache-Status", "corral; fwd=vary-miss; fwd-status=200; stored; ttl=60"), upstream: 2},
			{header: []string{"Accept-Encoding", "gzip"}, want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 2},
			{want: ok("x"), upstream: 3}, // no Accept-Encoding is a variant too
		},
	}, {
		name:    "RFC 9111 4.1: values differing only in white space and line folding match",
		answers: vary,
		steps: []step{
			{header: []string{"Accept-Encoding", "gzip,  br"}, want: ok("x"), upstream: 1},
			{header: []string{"Accept-Encoding", "gzip", "Accept-Encoding", "br"}, want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 1},
		},
	}, {
		name:    "RFC 9111 4.1: Vary: * is never served from the cache",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Vary", "*"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}})
}

func TestConformanceSharedCacheRules(t *testing.T) {
	runConformance(t, []conformanceCase{{
		name:    "RFC 9111 5.2.2.7: private with field names: stored without them",
		answers: []answerSpec{{header: []string{"Cache-Control", `max-age=60, private="X-Secret"`, "X-Secret", "s3"}, body: "x"}},
		steps: []step{
			{want: ok("x", "X-Secret", "s3"), upstream: 1},
			{want: ok("x", "X-Secret", "", "Cache-Status", "corral; hit; ttl=60"), upstream: 1},
		},
	}, {
		// cache-tests headers-omit-headers-listed-in-Connection and
		// headers-store-Proxy-Authentication-Info.
		name: "RFC 9111 3.1: fields Connection names and proxy fields are not stored",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Connection", "a, b", "A", "1", "B", "2", "C", "3",
			"Proxy-Authentication-Info", `nextnonce="x"`, "Proxy-Authenticate", "Basic"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x", "A", "", "B", "", "C", "3", "Proxy-Authentication-Info", "", "Proxy-Authenticate", "", "Cache-Status", "corral; hit; ttl=60"), upstream: 1},
		},
	}, {
		name:    "RFC 9111 5.2.2.5: no-store is not stored",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60, no-store"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=no-store"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		// cache-tests status-200-must-understand and status-599-must-understand.
		name:    "RFC 9111 5.2.2.3: must-understand stores a known status despite no-store",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60, must-understand, no-store"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"), upstream: 1},
			{want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 1},
		},
	}, {
		name:    "RFC 9111 5.2.2.3: but not a status corral does not know",
		answers: []answerSpec{{status: 599, header: []string{"Cache-Control", "max-age=60, must-understand, no-store"}, body: "x"}},
		steps: []step{
			{want: wantSpec{Status: 599, Body: "x", Header: hdr("Cache-Status", "corral; fwd=uri-miss; fwd-status=599; detail=must-understand")}, upstream: 1},
			{want: wantSpec{Status: 599, Body: "x"}, upstream: 2},
		},
	}, {
		name: "RFC 9111 5.2.2.4: no-cache is stored but revalidated before every use",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=60, no-cache", "ETag", `"a"`}, body: "x"},
			{status: 304, header: []string{"Cache-Control", "max-age=60, no-cache", "ETag", `"a"`}},
		},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x", "Cache-Status", "corral; fwd=stale; fwd-status=304; stored; ttl=60"), upstream: 2, sent: hdr("If-None-Match", `"a"`)},
			{want: ok("x"), upstream: 3},
		},
	}, {
		name:    "RFC 9111 5.2.2.10: s-maxage overrides max-age for a shared cache",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, s-maxage=60"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{advance: 30 * time.Second, want: ok("x", "Age", "30"), upstream: 1},
		},
	}, {
		name:    "RFC 9111 3.5: a response to an authorized request is shared when public",
		answers: []answerSpec{{header: []string{"Cache-Control", "public, max-age=60"}, body: "x"}},
		steps: []step{
			{header: []string{"Authorization", "Bearer a"}, want: ok("x"), upstream: 1},
			{want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 1},
		},
	}, {
		name:    "RFC 9111 3.5: and when s-maxage allows it",
		answers: []answerSpec{{header: []string{"Cache-Control", "s-maxage=60"}, body: "x"}},
		steps: []step{
			{header: []string{"Authorization", "Bearer a"}, want: ok("x"), upstream: 1},
			{want: ok("x"), upstream: 1},
		},
	}, {
		name:    "Set-Cookie responses are never shared",
		answers: []answerSpec{{header: []string{"Cache-Control", "public, max-age=60", "Set-Cookie", "s=1"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Set-Cookie", "s=1", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=set-cookie"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9110 15.1: 404 is heuristically cacheable (with Last-Modified)",
		answers: []answerSpec{{status: 404, header: []string{"Last-Modified", "Wed, 25 Nov 2026 02:00:00 GMT"}, body: "none"}},
		steps: []step{
			{want: wantSpec{Status: 404, Body: "none", Header: hdr("Cache-Status", "corral; fwd=uri-miss; fwd-status=404; stored; ttl=3600")}, upstream: 1},
			{want: wantSpec{Status: 404, Body: "none"}, upstream: 1},
		},
	}, {
		name:    "RFC 9111 3: 403 is stored only with explicit freshness",
		answers: []answerSpec{{status: 403, header: []string{"Last-Modified", "Wed, 25 Nov 2026 02:00:00 GMT"}, body: "no"}},
		steps: []step{
			{want: wantSpec{Status: 403, Body: "no", Header: hdr("Cache-Status", "corral; fwd=uri-miss; fwd-status=403; detail=no-freshness")}, upstream: 1},
			{want: wantSpec{Status: 403, Body: "no"}, upstream: 2},
		},
	}, {
		name:    "RFC 9111 3: 403 with max-age is stored",
		answers: []answerSpec{{status: 403, header: []string{"Cache-Control", "max-age=60"}, body: "no"}},
		steps: []step{
			{want: wantSpec{Status: 403, Body: "no"}, upstream: 1},
			{want: wantSpec{Status: 403, Body: "no"}, upstream: 1},
		},
	}})
}

func TestConformanceFreshness(t *testing.T) {
	runConformance(t, []conformanceCase{{
		name:    "RFC 9111 5.3: an invalid Expires means already expired",
		answers: []answerSpec{{header: []string{"Expires", "0"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		// cache-tests freshness-expires-invalid-multiple-spaces and -1-digit-hour.
		name:    "RFC 9111 5.3: an Expires that only resembles an HTTP-date is invalid, so already expired",
		answers: []answerSpec{{header: []string{"Expires", "Thu, 26  Nov  2026 12:00:00 GMT"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9111 4.2.1: Expires minus Date",
		answers: []answerSpec{{header: []string{"Expires", "Wed, 25 Nov 2026 12:01:00 GMT"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"), upstream: 1},
			{advance: 59 * time.Second, want: ok("x"), upstream: 1},
			{advance: time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9111 4.2.3: an upstream Age counts against the lifetime",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Age", "50"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Age", "50", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=10"), upstream: 1},
			{advance: 5 * time.Second, want: ok("x", "Age", "55"), upstream: 1},
			{advance: 5 * time.Second, want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9110 5.3: Cache-Control field lines are combined",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Cache-Control", "private"}, body: "x"}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{want: ok("x"), upstream: 2},
		},
	}, {
		name:    "RFC 9110 6.6.1: Date is preserved",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60"}, body: "x"}},
		steps: []step{
			{want: ok("x", "Date", "Wed, 25 Nov 2026 12:00:00 GMT"), upstream: 1},
			{advance: 10 * time.Second, want: ok("x", "Date", "Wed, 25 Nov 2026 12:00:00 GMT", "Age", "10", "Via", "1.1 corral"), upstream: 1},
		},
	}})
}

func TestConformanceStale(t *testing.T) {
	failing := []answerSpec{
		{header: []string{"Cache-Control", "max-age=1"}, body: "good"},
		{status: 500, body: "bad"},
	}
	runConformance(t, []conformanceCase{{
		name:    "RFC 5861 4: stale-if-error on the request",
		answers: failing,
		steps: []step{
			{want: ok("good"), upstream: 1},
			{advance: 10 * time.Second, header: []string{"Cache-Control", "stale-if-error=60"},
				want: ok("good", "Cache-Status", "corral; fwd=stale; fwd-status=500; ttl=-9; detail=stale-if-error"), upstream: 2},
			{header: []string{"Cache-Control", "stale-if-error=5"}, want: wantSpec{Status: 500, Body: "bad"}, upstream: 3},
			{want: wantSpec{Status: 500, Body: "bad"}, upstream: 4},
		},
	}, {
		// cache-tests stale-while-revalidate-window.
		name: "RFC 5861 3: past the stale-while-revalidate window, what the refresh stored is used",
		answers: []answerSpec{
			{header: []string{"Cache-Control", "max-age=1, stale-while-revalidate=4", "ETag", `"abc"`}, body: "v1"},
			{header: []string{"Cache-Control", "no-cache", "ETag", `"def"`}, body: "v2"},
			{body: "v3"},
		},
		steps: []step{
			{want: ok("v1"), upstream: 1},
			{advance: 3 * time.Second, want: ok("v1", "Cache-Status", "corral; hit; ttl=-2; detail=stale-while-revalidate"), upstream: 2, sent: hdr("If-None-Match", `"abc"`)},
			{advance: 3 * time.Second, want: ok("v3"), upstream: 3, sent: hdr("If-None-Match", `"def"`)},
		},
	}, {
		name:    "RFC 5861 3: a 503 during a background refresh keeps the stale entry in service",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, stale-while-revalidate=60"}, body: "good"}, {status: 503, header: []string{"Retry-After", "20"}}},
		steps: []step{
			{want: ok("good"), upstream: 1},
			{advance: 5 * time.Second, want: ok("good"), upstream: 2},
			{advance: 10 * time.Second, want: ok("good"), upstream: 2}, // within Retry-After: no new attempt
			{advance: 11 * time.Second, want: ok("good"), upstream: 3},
		},
	}})
}

func TestConformanceInvalidation(t *testing.T) {
	cached := answerSpec{header: []string{"Cache-Control", "max-age=60"}, body: "x"}
	runConformance(t, []conformanceCase{{
		name:    "RFC 9111 4.4: a successful POST invalidates its target",
		answers: []answerSpec{cached},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{method: "POST", want: wantSpec{Status: 200, Body: "x"}, upstream: 2},
			{advance: time.Second, want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"), upstream: 3},
		},
	}, {
		name:    "RFC 9111 4.4: and the same-origin Location and Content-Location",
		answers: []answerSpec{cached, cached, {status: 201, header: []string{"Location", "/r", "Content-Location", "http://example.com/s"}}, cached},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{path: "/s", want: ok("x"), upstream: 2},
			{method: "PUT", path: "/new", want: wantSpec{Status: 201}, upstream: 3},
			{advance: time.Second, want: ok("x"), upstream: 4},
			{path: "/s", want: ok("x"), upstream: 5},
		},
	}, {
		name:    "RFC 9111 4.4: a failed DELETE invalidates nothing",
		answers: []answerSpec{cached, {status: 500}},
		steps: []step{
			{want: ok("x"), upstream: 1},
			{method: "DELETE", want: wantSpec{Status: 500}, upstream: 2},
			{want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 2},
		},
	}})
}

func TestConformanceRequestDirectives(t *testing.T) {
	cached := []answerSpec{{header: []string{"Cache-Control", "max-age=60", "ETag", `"a"`}, body: "x"}}
	// A reload revalidates (by default) once the stored response was
	// validated -revalidate-interval (1s) ago; before that it is a hit.
	reload := func(kv ...string) []step {
		return []step{
			{want: ok("x"), upstream: 1},
			{header: kv, want: ok("x", "Cache-Status", "corral; hit; ttl=60; detail=revalidated-recently"), upstream: 1},
			{advance: time.Second, header: kv, want: ok("x", "Cache-Status", "corral; fwd=request; fwd-status=200; stored; ttl=60"),
				upstream: 2, sent: hdr("If-None-Match", `"a"`, "Cache-Control", "", "Pragma", "")},
		}
	}
	runConformance(t, []conformanceCase{
		{name: "RFC 9111 5.2.1.4: no-cache revalidates (default)", answers: cached, steps: reload("Cache-Control", "no-cache")},
		{name: "RFC 9111 5.2.1.1: max-age=0 revalidates (default)", answers: cached, steps: reload("Cache-Control", "max-age=0")},
		{name: "RFC 9111 5.4: Pragma: no-cache revalidates (default)", answers: cached, steps: reload("Pragma", "no-cache")},
		{
			name: "-revalidate-interval=0: a reload revalidates at once", cfg: Config{RevalidateInterval: -1}, answers: cached,
			steps: []step{
				{want: ok("x"), upstream: 1},
				{header: []string{"Cache-Control", "no-cache"}, want: ok("x", "Cache-Status", "corral; fwd=request; fwd-status=200; stored; ttl=60"),
					upstream: 2, sent: hdr("If-None-Match", `"a"`)},
			},
		}, {
			name: "-request-no-cache=ignore: a reload is a hit", cfg: Config{RequestNoCache: RequestNoCacheIgnore}, answers: cached,
			steps: []step{
				{want: ok("x"), upstream: 1},
				{advance: 5 * time.Second, header: []string{"Cache-Control", "no-cache"}, want: ok("x", "Cache-Status", "corral; hit; ttl=55"), upstream: 1},
				{header: []string{"Cache-Control", "max-age=0"}, want: ok("x"), upstream: 1},
				{header: []string{"Pragma", "no-cache"}, want: ok("x"), upstream: 1},
				{header: []string{"Cache-Control", "max-age=1"}, want: ok("x"), upstream: 1},
				{header: []string{"Cache-Control", "min-fresh=999999"}, want: ok("x"), upstream: 1},
			},
		}, {
			name: "RFC 9111 5.2.1.5: a no-store request goes upstream alone and leaves the cache to others", answers: cached,
			steps: []step{
				{header: []string{"Cache-Control", "no-store"}, want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=request-no-store"), upstream: 1},
				{want: ok("x", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60"), upstream: 2},
				{header: []string{"Cache-Control", "no-store"}, want: ok("x", "Cache-Status", "corral; hit; ttl=60"), upstream: 2},
			},
		}, {
			name: "RFC 9111 5.2.1.7: only-if-cached answers 504 on a miss", answers: cached,
			steps: []step{
				{header: []string{"Cache-Control", "only-if-cached"}, want: wantSpec{Status: 504, Body: "Gateway Timeout\n"}, upstream: 0},
				{want: ok("x"), upstream: 1},
				{header: []string{"Cache-Control", "only-if-cached"}, want: ok("x"), upstream: 1},
			},
		}, {
			name: "RFC 9111 5.2.1.3: min-fresh asks for a longer remaining life", answers: cached,
			steps: []step{
				{want: ok("x"), upstream: 1},
				{advance: 40 * time.Second, header: []string{"Cache-Control", "min-fresh=10"}, want: ok("x"), upstream: 1},
				{header: []string{"Cache-Control", "min-fresh=30"}, want: ok("x"), upstream: 2},
			},
		}, {
			name: "RFC 9111 5.2.1.2: max-stale accepts a stale response", answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1"}, body: "x"}},
			steps: []step{
				{want: ok("x"), upstream: 1},
				{advance: 5 * time.Second, header: []string{"Cache-Control", "max-stale=10"}, want: ok("x", "Cache-Status", "corral; hit; ttl=-4; detail=stale-while-revalidate"), upstream: 2},
			},
		}, {
			name: "RFC 9111 5.2.1.2: but not when the response says must-revalidate", answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, must-revalidate"}, body: "x"}},
			steps: []step{
				{want: ok("x"), upstream: 1},
				{advance: 5 * time.Second, header: []string{"Cache-Control", "max-stale=10"}, want: ok("x", "Cache-Status", "corral; fwd=stale; fwd-status=200; stored; ttl=1"), upstream: 2},
			},
		},
	})
}

func TestConformanceRangeAndHead(t *testing.T) {
	cached := []answerSpec{{header: []string{"Cache-Control", "max-age=60", "Content-Type", "text/plain"}, body: "hello world"}}
	runConformance(t, []conformanceCase{{
		name: "RFC 9110 14.2: a Range is served from the stored full response", answers: cached,
		steps: []step{
			{want: ok("hello world"), upstream: 1},
			{header: []string{"Range", "bytes=0-4"}, want: wantSpec{Status: 206, Body: "hello", Header: hdr("Content-Range", "bytes 0-4/11", "Content-Type", "text/plain")}, upstream: 1},
			{header: []string{"Range", "bytes=20-"}, want: wantSpec{Status: 416, Body: "invalid range: failed to overlap\n"}, upstream: 1},
		},
	}, {
		name: "a Range with nothing stored goes upstream as it is", answers: cached,
		steps: []step{
			{header: []string{"Range", "bytes=0-4"}, want: ok("hello world", "Cache-Status", "corral; fwd=uri-miss; fwd-status=200; detail=range"),
				upstream: 1, sent: hdr("Range", "bytes=0-4")},
		},
	}, {
		name: "RFC 9110 9.3.2: HEAD is answered from a stored GET", answers: cached,
		steps: []step{
			{want: ok("hello world"), upstream: 1},
			{method: "HEAD", want: ok("", "Content-Length", strconv.Itoa(len("hello world"))), upstream: 1},
		},
	}})
}

// Issue 11, items 1 and 2: errors the origin marked cacheable, and stale
// responses standing in for an origin that fails.
func TestConformanceErrors(t *testing.T) {
	down := answerSpec{status: 503, header: []string{"Cache-Control", "max-age=60"}, body: "down"}
	sie := Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}}
	runConformance(t, []conformanceCase{{
		name:    "RFC 9111 3: a 503 with explicit freshness is reused while fresh",
		answers: []answerSpec{{status: 503, header: []string{"Cache-Control", "max-age=10"}, body: "down"}, {header: []string{"Cache-Control", "max-age=60"}, body: "up"}},
		steps: []step{
			{want: wantSpec{Status: 503, Body: "down"}, upstream: 1},
			{advance: 5 * time.Second, want: wantSpec{Status: 503, Body: "down", Header: hdr("Cache-Status", "corral; hit; ttl=5")}, upstream: 1},
			{advance: 6 * time.Second, want: ok("up"), upstream: 2},
		},
	}, {
		name:    "RFC 9111 4.2.4: a stored error is never served stale, whatever the defaults",
		cfg:     Config{Policy: freshness.Policy{DefaultSIE: 5 * time.Minute, DefaultSWR: time.Minute}},
		answers: []answerSpec{{status: 500, header: []string{"Cache-Control", "max-age=1, stale-while-revalidate=60, stale-if-error=60"}, body: "broken"}, {status: 502, body: "bad gateway"}},
		steps: []step{
			{want: wantSpec{Status: 500, Body: "broken"}, upstream: 1},
			{advance: 2 * time.Second, want: wantSpec{Status: 502, Body: "bad gateway"}, upstream: 2},
		},
	}, {
		name:    "RFC 5861 4: a cacheable 503 does not replace the stale response standing in for it",
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, stale-if-error=60"}, body: "good"}, down},
		steps: []step{
			{want: ok("good"), upstream: 1},
			{advance: 5 * time.Second, want: wantSpec{Status: 200, Body: "good", Header: hdr("Cache-Status", "corral; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error")}, upstream: 2},
			{advance: time.Second, want: ok("good"), upstream: 3},
		},
	}, {
		name:    "RFC 9111 4.2.4: -default-stale-if-error serves stale when the origin fails",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1"}, body: "good"}, down},
		steps: []step{
			{want: ok("good"), upstream: 1},
			{advance: time.Minute, want: wantSpec{Status: 200, Body: "good", Header: hdr("Cache-Status", "corral; fwd=stale; fwd-status=503; ttl=-59; detail=stale-if-error")}, upstream: 2},
			{advance: 5 * time.Minute, want: wantSpec{Status: 503, Body: "down"}, upstream: 3},
		},
	}, {
		name:    "RFC 5861 4: the origin's stale-if-error wins over the default",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, stale-if-error=2"}, body: "good"}, {status: 503, body: "down"}},
		steps: []step{
			{want: ok("good"), upstream: 1},
			{advance: 10 * time.Second, want: wantSpec{Status: 503, Body: "down"}, upstream: 2},
		},
	}, {
		name:    "RFC 9111 5.2.2.2: must-revalidate forbids the default",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, must-revalidate"}, body: "good"}, {status: 503, body: "down"}},
		steps:   []step{{want: ok("good"), upstream: 1}, {advance: 5 * time.Second, want: wantSpec{Status: 503, Body: "down"}, upstream: 2}},
	}, {
		name:    "RFC 9111 5.2.2.8: proxy-revalidate forbids the default",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=1, proxy-revalidate"}, body: "good"}, {status: 503, body: "down"}},
		steps:   []step{{want: ok("good"), upstream: 1}, {advance: 5 * time.Second, want: wantSpec{Status: 503, Body: "down"}, upstream: 2}},
	}, {
		name:    "RFC 9111 5.2.2.10: s-maxage forbids the default",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "s-maxage=1"}, body: "good"}, {status: 503, body: "down"}},
		steps:   []step{{want: ok("good"), upstream: 1}, {advance: 5 * time.Second, want: wantSpec{Status: 503, Body: "down"}, upstream: 2}},
	}, {
		name:    "RFC 9111 5.2.2.4: no-cache forbids the default",
		cfg:     sie,
		answers: []answerSpec{{header: []string{"Cache-Control", "max-age=60, no-cache"}, body: "good"}, {status: 503, body: "down"}},
		steps:   []step{{want: ok("good"), upstream: 1}, {advance: 5 * time.Second, want: wantSpec{Status: 503, Body: "down"}, upstream: 2}},
	}})
}

// RFC 9111 4.2.4: stale on origin failure covers an origin that cannot be
// reached at all and one that times out, not only error statuses.
func TestDefaultStaleIfErrorWhenTheOriginIsGone(t *testing.T) {
	for _, tt := range []struct {
		name    string
		breakIt func(o *origin, release chan struct{})
	}{
		{"connection refused", func(o *origin, _ chan struct{}) { o.Close() }},
		{"connection reset", func(o *origin, _ chan struct{}) {
			o.set(func(w http.ResponseWriter, r *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.(*net.TCPConn).SetLinger(0) // RST, not FIN
					conn.Close()
				}
			})
		}},
		{"timeout", func(o *origin, release chan struct{}) {
			o.set(func(w http.ResponseWriter, r *http.Request) { <-release })
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			o := newOrigin(t, clk, answer("max-age=1", "good"))
			p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 200 * time.Millisecond, Policy: freshness.Policy{DefaultSIE: 5 * time.Minute}})
			get(p, "/x")
			release := make(chan struct{})
			defer close(release)
			tt.breakIt(o, release)
			clk.Advance(time.Minute)
			got, _ := get(p, "/x")
			if got.Status != 200 || got.Body != "good" || !strings.HasSuffix(got.CacheStatus, "detail=stale-if-error") {
				t.Errorf("got %d %q (%s), want the stale response", got.Status, got.Body, got.CacheStatus)
			}
		})
	}
}

// RFC 9110 section 15.2: interim responses go to the client whose request
// caused them, the leader of a shared fetch or a passed-through request,
// and are never stored.
func TestInterimResponses(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</app.css>; rel=preload")
		// Never for a client: corral's own field, and a hop-by-hop one.
		w.Header().Set("Corral-Cache-Control", "max-age=600")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "hop")
		w.WriteHeader(http.StatusEarlyHints)
		h := w.Header()
		clear(h)
		h.Set("Cache-Control", "max-age=60")
		io.WriteString(w, "final")
	})
	p := newTestProxy(t, o, clk, Config{})
	addr := "http://" + serveProxy(t, p)

	type seen struct {
		Interim []int
		Link    string
		Status  int
		Final   string // the final answer's Link
	}
	call := func(method string) seen {
		var s seen
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			s.Interim = append(s.Interim, code)
			s.Link = h.Get("Link")
			for _, f := range []string{"Corral-Cache-Control", "X-Hop"} {
				if v := h.Get(f); v != "" {
					s.Link += "; leaked " + f
				}
			}
			return nil
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), method, addr+"/page", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		s.Status, s.Final = resp.StatusCode, resp.Header.Get("Link")
		return s
	}
	hint := "</app.css>; rel=preload"
	got := []seen{call(http.MethodGet), call(http.MethodGet), call(http.MethodPost)}
	want := []seen{
		{Interim: []int{103}, Link: hint, Status: 200}, // the leader of the shared fetch
		{Status: 200}, // a hit: nothing of the 103 was stored
		{Interim: []int{103}, Link: hint, Status: 200}, // passed through
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// RFC 9110 section 9.3.3, RFC 9111 section 4: a POST answer with explicit
// freshness and a Content-Location that is its own target may answer later
// GETs for that target.
func TestConformancePostContentLocation(t *testing.T) {
	posted := func(cl string) answerSpec {
		return answerSpec{header: []string{"Cache-Control", "max-age=60", "Content-Location", cl}, body: "posted"}
	}
	get := answerSpec{header: []string{"Cache-Control", "max-age=60"}, body: "fetched"}
	runConformance(t, []conformanceCase{{
		name:    "Content-Location is the target: a later GET is a hit",
		answers: []answerSpec{posted("/r"), get},
		steps: []step{
			{method: "POST", want: ok("posted"), upstream: 1},
			{want: wantSpec{Status: 200, Body: "posted", Header: hdr("Cache-Status", "corral; hit; ttl=60")}, upstream: 1},
		},
	}, {
		name:    "an absolute Content-Location for corral's own host",
		answers: []answerSpec{posted("http://example.com/r"), get},
		steps:   []step{{method: "POST", want: ok("posted"), upstream: 1}, {want: ok("posted"), upstream: 1}},
	}, {
		name:    "another Content-Location: the target is only invalidated",
		answers: []answerSpec{get, posted("/other"), get},
		steps: []step{
			{want: ok("fetched"), upstream: 1},
			{method: "POST", want: ok("posted"), upstream: 2},
			{want: ok("fetched"), upstream: 3},
		},
	}, {
		name:    "no explicit freshness: not stored",
		answers: []answerSpec{{header: []string{"Content-Location", "/r"}, body: "posted"}, get},
		steps:   []step{{method: "POST", want: ok("posted"), upstream: 1}, {want: ok("fetched"), upstream: 2}},
	}})
}

// Issue 11, item 5: Accept-Language and Accept-Encoding are normalised for
// Vary (RFC 9111 section 4.1), and a stored response in the language a
// request prefers above all is selected for it.
func TestConformanceVaryNormalised(t *testing.T) {
	lang := func(cl string) answerSpec {
		return answerSpec{header: []string{"Cache-Control", "max-age=60", "Vary", "Accept-Language", "Content-Language", cl}, body: cl}
	}
	enc := answerSpec{header: []string{"Cache-Control", "max-age=60", "Vary", "Accept-Encoding"}, body: "x"}
	al := func(v string) []string { return []string{"Accept-Language", v} }
	runConformance(t, []conformanceCase{{
		name:    "vary-normalise-lang-order, -case and -space",
		answers: []answerSpec{lang("de"), lang("fr")},
		steps: []step{
			{header: al("en, de"), want: ok("de"), upstream: 1},
			{header: al("de, en"), want: ok("de"), upstream: 1},
			{header: al("eN, De"), want: ok("de"), upstream: 1},
			{header: al(" en ,   de"), want: ok("de"), upstream: 1},
		},
	}, {
		name:    "vary-normalise-lang-select: a stored response in the request's first choice",
		answers: []answerSpec{lang("de"), lang("fr")},
		steps: []step{
			{header: al("en, de"), want: ok("de"), upstream: 1},
			{header: al("fr;q=0.5, de;q=1.0"), want: wantSpec{Status: 200, Body: "de", Header: hdr("Cache-Status", "corral; hit; ttl=60")}, upstream: 1},
			{header: al("DE;q=0.9, fr;q=0.1"), want: ok("de"), upstream: 1},
		},
	}, {
		name:    "no selection when the first choice is not stored, or tied",
		answers: []answerSpec{lang("de"), lang("fr"), lang("fr")},
		steps: []step{
			{header: al("en, de"), want: ok("de"), upstream: 1},
			{header: al("fr;q=1, de;q=0.5"), want: ok("fr"), upstream: 2},
			{header: al("de, it"), want: ok("fr"), upstream: 3},
		},
	}, {
		name:    "vary-normalise-encoding: order, case and spaces",
		answers: []answerSpec{enc},
		steps: []step{
			{header: []string{"Accept-Encoding", "gzip, br"}, want: ok("x"), upstream: 1},
			{header: []string{"Accept-Encoding", "br,GZIP"}, want: ok("x"), upstream: 1},
			{header: []string{"Accept-Encoding", "gzip"}, want: ok("x"), upstream: 2},
		},
	}})
}

// An origin that keeps sending interim responses past the upstream
// timeout: net/http's transport may deliver one after the fetch ended,
// and it must not be written while the handler answers 504.
func TestInterimResponsesAfterTheTimeout(t *testing.T) {
	clk := newClock()
	stop := make(chan struct{})
	defer close(stop)
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		for i := 0; ; i++ {
			w.Header().Set("Link", "</x"+strconv.Itoa(i)+">; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			select {
			case <-stop:
				return
			case <-r.Context().Done():
				return
			default:
			}
		}
	})
	p := newTestProxy(t, o, clk, Config{UpstreamTimeout: 50 * time.Millisecond})
	addr := "http://" + serveProxy(t, p)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(addr + "/flood-" + strconv.Itoa(i))
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusGatewayTimeout {
				t.Errorf("status %d, want 504", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
}

// A variant whose language changed is no longer selected for the old one.
func TestLanguageSelectionFollowsTheStoredLanguage(t *testing.T) {
	clk := newClock()
	var english atomic.Bool
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		lang := "fr" // French for everyone, until English exists
		if english.Load() && strings.HasPrefix(r.Header.Get("Accept-Language"), "en") {
			lang = "en"
		}
		w.Header().Set("Cache-Control", "max-age=1")
		w.Header().Set("Vary", "Accept-Language")
		w.Header().Set("Content-Language", lang)
		io.WriteString(w, lang)
	})
	p := newTestProxy(t, o, clk, Config{})
	get(p, "/lang", "Accept-Language", "en") // French, stored under en
	english.Store(true)
	clk.Advance(2 * time.Second)
	if res, _ := get(p, "/lang", "Accept-Language", "en"); res.Body != "en" {
		t.Fatalf("en after the change: %q", res.Body)
	}
	if res, _ := get(p, "/lang", "Accept-Language", "fr"); res.Body != "fr" {
		t.Errorf("a French client got %q (%s), want French", res.Body, res.CacheStatus)
	}
}
