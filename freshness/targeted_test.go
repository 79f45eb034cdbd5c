package freshness

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestTargeted(t *testing.T) {
	withAuth := func(x Exchange) Exchange { x.RequestHeader.Set("Authorization", "Bearer x"); return x }
	withRule := func(rule string, x Exchange) Exchange { x.Rule = rule; return x }
	type result struct {
		Verdict verdict
		Source  Source
	}
	tests := []struct {
		name   string
		policy Policy
		x      Exchange
		want   result
	}{
		{"RFC 9213 3: CDN-Cache-Control alone", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCDN}},
		{"RFC 9213 2.2: CDN-Cache-Control wins outright over a conflicting Cache-Control", Policy{}, exchange(200, "Cache-Control", "max-age=5, private", "CDN-Cache-Control", "max-age=600"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 10 * time.Minute}, FromCDN}},
		{"RFC 9213 3.1: Cache-Control: no-store does not reach a cache the targeted field speaks to", Policy{}, exchange(200, "Cache-Control", "no-store", "CDN-Cache-Control", "max-age=60"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCDN}},
		{"RFC 9213 3.1: CDN-Cache-Control: no-store keeps it out, whatever Cache-Control says", Policy{}, exchange(200, "Cache-Control", "public, max-age=600", "CDN-Cache-Control", "no-store"),
			result{verdict{Reason: ReasonNoStore}, FromCDN}},
		{"RFC 9213 2.2: private in the targeted field", Policy{}, exchange(200, "Cache-Control", "max-age=60", "CDN-Cache-Control", "private"),
			result{verdict{Reason: ReasonPrivate}, FromCDN}},
		{"RFC 9213 2.1: private with a String of field names strips them", Policy{}, exchange(200, "CDN-Cache-Control", `max-age=60, private="X-User, Set-Cookie"`, "Set-Cookie", "a=1"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Strip: []string{"X-User", "Set-Cookie"}}, FromCDN}},
		{"RFC 9213 2.2: no-cache in the targeted field", Policy{}, exchange(200, "Cache-Control", "max-age=60", "CDN-Cache-Control", "max-age=60, no-cache"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoCache: true}, FromCDN}},
		{"RFC 9213 2.2 and RFC 9111 5.2.2.10: s-maxage in the targeted field, stale forbidden", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=1, s-maxage=60, stale-while-revalidate=5"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute, NoStale: true}, FromCDN}},
		{"RFC 9213 2.2 and RFC 5861: stale directives come from the targeted field, not Cache-Control", Policy{}, exchange(200, "Cache-Control", "max-age=1, stale-while-revalidate=99, stale-if-error=99", "CDN-Cache-Control", "max-age=1, stale-while-revalidate=10, stale-if-error=60"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Second, SWR: 10 * time.Second, SIE: time.Minute}, FromCDN}},
		{"RFC 9213 2.2: must-revalidate in the targeted field", Policy{DefaultSWR: 5 * time.Second}, exchange(200, "CDN-Cache-Control", "max-age=1, must-revalidate"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Second, NoStale: true}, FromCDN}},
		{"RFC 9213 2.2: Expires is ignored with the targeted field", Policy{}, exchange(200, "Expires", t0.Add(time.Hour).Format(http.TimeFormat), "CDN-Cache-Control", "max-age=5"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}, FromCDN}},
		{"RFC 9213 3.1: CDN-Cache-Control: none selects the field, so the heuristic applies", Policy{DefaultTTL: 7 * time.Second}, exchange(200, "Cache-Control", "no-store", "CDN-Cache-Control", "none"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 7 * time.Second}, FromCDN}},
		{"RFC 9213 2.1: an invalid targeted field is ignored as a whole", Policy{}, exchange(200, "Cache-Control", "max-age=5", "CDN-Cache-Control", "max-age=600, Private"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}, FromCacheControl}},
		{"RFC 9213 2.1: a quoted max-age is no Integer: read as zero, not the field's other directives dropped", Policy{}, exchange(200, "Cache-Control", "max-age=5", "CDN-Cache-Control", `max-age="600", stale-if-error=60`),
			result{verdict{Storable: true, Shareable: true, SIE: time.Minute}, FromCDN}},
		{"RFC 9213 2.1: a decimal max-age is not coerced", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60.5"),
			result{verdict{Storable: true, Shareable: true}, FromCDN}},
		{"RFC 9213 2.1: no-store with a value still forbids storing", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60, no-store=?0"),
			result{verdict{Reason: ReasonNoStore, Lifetime: time.Minute}, FromCDN}},
		{"RFC 9213 2.1: an empty targeted field is ignored", Policy{}, exchange(200, "Cache-Control", "max-age=5", "CDN-Cache-Control", " "),
			result{verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}, FromCacheControl}},
		{"RFC 9213 2.1: parameters on a directive are ignored", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60;foo=bar, public;x"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCDN}},
		{"RFC 9213 2.2: unknown directives are ignored", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60, x-ttl=9"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCDN}},
		{"RFC 8941 3.2: of a directive given twice the last counts", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60", "CDN-Cache-Control", "max-age=5"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}, FromCDN}},
		{"RFC 9213 2.2: Corral-Cache-Control is more specific than CDN-Cache-Control", Policy{}, exchange(200, "Cache-Control", "no-cache", "CDN-Cache-Control", "max-age=600", "Corral-Cache-Control", "max-age=2"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 2 * time.Second}, FromCorral}},
		{"RFC 9213 2.2: an invalid Corral-Cache-Control falls back to CDN-Cache-Control", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=600", "Corral-Cache-Control", "max-age=2,"),
			result{verdict{Storable: true, Shareable: true, Lifetime: 10 * time.Minute}, FromCDN}},
		{"RFC 9111 3.5: public in a targeted field shares an answer to credentials", Policy{}, withAuth(exchange(200, "CDN-Cache-Control", "public, max-age=60")),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCDN}},

		{"rule: stands in for Corral-Cache-Control on a no-cache response", Policy{}, withRule("max-age=1, stale-while-revalidate=10", exchange(200, "Cache-Control", "no-cache")),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Second, SWR: 10 * time.Second}, FromRule}},
		{"rule: on a response with no caching fields at all", Policy{}, withRule("max-age=5", exchange(200)),
			result{verdict{Storable: true, Shareable: true, Lifetime: 5 * time.Second}, FromRule}},
		{"rule: shortens a max-age too long", Policy{}, withRule("max-age=10", exchange(200, "Cache-Control", "max-age=3600")),
			result{verdict{Storable: true, Shareable: true, Lifetime: 10 * time.Second}, FromRule}},
		{"rule: beats CDN-Cache-Control", Policy{}, withRule("max-age=10", exchange(200, "CDN-Cache-Control", "max-age=600")),
			result{verdict{Storable: true, Shareable: true, Lifetime: 10 * time.Second}, FromRule}},
		{"rule: the origin's Corral-Cache-Control wins over it", Policy{}, withRule("max-age=10", exchange(200, "Corral-Cache-Control", "no-store")),
			result{verdict{Reason: ReasonNoStore}, FromCorral}},
		{"rule: never shares a response with Set-Cookie", Policy{}, withRule(`public, max-age=60, private="Set-Cookie"`, exchange(200, "Set-Cookie", "s=1")),
			result{verdict{Reason: ReasonSetCookie, Lifetime: time.Minute, Strip: []string{"Set-Cookie"}}, FromRule}},
		{"rule: never shares an answer to credentials, even with public", Policy{}, withRule("public, max-age=60", withAuth(exchange(200))),
			result{verdict{Reason: ReasonAuthorization, Lifetime: time.Minute}, FromRule}},
		{"rule: a 400 is one request's answer, not stored", Policy{}, withRule("max-age=60", exchange(400)),
			result{verdict{Reason: ReasonStatus, Lifetime: time.Minute}, FromRule}},
		{"rule: a 404 is stored, as any client gets it", Policy{}, withRule("max-age=60", exchange(404)),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromRule}},
		{"rule: a 400 with the origin's own max-age is stored", Policy{}, withRule("max-age=60", exchange(400, "Cache-Control", "max-age=5")),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromRule}},
		{"rule: never stores an error status", Policy{}, withRule("max-age=60", exchange(503)),
			result{verdict{Reason: ReasonErrorStatus, Shareable: true, Lifetime: time.Minute, NoStale: true}, FromRule}},
		{"rule: overrides the origin's no-store and no-cache", Policy{}, withRule("max-age=60", exchange(200, "Cache-Control", "no-store, no-cache, max-age=0")),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromRule}},
		{"rule: never shares what the origin marked private", Policy{}, withRule("public, max-age=60", exchange(200, "Cache-Control", "private, no-store")),
			result{verdict{Reason: ReasonPrivate, Lifetime: time.Minute}, FromRule}},
		{"rule: nor what CDN-Cache-Control, which it overrides, marked private", Policy{}, withRule("max-age=60", exchange(200, "Cache-Control", "max-age=60", "CDN-Cache-Control", "private")),
			result{verdict{Reason: ReasonPrivate, Lifetime: time.Minute}, FromRule}},
		{"rule: Cache-Control's private does not count where CDN-Cache-Control decides without the rule", Policy{}, withRule("max-age=60", exchange(200, "Cache-Control", "private", "CDN-Cache-Control", "max-age=60")),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromRule}},
		{"rule: the fields of the origin's qualified private are stripped", Policy{}, withRule(`max-age=60, private="X-A"`, exchange(200, "Cache-Control", `private="X-User"`)),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Strip: []string{"X-A", "X-User"}}, FromRule}},
		{"rule: share-private shares what the origin marked private", Policy{}, withRule("max-age=60, share-private", exchange(200, "Cache-Control", `private, no-store`)),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromRule}},
		{"rule: share-private still strips the fields of the origin's qualified private", Policy{}, withRule("max-age=60, share-private", exchange(200, "Cache-Control", `private="X-User"`)),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute, Strip: []string{"X-User"}}, FromRule}},
		{"rule: share-private=?0 is no share-private", Policy{}, withRule("max-age=60, share-private=?0", exchange(200, "Cache-Control", "private")),
			result{verdict{Reason: ReasonPrivate, Lifetime: time.Minute}, FromRule}},
		{"rule: share-private still never shares a response with Set-Cookie", Policy{}, withRule("max-age=60, share-private", exchange(200, "Cache-Control", "private", "Set-Cookie", "s=1")),
			result{verdict{Reason: ReasonSetCookie, Lifetime: time.Minute}, FromRule}},
		{"share-private from the origin means nothing: its Corral-Cache-Control decides alone", Policy{}, exchange(200, "Cache-Control", "private", "Corral-Cache-Control", "max-age=60, share-private"),
			result{verdict{Storable: true, Shareable: true, Lifetime: time.Minute}, FromCorral}},
		{"share-private in CDN-Cache-Control does not lift its own private", Policy{}, exchange(200, "CDN-Cache-Control", "max-age=60, private, share-private"),
			result{verdict{Reason: ReasonPrivate, Lifetime: time.Minute}, FromCDN}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.policy.Evaluate(tt.x)
			got := result{verdictOf(d), d.Source}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseDictionary(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []sfMember // nil with ok false
	}{
		{"RFC 8941 4.2.2: bare keys are true", []string{"no-store, private"},
			[]sfMember{{key: "no-store", kind: sfBoolean, boolean: true}, {key: "private", kind: sfBoolean, boolean: true}}},
		{"RFC 8941 4.2.4: integers", []string{"max-age=60,s-maxage=-1"},
			[]sfMember{{key: "max-age", kind: sfInteger, integer: 60}, {key: "s-maxage", kind: sfInteger, integer: -1}}},
		{"RFC 8941 4.2.5: strings unescape", []string{`private="a, \"b\""`},
			[]sfMember{{key: "private", kind: sfString, str: `a, "b"`}}},
		{"RFC 8941 4.2: field lines combine", []string{"a", "b=?0"},
			[]sfMember{{key: "a", kind: sfBoolean, boolean: true}, {key: "b", kind: sfBoolean}}},
		{"RFC 8941 4.2.3.2: parameters are dropped", []string{"a=1;q=0.5;x, b=tok/en:x"},
			[]sfMember{{key: "a", kind: sfInteger, integer: 1}, {key: "b", kind: sfToken}}},
		{"RFC 8941 4.2.1.2: inner lists and byte sequences parse", []string{`a=(1 "x" y);p, b=:aGk=:, c=1.25`},
			[]sfMember{{key: "a", kind: sfInnerList}, {key: "b", kind: sfBytes}, {key: "c", kind: sfDecimal}}},
		{"RFC 8941 3.2: the last of a repeated key counts, in its first place", []string{"a=1, b, a=2"},
			[]sfMember{{key: "a", kind: sfInteger, integer: 2}, {key: "b", kind: sfBoolean, boolean: true}}},
		{"empty", []string{""}, []sfMember{}},
		{"upper-case key", []string{"Max-Age=60"}, nil},
		{"trailing comma", []string{"max-age=60,"}, nil},
		{"unquoted list", []string{"private=a, b c"}, nil},
		{"unterminated string", []string{`private="a`}, nil},
		{"bad escape", []string{`private="\a"`}, nil},
		{"16-digit integer", []string{"max-age=1234567890123456"}, nil},
		{"decimal with four fraction digits", []string{"a=1.2345"}, nil},
		{"decimal without fraction", []string{"a=1."}, nil},
		{"bad boolean", []string{"a=?2"}, nil},
		{"non-ASCII", []string{"a=\"é\""}, nil},
		{"space before =", []string{"max-age =60"}, nil},
		{"Cache-Control's token form of a quoted list", []string{"no-cache=Set-Cookie"}, []sfMember{{key: "no-cache", kind: sfToken}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseDictionary(tt.in)
			if ok != (tt.want != nil) {
				t.Fatalf("parseDictionary(%q) ok = %v, want %v", tt.in, ok, tt.want != nil)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(sfMember{}), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckTargeted(t *testing.T) {
	tests := []struct {
		in, want string // want "" for valid
	}{
		{"max-age=1, stale-while-revalidate=10", ""},
		{`no-cache, private="X-User"`, ""},
		{"max-age=60, share-private", ""},
		{"share-private=1", "bad value for share-private"},
		{"public, s-maxage=60, stale-if-error=300, must-revalidate, immutable", ""},
		{"", "no directives"},
		{"max-age=1,", "not a list of cache directives such as max-age=60, stale-while-revalidate=30 (a Structured Field Dictionary: lower-case names, no quotes around numbers)"},
		{"maxage=1", "unknown directive maxage"},
		{"max-age=-1", "bad value for max-age"},
		{"public=1", "bad value for public"},
	}
	for _, tt := range tests {
		got := ""
		if err := CheckTargeted(tt.in); err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("CheckTargeted(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzTargeted feeds arbitrary bytes to the targeted-field parser: it
// never panics, and a field that parses with no-store keeps the response
// out.
func FuzzTargeted(f *testing.F) {
	for _, s := range []string{"max-age=60", `private="a, b"`, "a=(1 2);x=?1", "no-store, must-understand", ":aGk=:", "a=-1.5", "\"", "max-age=99999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d := Policy{}.Evaluate(exchange(200, "CDN-Cache-Control", v))
		cc, ok := parseTargeted([]string{v})
		if ok && d.Source != FromCDN || !ok && d.Source != FromCacheControl {
			t.Errorf("%q: parsed %v, source %s", v, ok, d.Source)
		}
		if ok && cc.NoStore && !cc.MustUnderstand && d.Storable {
			t.Errorf("%q says no-store, yet storable", v)
		}
		if d.Lifetime < 0 || d.StaleWhileRevalidate < 0 || d.StaleIfError < 0 {
			t.Errorf("%q: negative duration: %+v", v, d)
		}
	})
}
