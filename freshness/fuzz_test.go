package freshness

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// FuzzEvaluate feeds arbitrary header bytes to the freshness engine. Its
// seed corpus runs with every go test; make fuzz explores further.
func FuzzEvaluate(f *testing.F) {
	seeds := []struct {
		cc, expires, date, age, lastModified string
		status                               int
		auth                                 bool
	}{
		{"max-age=60", "", "", "", "", 200, false},
		{"max-age=abc, private", "", "", "", "", 200, false},
		{`private="Set-Cookie`, "", "", "", "", 200, false},
		{`no-cache="a, b", max-age=5`, "", "", "", "", 200, false},
		{"s-maxage=-1, public", "", "", "", "", 200, true},
		{"max-age=99999999999999999999", "", "", "99999999999999999999", "", 200, false},
		{",,;;==\"", "0", "garbage", "-1", "yesterday", 404, false},
		{"no-store, max-age=60", "Thu, 01 Jan 1970 00:00:00 GMT", "", "", "", 200, false},
		{"stale-while-revalidate=10, max-age=1", "", "Wed, 25 Nov 2026 12:00:00 GMT", "3", "", 200, false},
		{"must-revalidate, stale-if-error=60", "", "", "", "Mon, 23 Nov 2026 12:00:00 GMT", 200, false},
		{"", "Wed, 25 Nov 2026 13:00:00 GMT", "", "", "", 203, false},
		{"", "", "", "", "Sun, 06 Nov 1994 08:49:37 GMT", 301, false},
		{"PRIVATE, MAX-AGE=5", "", "", "", "", 200, false},
		{"no-store=\"x", "", "", "", "", 200, false},
		{"max-age=\"60\"", "", "", "", "", 500, false},
		{"public, max-age=60", "", "", "", "", 206, true},
		{"must-understand, no-store, max-age=60", "", "", "", "", 200, false},
	}
	for _, s := range seeds {
		f.Add(s.cc, s.expires, s.date, s.age, s.lastModified, s.status, s.auth)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, cc, expires, date, age, lastModified string, status int, auth bool) {
		h := http.Header{}
		for k, v := range map[string]string{"Cache-Control": cc, "Expires": expires, "Date": date, "Age": age, "Last-Modified": lastModified} {
			if v != "" {
				h.Set(k, v)
			}
		}
		req := http.Header{}
		if auth {
			req.Set("Authorization", "Bearer x")
		}
		d := Policy{}.Evaluate(Exchange{Method: "GET", RequestHeader: req, Status: status, Header: h, RequestTime: now, ResponseTime: now})

		// Without quoted strings, a directive is what stands between
		// commas; no-store (unless must-understand lifts it) and a bare
		// private must each forbid storing.
		if !strings.Contains(cc, `"`) {
			mustUnderstand := strings.Contains(strings.ToLower(cc), "must-understand")
			for _, piece := range strings.Split(cc, ",") {
				name, _, hasArg := strings.Cut(strings.TrimSpace(piece), "=")
				name = strings.ToLower(strings.TrimSpace(name))
				if d.Storable && (name == "no-store" && !mustUnderstand || name == "private" && !hasArg) {
					t.Errorf("Cache-Control %q says %s, yet storable", cc, name)
				}
			}
		}
		if d.Storable && !d.Shareable {
			t.Errorf("storable but not shareable: %+v", d)
		}
		if d.Lifetime < 0 || d.InitialAge < 0 || d.StaleWhileRevalidate < 0 || d.StaleIfError < 0 {
			t.Errorf("negative duration: %+v", d)
		}
		for _, later := range []time.Duration{0, time.Second, time.Hour} {
			if a := d.Age(now.Add(later)); a < d.InitialAge {
				t.Errorf("age %s at +%s below the initial age %s", a, later, d.InitialAge)
			}
			_ = d.State(now.Add(later)).String()
		}
	})
}
