package freshness

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// exchange is a GET answered at t0 with Date t0 unless kv sets one.
func exchange(status int, kv ...string) Exchange {
	h := header(kv...)
	if h.Get("Date") == "" {
		h.Set("Date", t0.Format(http.TimeFormat))
	}
	return Exchange{Method: "GET", RequestHeader: http.Header{}, Status: status, Header: h, RequestTime: t0, ResponseTime: t0}
}

// verdict is the part of a Decision the table compares.
type verdict struct {
	Storable, Shareable bool
	Reason              string
	Lifetime, Age       time.Duration
	SWR, SIE            time.Duration
	NoStale, NoCache    bool
	Strip               []string
}

func verdictOf(d Decision) verdict {
	return verdict{d.Storable, d.Shareable, d.Reason, d.Lifetime, d.InitialAge, d.StaleWhileRevalidate, d.StaleIfError, d.NoStale, d.NoCache, d.StripFields}
}

func TestEvaluate(t *testing.T) {
	withAuth := func(x Exchange) Exchange { x.RequestHeader.Set("Authorization", "Bearer x"); return x }
	tests := []struct {
		name   string
		policy Policy
		x      Exchange
		want   verdict
	}{
		{"RFC 9111 4.2.1: max-age", Policy{}, exchange(200, "Cache-Control", "max-age=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute}},
		{"RFC 9111 4.2.1: s-maxage beats max-age and forbids stale (5.2.2.10)", Policy{}, exchange(200, "Cache-Control", "max-age=1, s-maxage=60, stale-while-revalidate=5"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoStale: true}},
		{"RFC 9111 4.2.1: max-age beats Expires", Policy{}, exchange(200, "Cache-Control", "max-age=5", "Expires", t0.Add(time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}},
		{"RFC 9111 4.2.1: Expires minus Date", Policy{}, exchange(200, "Expires", t0.Add(time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour}},
		{"RFC 9111 5.3: invalid Expires is already expired, but storable", Policy{}, exchange(200, "Expires", "0"),
			verdict{Storable: true, Shareable: true}},
		{"RFC 9111 4.2.2: heuristic is 10% of Date minus Last-Modified", Policy{}, exchange(200, "Last-Modified", t0.Add(-10*time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour}},
		{"RFC 9111 4.2.2: heuristic capped", Policy{HeuristicMax: 30 * time.Minute}, exchange(200, "Last-Modified", t0.Add(-10*time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: 30 * time.Minute}},
		{"RFC 9111 4.2.2: operator default TTL replaces the heuristic", Policy{DefaultTTL: 5 * time.Second}, exchange(200, "Last-Modified", t0.Add(-10*time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}},
		{"RFC 9111 4.2.2: but never explicit freshness", Policy{DefaultTTL: 5 * time.Second}, exchange(200, "Cache-Control", "max-age=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute}},
		{"RFC 9111 3: 403 without explicit freshness is not storable", Policy{DefaultTTL: 5 * time.Second}, exchange(403),
			verdict{Reason: ReasonNoFreshness}},
		{"RFC 9111 3: 404 is heuristically cacheable", Policy{}, exchange(404, "Last-Modified", t0.Add(-10*time.Hour).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour}},
		{"RFC 9111 3: 206 is not stored", Policy{}, exchange(206, "Cache-Control", "max-age=60"),
			verdict{Reason: ReasonStatus, Lifetime: time.Minute}},
		{"RFC 9111 3: a 503 with explicit freshness is stored, and never served stale", Policy{DefaultSWR: time.Minute, DefaultSIE: time.Minute}, exchange(503, "Cache-Control", "max-age=60, stale-while-revalidate=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoStale: true}},
		{"RFC 9111 3: a 500 with Expires is stored", Policy{}, exchange(500, "Expires", t0.Add(time.Minute).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoStale: true}},
		{"a 503 without explicit freshness is not stored, but is shared with a herd", Policy{DefaultTTL: time.Minute}, exchange(503, "Last-Modified", t0.Add(-10*time.Hour).Format(http.TimeFormat)),
			verdict{Reason: ReasonErrorStatus, Shareable: true, Lifetime: 0, NoStale: true}},
		{"a 429 is never stored, whatever it says", Policy{}, exchange(429, "Cache-Control", "max-age=60"),
			verdict{Reason: ReasonErrorStatus, Shareable: true, Lifetime: time.Minute, NoStale: true}},
		{"RFC 9111 5.2.2.5: no-store", Policy{}, exchange(200, "Cache-Control", "max-age=60, no-store"),
			verdict{Reason: ReasonNoStore, Lifetime: time.Minute}},
		{"RFC 9111 5.2.2.7: private", Policy{}, exchange(200, "Cache-Control", "max-age=60, private"),
			verdict{Reason: ReasonPrivate, Lifetime: time.Minute}},
		{"RFC 9111 5.2.2.7: private with field names strips them", Policy{}, exchange(200, "Cache-Control", `max-age=60, private="Set-Cookie, X-User"`, "Set-Cookie", "a=1"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Strip: []string{"Set-Cookie", "X-User"}}},
		{"RFC 9111 5.2.2.4: no-cache is stored but always revalidated", Policy{}, exchange(200, "Cache-Control", "max-age=60, no-cache"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoCache: true}},
		// cache-tests status-200-must-understand and status-599-must-understand.
		{"RFC 9111 5.2.2.3: must-understand overrides no-store for a known status", Policy{}, exchange(200, "Cache-Control", "max-age=60, must-understand, no-store"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute}},
		{"RFC 9111 5.2.2.3: but an unknown status is not stored", Policy{}, exchange(599, "Cache-Control", "max-age=60, must-understand, no-store"),
			verdict{Reason: ReasonMustUnderstand, Lifetime: time.Minute}},
		{"RFC 9111 3: must-understand alone keeps an unknown status out too", Policy{}, exchange(299, "Cache-Control", "max-age=60, must-understand"),
			verdict{Reason: ReasonMustUnderstand, Lifetime: time.Minute}},
		{"a malformed must-understand does not lift no-store", Policy{}, exchange(200, "Cache-Control", "max-age=60, must-understand=1, no-store"),
			verdict{Reason: ReasonNoStore, Lifetime: time.Minute}},
		{"Set-Cookie is never shared", Policy{}, exchange(200, "Cache-Control", "public, max-age=60", "Set-Cookie", "a=1"),
			verdict{Reason: ReasonSetCookie, Lifetime: time.Minute}},
		{"RFC 9111 3.5: Authorization without public", Policy{}, withAuth(exchange(200, "Cache-Control", "max-age=60")),
			verdict{Reason: ReasonAuthorization, Lifetime: time.Minute}},
		{"RFC 9111 3.5: Authorization with public", Policy{}, withAuth(exchange(200, "Cache-Control", "public, max-age=60")),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute}},
		{"RFC 9111 3.5: Authorization with must-revalidate", Policy{}, withAuth(exchange(200, "Cache-Control", "max-age=60, must-revalidate")),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoStale: true}},
		{"RFC 9111 4.1: Vary: *", Policy{}, exchange(200, "Cache-Control", "max-age=60", "Vary", "Accept, *"),
			verdict{Reason: ReasonVaryStar, Lifetime: time.Minute}},
		{"RFC 5861: stale windows", Policy{}, exchange(200, "Cache-Control", "max-age=1, stale-while-revalidate=10, stale-if-error=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Second, SWR: 10 * time.Second, SIE: time.Minute}},
		{"operator stale windows apply when the response has none", Policy{DefaultSWR: 5 * time.Second, DefaultSIE: time.Hour}, exchange(200, "Cache-Control", "max-age=1, stale-if-error=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Second, SWR: 5 * time.Second, SIE: time.Minute}},
		{"RFC 9111 5.2.2.2: must-revalidate forbids stale windows", Policy{DefaultSWR: 5 * time.Second}, exchange(200, "Cache-Control", "max-age=1, must-revalidate, stale-if-error=60"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Second, NoStale: true}},
		{"RFC 9110 5.3: field lines are combined", Policy{}, exchange(200, "Cache-Control", "max-age=60", "Cache-Control", "private"),
			verdict{Reason: ReasonPrivate, Lifetime: time.Minute}},
		{"RFC 9111 4.2.1: conflicting max-age is stale", Policy{}, exchange(200, "Cache-Control", "max-age=60, max-age=10"),
			verdict{Storable: true, Shareable: true}},
		{"malformed max-age does not hide private", Policy{}, exchange(200, "Cache-Control", "max-age=abc, private"),
			verdict{Reason: ReasonPrivate}},
		{"malformed private field list is unqualified private", Policy{}, exchange(200, "Cache-Control", `max-age=60, private="Set-Cookie`),
			verdict{Reason: ReasonPrivate, Lifetime: time.Minute}},
		{"malformed public is dropped", Policy{}, withAuth(exchange(200, "Cache-Control", "public=yes, max-age=60")),
			verdict{Reason: ReasonAuthorization, Lifetime: time.Minute}},
		{"RFC 9111 4.2.3: Age and response delay make the initial age", Policy{}, func() Exchange {
			x := exchange(200, "Cache-Control", "max-age=60", "Age", "10")
			x.RequestTime = t0.Add(-2 * time.Second)
			return x
		}(), verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Age: 12 * time.Second}},
		{"RFC 9111 4.2.3: apparent age from an old Date", Policy{}, exchange(200, "Cache-Control", "max-age=60", "Date", t0.Add(-30*time.Second).Format(http.TimeFormat)),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Age: 30 * time.Second}},
		// A Date has whole seconds (RFC 9110 section 5.6.7): one that reads
		// 12:00:00 was written at some moment of that second. Compared with
		// the arrival time to the nanosecond, it would age every answer by
		// half a second on average: a tenth of a max-age=5.
		{"RFC 9110 5.6.7: an answer that arrives within the second of its Date has no apparent age", Policy{}, func() Exchange {
			x := exchange(200, "Cache-Control", "max-age=5")
			x.RequestTime, x.ResponseTime = t0.Add(680*time.Millisecond), t0.Add(700*time.Millisecond)
			return x
		}(), verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second, Age: 20 * time.Millisecond}},
		{"RFC 9110 5.6.7: one that arrives in the next second is a second old", Policy{}, func() Exchange {
			x := exchange(200, "Cache-Control", "max-age=5")
			x.RequestTime, x.ResponseTime = t0.Add(1280*time.Millisecond), t0.Add(1300*time.Millisecond)
			return x
		}(), verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second, Age: time.Second}},
		{"RFC 9111 5.1: an invalid Age is ignored", Policy{}, exchange(200, "Cache-Control", "max-age=60", "Age", "-5"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Minute}},
		// cache-tests age-parse-suffix, age-parse-prefix, age-parse-suffix-twoline.
		{"RFC 9111 5.1: of an Age list on one line the first value counts", Policy{}, exchange(200, "Cache-Control", "max-age=3600", "Age", "7200, 0"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour, Age: 2 * time.Hour}},
		{"RFC 9111 5.1: so 0, old is fresh", Policy{}, exchange(200, "Cache-Control", "max-age=3600", "Age", "0, 7200"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour}},
		{"RFC 9111 5.1: and of several Age lines the first", Policy{}, exchange(200, "Cache-Control", "max-age=3600", "Age", "7200", "Age", "0"),
			verdict{Storable: true, Shareable: true, Lifetime: time.Hour, Age: 2 * time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := verdictOf(tt.policy.Evaluate(tt.x))
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestExpiresParsing mirrors cache-tests' expires-parse group: what an
// Expires must look like to give a lifetime. An invalid one means already
// expired (RFC 9111 section 5.3).
func TestExpiresParsing(t *testing.T) {
	tests := []struct {
		id, expires string
		want        time.Duration
	}{
		{"freshness-expires-future", "Wed, 25 Nov 2026 13:00:00 GMT", time.Hour},
		{"freshness-expires-rfc850", "Wednesday, 25-Nov-26 13:00:00 GMT", time.Hour},
		{"freshness-expires-ansi-c", "Wed Nov 25 13:00:00 2026", time.Hour},
		{"freshness-expires-ansi-c, one-digit day", "Sun Dec  6 12:00:00 2026", 11 * 24 * time.Hour},
		{"freshness-expires-ansi-c, day name not the date's (RFC 9110 5.6.7)", "Thu Dec  6 12:00:00 2026", 11 * 24 * time.Hour},
		{"IMF-fixdate, day name not the date's", "Mon, 25 Nov 2026 13:00:00 GMT", time.Hour},
		{"RFC 850, day name not the date's", "Monday, 25-Nov-26 13:00:00 GMT", time.Hour},
		{"not a day name", "Xyz, 25 Nov 2026 13:00:00 GMT", 0},
		{"asctime, two spaces before a two-digit day", "Wed Nov  25 13:00:00 2026", 0},
		{"freshness-expires-wrong-case-weekday", "WED, 25 Nov 2026 13:00:00 GMT", time.Hour},
		{"freshness-expires-wrong-case-month", "Wed, 25 NOV 2026 13:00:00 GMT", time.Hour},
		{"freshness-expires-wrong-case-tz", "Wed, 25 Nov 2026 13:00:00 gMT", time.Hour},
		{"freshness-expires-invalid-multiple-spaces", "Wed, 25  Nov  2026 13:00:00 GMT", 0},
		{"freshness-expires-invalid-1-digit-hour", "Thu, 26 Nov 2026 3:00:00 GMT", 0},
		{"freshness-expires-invalid-utc", "Wed, 25 Nov 2026 13:00:00 UTC", 0},
		{"freshness-expires-invalid-aest", "Wed, 25 Nov 2026 13:00:00 AEST", 0},
		{"RFC 850 date in another zone", "Wednesday, 25-Nov-26 13:00:00 PST", 0},
		{"freshness-expires-invalid-2-digit-year", "Wed, 25 Nov 26 13:00:00 GMT", 0},
		{"freshness-expires-invalid-no-comma", "Wed 25 Nov 2026 13:00:00 GMT", 0},
		{"freshness-expires-invalid-date-dashes", "Wed, 25-Nov-2026 13:00:00 GMT", 0},
		{"freshness-expires-invalid-time-periods", "Wed, 25 Nov 2026 13.00.00 GMT", 0},
		{"freshness-expires-invalid", "0", 0},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			d := Policy{}.Evaluate(exchange(200, "Expires", tt.expires))
			if !d.Storable || d.Lifetime != tt.want {
				t.Errorf("Expires %q: storable %v, lifetime %s; want storable, lifetime %s", tt.expires, d.Storable, d.Lifetime, tt.want)
			}
		})
	}
}

func TestRefreshAhead(t *testing.T) {
	eval := func(cc string, initialAge time.Duration) Decision {
		d := Policy{}.Evaluate(exchange(200, "Cache-Control", cc))
		d.InitialAge = initialAge
		return d
	}
	tests := []struct {
		name  string
		d     Decision
		at    time.Duration // after ResponseTime
		fetch time.Duration
		want  bool
	}{
		{"fresh for longer than twice its fetch", eval("max-age=5", 0), 4900 * time.Millisecond, 20 * time.Millisecond, false},
		{"fresh for less than twice its fetch", eval("max-age=5", 0), 4970 * time.Millisecond, 20 * time.Millisecond, true},
		{"stale already: a refetch, not ahead", eval("max-age=5", 0), 5 * time.Second, 20 * time.Millisecond, false},
		{"a fetch of no time still leaves minAhead", eval("max-age=5", 0), 4995 * time.Millisecond, 0, true},
		{"but not more", eval("max-age=5", 0), 4980 * time.Millisecond, 0, false},
		{"a slow fetch: at most a tenth of the lifetime", eval("max-age=5", 0), 4400 * time.Millisecond, 2 * time.Second, false},
		{"a slow fetch, in the last tenth", eval("max-age=5", 0), 4600 * time.Millisecond, 2 * time.Second, true},
		{"an answer almost expired on arrival: a tenth of what it had", eval("max-age=60", 59900*time.Millisecond), 80 * time.Millisecond, 20 * time.Millisecond, false},
		{"and in its last tenth", eval("max-age=60", 59900*time.Millisecond), 95 * time.Millisecond, 20 * time.Millisecond, true},
		{"stale-while-revalidate refreshes once stale instead", eval("max-age=5, stale-while-revalidate=10", 0), 4990 * time.Millisecond, 20 * time.Millisecond, false},
		{"no-cache is never fresh", eval("max-age=5, no-cache", 0), 4990 * time.Millisecond, 20 * time.Millisecond, false},
		{"must-revalidate is refreshed ahead too", eval("max-age=5, must-revalidate", 0), 4990 * time.Millisecond, 20 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.d.RefreshAhead(tt.d.ResponseTime.Add(tt.at), tt.fetch); got != tt.want {
				t.Errorf("RefreshAhead at %v with a fetch of %v: %v, want %v (ttl %v)", tt.at, tt.fetch, got, tt.want, tt.d.TTL(tt.d.ResponseTime.Add(tt.at)))
			}
		})
	}
}

func TestState(t *testing.T) {
	d := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10, stale-while-revalidate=5, stale-if-error=20"))
	tests := []struct {
		name  string
		at    time.Duration
		want  State
		onErr bool
	}{
		{"RFC 9111 4.2: fresh while age < lifetime", 9 * time.Second, Fresh, true},
		{"RFC 9111 4.2: stale once age == lifetime", 10 * time.Second, StaleWhileRevalidate, true},
		{"RFC 5861 3: last moment of stale-while-revalidate", 14 * time.Second, StaleWhileRevalidate, true},
		{"RFC 5861 4: past it, stale-if-error only", 15 * time.Second, StaleIfError, true},
		{"RFC 5861 4: past both", 30 * time.Second, Expired, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := t0.Add(tt.at)
			if got := d.State(now); got != tt.want {
				t.Errorf("State at +%s = %s, want %s", tt.at, got, tt.want)
			}
			if got := d.UsableOnError(now); got != tt.onErr {
				t.Errorf("UsableOnError at +%s = %v, want %v", tt.at, got, tt.onErr)
			}
		})
	}
	if got, want := d.Until(), t0.Add(30*time.Second); !got.Equal(want) {
		t.Errorf("Until = %s, want %s: the end of the longer stale window", got, want)
	}
}

func TestStateFor(t *testing.T) {
	d := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10"))
	strict := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10, must-revalidate"))
	tests := []struct {
		name string
		d    Decision
		at   time.Duration
		cc   string
		want State
	}{
		{"RFC 9111 5.2.1.1: max-age older than asked", d, 5 * time.Second, "max-age=3", Expired},
		{"RFC 9111 5.2.1.1: max-age young enough", d, 5 * time.Second, "max-age=6", Fresh},
		{"RFC 9111 5.2.1.3: min-fresh not met", d, 5 * time.Second, "min-fresh=6", Expired},
		{"RFC 9111 5.2.1.3: min-fresh met", d, 5 * time.Second, "min-fresh=5", Fresh},
		{"RFC 9111 5.2.1.2: max-stale accepts stale", d, 15 * time.Second, "max-stale=5", StaleWhileRevalidate},
		{"RFC 9111 5.2.1.2: beyond max-stale", d, 16 * time.Second, "max-stale=5", Expired},
		{"RFC 9111 5.2.1.2: bare max-stale accepts any staleness", d, time.Hour, "max-stale", StaleWhileRevalidate},
		{"RFC 9111 5.2.2.2: max-stale never overrides must-revalidate", strict, 15 * time.Second, "max-stale=60", Expired},
		{"RFC 9111 5.2.1.4: no-cache asks for validation", d, 0, "no-cache", Expired},
		{"RFC 9111 5.2.1.1: max-age=0 asks for validation even at age 0", d, 0, "max-age=0", Expired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := ParseRequest(header("Cache-Control", tt.cc))
			if got := tt.d.StateFor(t0.Add(tt.at), req); got != tt.want {
				t.Errorf("StateFor(+%s, %q) = %s, want %s", tt.at, tt.cc, got, tt.want)
			}
		})
	}
}

func TestUseFor(t *testing.T) {
	d := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10"))
	aged := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10", "Age", "5"))
	swr := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=0, stale-while-revalidate=60"))
	noCache := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=10, no-cache"))
	strict := Policy{}.Evaluate(exchange(200, "Cache-Control", "max-age=0, must-revalidate"))
	const ms = time.Millisecond
	tests := []struct {
		name   string
		d      Decision
		at     time.Duration
		cc     string
		recent time.Duration
		want   Use
	}{
		{"no directives: the response's own state", d, 5 * time.Second, "", time.Second, Use{State: Fresh}},
		{"RFC 9111 5.2.1.4: no-cache, validated within the interval", d, 500 * ms, "no-cache", time.Second, Use{State: Fresh, Recent: true}},
		{"RFC 9111 5.2.1.4: no-cache, validated a full interval ago", d, time.Second, "no-cache", time.Second, Use{State: Expired, Refused: true}},
		{"RFC 9111 5.2.1.4: an interval of zero relaxes nothing", d, 0, "no-cache", 0, Use{State: Expired, Refused: true}},
		{"RFC 9111 5.2.1.4: nor does a clock that went back", d, -time.Second, "no-cache", time.Second, Use{State: Expired, Refused: true}},
		{"RFC 9111 5.2.1.1: max-age=0, validated within the interval", d, 0, "max-age=0", time.Second, Use{State: Fresh, Recent: true}},
		{"RFC 9111 5.2.1.1: max-age older than asked, validated within the interval", aged, 500 * ms, "max-age=3", time.Second, Use{State: Fresh, Recent: true}},
		{"RFC 9111 5.2.1.1: max-age older than asked, validated before it", aged, 2 * time.Second, "max-age=3", time.Second, Use{State: Expired, Refused: true}},
		{"RFC 9111 5.2.1.3: min-fresh, validated within the interval", d, 500 * ms, "min-fresh=999999", time.Second, Use{State: Fresh, Recent: true}},
		{"RFC 9111 5.2.1.3: min-fresh met needs no interval", d, 500 * ms, "min-fresh=5", 0, Use{State: Fresh}},
		{"RFC 5861 3: a stale response served while it revalidates is one the request yields to", swr, 500 * ms, "no-cache", time.Second, Use{State: StaleWhileRevalidate, Recent: true}},
		{"RFC 9111 5.2.1.2: max-stale still widens what the request accepts", d, 15 * time.Second, "no-cache, max-stale=10", time.Minute, Use{State: StaleWhileRevalidate, Recent: true}},
		{"RFC 9111 5.2.2.4: the response's own no-cache is never relaxed", noCache, 0, "no-cache", time.Second, Use{State: Expired}},
		{"RFC 9111 5.2.2.2: nor its must-revalidate once stale", strict, 0, "no-cache", time.Second, Use{State: Expired}},
		{"RFC 9111 4.2: an expired response is stale, not refused by the request", d, 20 * time.Second, "no-cache", time.Minute, Use{State: Expired}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := ParseRequest(header("Cache-Control", tt.cc))
			if diff := cmp.Diff(tt.want, tt.d.UseFor(t0.Add(tt.at), req, tt.recent)); diff != "" {
				t.Errorf("UseFor(+%s, %q, %s) (-want +got):\n%s", tt.at, tt.cc, tt.recent, diff)
			}
		})
	}
}

func TestRelaxed(t *testing.T) {
	// RFC 9111 5.2.1: what -request-no-cache=ignore leaves of a request's
	// directives can never send it upstream past a usable response.
	req := ParseRequest(header("Cache-Control", "no-cache, max-age=0, min-fresh=60, max-stale=5, only-if-cached, no-store, stale-if-error=30"))
	want := RequestDirectives{NoStore: true, OnlyIfCached: true, MaxAge: -1, MinFresh: -1, StaleIfError: 30, MaxStale: 5}
	if diff := cmp.Diff(want, req.Relaxed()); diff != "" {
		t.Errorf("Relaxed (-want +got):\n%s", diff)
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name string
		h    http.Header
		want RequestDirectives
	}{
		{"RFC 9111 5.4: Pragma: no-cache without Cache-Control", header("Pragma", "no-cache"),
			RequestDirectives{NoCache: true, MaxAge: -1, MinFresh: -1, StaleIfError: -1, MaxStale: -1}},
		{"RFC 9111 5.4: Cache-Control wins over Pragma", header("Pragma", "no-cache", "Cache-Control", "max-age=5"),
			RequestDirectives{MaxAge: 5, MinFresh: -1, StaleIfError: -1, MaxStale: -1}},
		{"RFC 9111 5.2.1: a malformed directive is dropped, the rest kept", header("Cache-Control", "max-age=x, only-if-cached, stale-if-error=30"),
			RequestDirectives{OnlyIfCached: true, MaxAge: -1, MinFresh: -1, StaleIfError: 30, MaxStale: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, ParseRequest(tt.h)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// RFC 9110 section 5.6.7: Date and Last-Modified are read in all three
// HTTP-date formats, as Expires is.
func TestDateAndLastModifiedFormats(t *testing.T) {
	// t0 is 2026-11-25 12:00:00 UTC, a Wednesday.
	tests := []struct {
		name, field, value string
		wantAge, wantLife  time.Duration
	}{
		{"Date, IMF-fixdate", "Date", "Wed, 25 Nov 2026 11:59:00 GMT", time.Minute, 0},
		{"Date, RFC 850", "Date", "Wednesday, 25-Nov-26 11:59:00 GMT", time.Minute, 0},
		{"Date, asctime", "Date", "Wed Nov 25 11:59:00 2026", time.Minute, 0},
		{"Date, asctime, one-digit day", "Date", "Sun Nov  1 12:00:00 2026", 24 * 24 * time.Hour, 0},
		{"Last-Modified, asctime: a tenth of its age (RFC 9111 4.2.2)", "Last-Modified", "Thu Nov 15 12:00:00 2026", 0, 24 * time.Hour},
		{"Last-Modified, RFC 850", "Last-Modified", "Sunday, 15-Nov-26 12:00:00 GMT", 0, 24 * time.Hour},
		{"Date, invalid: the time it arrived", "Date", "yesterday", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Policy{}.Evaluate(exchange(200, tt.field, tt.value))
			if got := d.Age(t0); got != tt.wantAge || d.Lifetime != tt.wantLife {
				t.Errorf("%s %q: age %s, lifetime %s; want %s, %s", tt.field, tt.value, got, d.Lifetime, tt.wantAge, tt.wantLife)
			}
		})
	}
}

// RFC 9110 sections 9.3.3 and 8.7: a POST answer may be stored only as a
// 200 or 203 with the origin's own explicit freshness.
func TestPostAnswers(t *testing.T) {
	post := func(status int, kv ...string) Exchange {
		x := exchange(status, kv...)
		x.Method = http.MethodPost
		return x
	}
	ruled := post(200)
	ruled.Rule = "max-age=60"
	tests := []struct {
		name string
		x    Exchange
		want bool
	}{
		{"200 with max-age", post(200, "Cache-Control", "max-age=60"), true},
		{"203 with Expires", post(203, "Expires", t0.Add(time.Minute).Format(http.TimeFormat)), true},
		{"200 without freshness", post(200), false},
		{"200 with only a rule's freshness", ruled, false},
		{"201 with max-age", post(201, "Cache-Control", "max-age=60"), false},
		{"400 with max-age", post(400, "Cache-Control", "max-age=60"), false},
		{"500 with max-age", post(500, "Cache-Control", "max-age=60"), false},
	}
	for _, tt := range tests {
		if got := (Policy{}).Evaluate(tt.x).Storable; got != tt.want {
			t.Errorf("%s: storable %v, want %v", tt.name, got, tt.want)
		}
	}
}
