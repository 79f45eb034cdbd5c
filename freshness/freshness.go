// Package freshness decides, from headers and times alone, whether a shared
// cache may store a response (RFC 9111 section 3), for how long it is fresh
// (section 4.2), and whether a stored copy may be served stale (RFC 5861),
// reading the directives of Cache-Control or, where one speaks to corral,
// of a targeted field (RFC 9213) or the operator's rule for the path.
// It does no I/O and never reads the clock: every moment is an argument.
package freshness

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Policy holds the operator's choices for what the headers leave open.
// The zero Policy follows the RFCs alone.
type Policy struct {
	// DefaultTTL is the lifetime of a heuristically cacheable response that
	// has no explicit expiration (RFC 9111 section 4.2.2). Zero means the
	// RFC's heuristic: a tenth of the time since Last-Modified.
	DefaultTTL time.Duration

	// DefaultSWR and DefaultSIE are the stale-while-revalidate and
	// stale-if-error windows for responses that do not carry their own.
	DefaultSWR, DefaultSIE time.Duration

	// HeuristicMax caps a lifetime computed from Last-Modified.
	// Zero means one day.
	HeuristicMax time.Duration
}

// Exchange is one request and the response headers the origin sent back.
type Exchange struct {
	Method        string
	RequestHeader http.Header
	Status        int
	Header        http.Header
	RequestTime   time.Time // when the request was sent
	ResponseTime  time.Time // when the response headers arrived

	// Rule is the operator's directives for this response, read as if
	// the origin had sent them in Corral-Cache-Control: one the origin
	// does send wins over them. "" means no rule. A rule never makes
	// shareable a response with Set-Cookie, or the answer to a request
	// with Authorization, nor, unless it says share-private, one the
	// origin marked private.
	Rule string
}

// Reasons a response cannot be stored. They appear in Cache-Status details.
const (
	ReasonMethod         = "method"       // only GET responses are stored, and POST ones with explicit freshness
	ReasonStatus         = "status"       // 1xx, 206, 304: not a complete response
	ReasonErrorStatus    = "error-status" // 429, or 500, 502, 503, 504 without explicit freshness
	ReasonRequestNoStore = "request-no-store"
	ReasonNoStore        = "no-store"
	ReasonMustUnderstand = "must-understand" // with a status corral does not know
	ReasonPrivate        = "private"
	ReasonAuthorization  = "authorization" // RFC 9111 section 3.5
	ReasonSetCookie      = "set-cookie"    // meant for one client
	ReasonVaryStar       = "vary-star"
	ReasonNoFreshness    = "no-freshness" // no explicit lifetime, status not heuristically cacheable
)

// Decision is what the cache may do with one response.
type Decision struct {
	// Storable is true when a shared cache may store the response.
	// Reason says why not, otherwise it is empty.
	Storable bool
	Reason   string

	// Shareable is true when the response may be handed to the other
	// clients whose requests were collapsed into the one that fetched it:
	// when it is storable, or when it is an error status that says
	// nothing about who asked (a 503 to a herd is one 503, not a reason
	// to send the herd upstream one by one).
	Shareable bool

	// Lifetime is the freshness lifetime (section 4.2.1); InitialAge is the
	// corrected initial age at ResponseTime (section 4.2.3).
	Lifetime     time.Duration
	InitialAge   time.Duration
	ResponseTime time.Time

	// StaleWhileRevalidate and StaleIfError are the RFC 5861 windows
	// past Lifetime.
	StaleWhileRevalidate, StaleIfError time.Duration

	// NoStale forbids serving the response once stale, even on error:
	// must-revalidate, proxy-revalidate and s-maxage (sections 5.2.2.2,
	// 5.2.2.8, 5.2.2.10).
	NoStale bool

	// NoCache requires validation with the origin before every reuse
	// (section 5.2.2.4).
	NoCache bool

	// Source is the field whose directives decided: Cache-Control, a
	// targeted field (RFC 9213), or the operator's rule.
	Source Source

	// StripFields are header fields named by a qualified private or
	// no-cache: the cache stores the response without them
	// (sections 5.2.2.4, 5.2.2.7).
	StripFields []string

	// Malformed lists the directives that did not parse.
	Malformed []string
}

// State is what a stored response is good for at a given moment.
type State int

const (
	Fresh                State = iota // serve it
	StaleWhileRevalidate              // serve it, refresh in the background
	StaleIfError                      // revalidate; serve it only if the origin fails
	Expired                           // revalidate; it may not be served
)

var stateNames = [...]string{"fresh", "stale-while-revalidate", "stale-if-error", "expired"}

func (s State) String() string { return stateNames[s] }

// heuristicStatus lists the status codes that are heuristically cacheable
// (RFC 9110 section 15.1). 206 is among them, but corral stores only
// complete responses.
var heuristicStatus = map[int]bool{
	200: true, 203: true, 204: true, 300: true, 301: true, 308: true,
	404: true, 405: true, 410: true, 414: true, 501: true,
}

// understood reports whether status is one RFC 9110 defines: corral
// implements the caching rules of those, and of no other, so a response
// with must-understand and any other status is not stored (RFC 9111
// section 5.2.2.3).
func understood(status int) bool {
	switch {
	case status >= 200 && status <= 206,
		status >= 300 && status <= 308 && status != 306,
		status >= 400 && status <= 417,
		status == 421, status == 422, status == 426,
		status >= 500 && status <= 505:
		return true
	}
	return false
}

// errorStatus lists the answers of an origin in trouble. Corral stores
// them only with the origin's own explicit freshness (a 429 never), and
// never serves them stale: a cached 503 must not go on failing clients
// after the origin recovered.
var errorStatus = map[int]bool{429: true, 500: true, 502: true, 503: true, 504: true}

// Evaluate decides what a shared cache may do with the response in x.
func (p Policy) Evaluate(x Exchange) Decision {
	cc, source := directives(x)
	d := Decision{
		Source:       source,
		ResponseTime: x.ResponseTime,
		InitialAge:   initialAge(x),
		Malformed:    cc.Malformed,
		NoStale:      cc.MustRevalidate || cc.ProxyRevalidate || cc.SMaxAge != unset,
		NoCache:      cc.NoCache && cc.NoCacheFields == nil,
	}
	if cc.Private {
		d.StripFields = append(d.StripFields, cc.PrivateFields...)
	}
	if cc.NoCache {
		d.StripFields = append(d.StripFields, cc.NoCacheFields...)
	}
	lifetime, explicit := explicitLifetime(x, cc, source)
	d.Reason = p.unstorable(x, cc, source, explicit, d.StripFields)
	d.Storable = d.Reason == ""
	d.Shareable = d.Storable || d.Reason == ReasonErrorStatus

	if !explicit && (heuristicStatus[x.Status] || cc.Public) {
		lifetime = p.heuristic(x)
	}
	d.Lifetime = lifetime
	if errorStatus[x.Status] {
		// A stored error is reused while fresh and never once stale:
		// an outage's answer must not outlive what the origin said, and
		// it never stands in for an origin that fails again.
		d.NoStale = true
	}
	if !d.NoStale {
		d.StaleWhileRevalidate = seconds(cc.StaleWhileRevalidate, p.DefaultSWR)
		d.StaleIfError = seconds(cc.StaleIfError, p.DefaultSIE)
	}
	return d
}

// unstorable returns why a shared cache must not store the response
// (RFC 9111 section 3), or "" when it may. An operator's rule decides how
// long a response stays fresh, never whose it is: under one, credentials
// and Set-Cookie keep a response unshared whatever the rule says, and the
// origin's private unless the rule says share-private (directives).
func (p Policy) unstorable(x Exchange, cc Directives, source Source, explicit bool, stripped []string) string {
	rule := source == FromRule
	reqCC := ParseRequest(x.RequestHeader)
	// originExplicit is explicit when Cache-Control decided; otherwise
	// the origin's own fields are read apart, and only when asked.
	originExplicit := func() bool {
		if source == FromCacheControl {
			return explicit
		}
		_, ok := explicitLifetime(x, ParseResponse(x.Header), FromCacheControl)
		return ok
	}
	switch {
	case x.Method == http.MethodPost && (!originExplicit() || (x.Status != http.StatusOK && x.Status != http.StatusNonAuthoritativeInfo)):
		// RFC 9110 section 9.3.3: a POST answer is storable only with
		// the origin's own explicit freshness (a rule speaks of what
		// GETs return, not of what a client's POST body made), and
		// only as the representation a 200 or 203 carries (section
		// 8.7); the caller checks that Content-Location names the
		// target.
		return ReasonMethod
	case x.Method != http.MethodGet && x.Method != http.MethodPost:
		return ReasonMethod
	case x.Status < 200 || x.Status == http.StatusPartialContent || x.Status == http.StatusNotModified:
		return ReasonStatus
	case reqCC.NoStore:
		return ReasonRequestNoStore
	case cc.MustUnderstand && !understood(x.Status):
		return ReasonMustUnderstand
	case cc.NoStore && !cc.MustUnderstand:
		// must-understand asks a cache that knows the status code's
		// caching rules to store the response despite no-store, which
		// is there for caches that do not (section 5.2.2.3).
		return ReasonNoStore
	case cc.Private && cc.PrivateFields == nil:
		return ReasonPrivate
	case x.RequestHeader.Get("Authorization") != "" && (rule || !cc.Public && !cc.MustRevalidate && cc.SMaxAge == unset):
		return ReasonAuthorization
	case len(x.Header.Values("Set-Cookie")) > 0 && (rule || !contains(stripped, "Set-Cookie")):
		return ReasonSetCookie
	case hasVaryStar(x.Header):
		return ReasonVaryStar
	}
	if errorStatus[x.Status] && (x.Status == http.StatusTooManyRequests || !explicit || rule) {
		// An error is stored only when the origin said for how long
		// (RFC 9111 section 3 lets a cache store any status it
		// understands): a 503 stored by default, or by an operator's
		// rule written for the answers that work, would keep failing
		// clients after the origin recovered. A 429 is about whoever
		// asked, never stored.
		return ReasonErrorStatus
	}
	if !explicit && !cc.Public && !heuristicStatus[x.Status] {
		return ReasonNoFreshness
	}
	if rule && !heuristicStatus[x.Status] && !originExplicit() {
		// A rule stores what any client would get: the statuses RFC
		// 9110 section 15.1 deems cacheable by default. A 400 or 412 is
		// an answer to one request's fields, and stored by a rule it
		// would deny the URL to everyone (cache-poisoned denial of
		// service); the origin's own freshness still stores one.
		return ReasonStatus
	}
	return ""
}

// explicitLifetime is the lifetime the response states (RFC 9111 section
// 4.2.1): s-maxage, then max-age, then Expires minus Date. An invalid
// Expires, or more than one, means already expired. When a targeted field
// decides, Expires is for the caches downstream (RFC 9213 section 2.2).
func explicitLifetime(x Exchange, cc Directives, source Source) (time.Duration, bool) {
	switch {
	case cc.SMaxAge != unset:
		return time.Duration(cc.SMaxAge) * time.Second, true
	case cc.MaxAge != unset:
		return time.Duration(cc.MaxAge) * time.Second, true
	}
	exp := x.Header.Values("Expires")
	if len(exp) == 0 || source != FromCacheControl {
		return 0, false
	}
	expires, ok := httpDate(exp[0])
	if !ok || len(exp) > 1 {
		return 0, true
	}
	return max(expires.Sub(date(x)), 0), true
}

// heuristic is the lifetime of a response without an explicit one
// (RFC 9111 section 4.2.2): the operator's default if set, else a tenth of
// the time since Last-Modified, capped.
func (p Policy) heuristic(x Exchange) time.Duration {
	if p.DefaultTTL > 0 {
		return p.DefaultTTL
	}
	lm, ok := httpDate(x.Header.Get("Last-Modified"))
	if !ok {
		return 0
	}
	limit := p.HeuristicMax
	if limit <= 0 {
		limit = 24 * time.Hour
	}
	return min(max(date(x).Sub(lm)/10, 0), limit).Truncate(time.Second)
}

// maxAge is the largest age corral reckons with: 2^31 seconds, the
// delta-seconds ceiling of RFC 9111 section 1.2.2. Capping keeps a Date in
// year 0 from overflowing the sums below into a negative, "fresh" age.
const maxAge = math.MaxInt32 * time.Second

// initialAge is corrected_initial_age (RFC 9111 section 4.2.3). Its
// apparent_age compares the arrival time with Date at Date's resolution,
// whole seconds (RFC 9110 section 5.6.7): a Date of 12:00:00 was written
// at some moment of that second, so an answer that arrives at 12:00:00.7
// is not 0.7 s old by it. To the nanosecond, every answer would look half
// a second older than it is on average, and a max-age=5 would last 4.5 s
// here, a tenth more upstream requests.
func initialAge(x Exchange) time.Duration {
	apparent := min(max(x.ResponseTime.Truncate(time.Second).Sub(date(x)), 0), maxAge)
	delay := min(max(x.ResponseTime.Sub(x.RequestTime), 0), maxAge)
	return max(apparent, ageValue(x.Header)+delay)
}

// date is the response's Date, or the time it arrived when Date is missing
// or invalid (RFC 9110 section 6.6.1).
func date(x Exchange) time.Time {
	if t, ok := httpDate(x.Header.Get("Date")); ok {
		return t
	}
	return x.ResponseTime
}

// httpDateLayouts are the three forms of HTTP-date a recipient must accept
// (RFC 9110 section 5.6.7): IMF-fixdate, and the obsolete RFC 850 and
// asctime forms.
var httpDateLayouts = [...]string{http.TimeFormat, time.RFC850, time.ANSIC}

// httpDate parses an HTTP-date. Unlike http.ParseTime it accepts only
// what is one: time.Parse lets a run of spaces stand for one and a
// one-digit hour for two, and an Expires like that is invalid, so already
// expired (RFC 9111 section 5.3), not fresh for years. Letter case is
// ignored: the moment "THU, 18 AUG 2050" names is not in doubt. So is a
// day name that does not match the date, as long as it is one: the date
// says which day it is, and the conformance suite's own asctime example
// ("Thu Aug  8 02:01:18 2050", a Monday) gets it wrong.
func httpDate(v string) (time.Time, bool) {
	upper := strings.ToUpper(v)
	for _, layout := range httpDateLayouts {
		t, err := time.Parse(layout, upper)
		if err != nil {
			continue
		}
		// Parse checked that the day name is one; compare the rest.
		sep := ", "
		if layout == time.ANSIC {
			sep = " "
		}
		_, want, _ := strings.Cut(t.Format(layout), sep)
		_, got, _ := strings.Cut(v, sep)
		if !strings.EqualFold(want, got) {
			continue
		}
		if zone, _ := t.Zone(); layout == time.RFC850 && zone != "GMT" {
			continue // time.Parse takes any zone abbreviation as UTC
		}
		return t.UTC(), true
	}
	return time.Time{}, false
}

// ageValue parses the Age header (RFC 9111 section 5.1); an invalid value
// is ignored, a huge one saturates. Age is a single value: of several
// field lines, or of a list on one line, the first counts.
func ageValue(h http.Header) time.Duration {
	v, _, _ := strings.Cut(h.Get("Age"), ",")
	v = strings.TrimSpace(v)
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return maxAge
		}
		return 0
	}
	return min(time.Duration(n)*time.Second, maxAge)
}

func hasVaryStar(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, f := range splitList(v) {
			if f == "*" {
				return true
			}
		}
	}
	return false
}

func seconds(directive int, fallback time.Duration) time.Duration {
	if directive == unset {
		return fallback
	}
	return time.Duration(directive) * time.Second
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// Age is the response's current age at now (RFC 9111 section 4.2.3).
func (d Decision) Age(now time.Time) time.Duration {
	return d.InitialAge + min(max(now.Sub(d.ResponseTime), 0), maxAge)
}

// TTL is the remaining freshness lifetime at now; negative once stale.
func (d Decision) TTL(now time.Time) time.Duration {
	return d.Lifetime - d.Age(now)
}

// RefreshAhead reports whether the response, fresh at now, should be
// refreshed in the background already, so that it is replaced before it
// expires and a request for it never waits for its refetch: in the last
// moments of its freshness, twice the time its fetch took (fetch), at
// least minAhead, and at most a tenth of the freshness it had on arrival,
// so that refreshing ahead makes at most a tenth more upstream requests,
// however little of its lifetime an answer brings. Not with
// stale-while-revalidate, which serves the stale response while it is
// refreshed: no request waits then anyway.
func (d Decision) RefreshAhead(now time.Time, fetch time.Duration) bool {
	if d.NoCache || d.StaleWhileRevalidate > 0 {
		return false
	}
	ahead := min(max(2*fetch, minAhead), (d.Lifetime-d.InitialAge)/10)
	ttl := d.TTL(now)
	return ttl > 0 && ttl <= ahead
}

// minAhead is the least time before it expires that a response may be
// refreshed ahead: an origin that answers in a millisecond has other
// delays, a scheduler's, a connection's, before the answer is in.
const minAhead = 10 * time.Millisecond

// State says what a stored response is good for at now.
func (d Decision) State(now time.Time) State { return d.stateAt(d.TTL(now)) }

// stateAt is State for a remaining lifetime of ttl.
func (d Decision) stateAt(ttl time.Duration) State {
	if d.NoCache {
		return Expired
	}
	stale := -ttl
	switch {
	case stale < 0:
		return Fresh
	case d.NoStale:
		return Expired
	case stale < d.StaleWhileRevalidate:
		return StaleWhileRevalidate
	case stale < d.StaleIfError:
		return StaleIfError
	}
	return Expired
}

// PassesKey reports whether the response says that its resource cannot be
// shared, so that its key should go upstream per client for a while
// (hit-for-miss): it is not shareable, and not merely because the request
// carried credentials, which speaks of that request alone.
func (d Decision) PassesKey() bool {
	return !d.Shareable && d.Reason != ReasonAuthorization
}

// UsableOnError reports whether the response may stand in for an origin
// error at now (RFC 5861 section 4).
func (d Decision) UsableOnError(now time.Time) bool {
	return !d.NoStale && !d.NoCache && -d.TTL(now) < d.StaleIfError
}

// Until is the moment after which the response is good for nothing,
// not even stale: a store may drop it then.
func (d Decision) Until() time.Time {
	return d.ResponseTime.Add(d.Lifetime - d.InitialAge + max(d.StaleWhileRevalidate, d.StaleIfError))
}
