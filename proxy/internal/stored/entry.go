// Package stored is the store as the proxy reads and writes it: each
// cache.Entry with what this process derives from it (its freshness
// Decision under the operator's rules, the field values served from it,
// its back-offs), found through Vary markers, judged by one Evaluate, and
// put under the conditions that keep purges and validations honest.
package stored

import (
	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Entry is a stored cache.Entry as this process uses it: the entry, which
// any process can decode, and beside it what this process derives from it
// and keeps about it. The in-memory store keeps a local beside its entry
// (cache.Memory.SetLocal), so that a hit finds both without computing or
// allocating anything.
type Entry struct {
	*cache.Entry

	// Header is what is served from the entry: its stored header
	// without Age, which serve computes, and without the
	// Corral-Cache-Control that is for corral alone. It shadows
	// Entry.Header, which keeps both for recomputing the Decision.
	// Never modified: serving copies it.
	Header http.Header

	// Decision is what freshness said of the response.
	Decision freshness.Decision

	// rule is the prefix of the operator's rule that decided, "" when
	// none did.
	rule string

	// Credentialed says the body came from a request with
	// Authorization, or from an entry that did (a 304 keeps the body it
	// validates): it may answer this replica's clients when the origin
	// made it public, but never goes to the tier the fleet shares.
	Credentialed bool

	// FromFields says the response answered a request that carried one
	// client's fields (beyond those it varies on), which may have
	// provoked it: an error one client's field provoked is stored like
	// any other, but the next must not keep it so (see fetch.Result.Confirm).
	// Per process: an entry read from the shared tier says false.
	FromFields bool

	// languages maps, for a Vary marker of a response that varies on
	// Accept-Language alone, each stored variant's Content-Language to
	// its variant key, so that a request whose first choice is that
	// language is answered by it (RFC 9111 section 4.1 lets a cache
	// select a response by its own knowledge of the field). Copied on
	// write; at most maxLanguages. Per process: another process's
	// marker starts without it.
	languages map[string]string

	// RefreshAt is when, in Unix nanoseconds, a background refresh may
	// next start; set after a failed refresh so that a struggling origin
	// is not asked again on every stale hit.
	RefreshAt atomic.Int64

	// FailedAt is when, in Unix nanoseconds, the last validation of the
	// entry with the origin failed. For refreshBackoff after it, requests
	// that it may answer stale are answered by it without asking again.
	// It is apart from RefreshAt, which may run for minutes: one client
	// can make a validation fail (with fields the origin rejects), and
	// must not pin a stale answer on everyone for longer than that.
	FailedAt atomic.Int64

	// Refused says a background refresh of the entry, which carries
	// nothing of one client's, was answered with a status about the
	// request (httprule.AboutTheRequest: an anonymous tier spent, a
	// credential required): the origin refuses corral's own requests
	// now, and may well answer a client that sends its own key.
	Refused atomic.Bool

	// LastFailure is the last failed validation of the entry by a
	// request that carried one client's fields, which another client's
	// must confirm before everyone backs off (confirmedFailure).
	LastFailure atomic.Pointer[Failure]

	// aheadTaken says the entry's one refresh ahead of its expiry
	// started already (RefreshAhead).
	aheadTaken atomic.Bool

	// served remembers the field values of the last answer from the
	// entry. They change at most once a second, and a hot entry is
	// served thousands of times in one: the hit path formats them only
	// when they change.
	served atomic.Pointer[Served]

	// ref is what a body of largeBody or more is written from, nil for
	// a smaller one. Entries that share a body (a 304 refreshes an
	// entry with the body it had) share it.
	ref *body.Ref
}

// RefreshAhead reports whether a request for e at now, a fresh hit, should
// start a background refresh of e ahead of its expiry
// (freshness.Decision.RefreshAhead: in its last moments, twice the time
// its fetch took), and does so once per entry: an answer that comes back
// no fresher than e (a fleet's copy of it, say) starts no other.
func (e *Entry) RefreshAhead(now time.Time) bool {
	return e.Kind == cache.Response && e.Decision.RefreshAhead(now, e.ResponseTime.Sub(e.RequestTime)) && e.aheadTaken.CompareAndSwap(false, true)
}

// Ref is what a body of body.LargeBody or more is written from; nil for a
// smaller one.
func (e *Entry) Ref() *body.Ref { return e.ref }

// Kept and Dropped tell e's body ref whether the store holds e: the
// store's budget counts e's body just so long (see cache.Tracker).
func (e *Entry) Kept() {
	if e.ref != nil {
		e.ref.Owner().Kept(e.ref, e.Body)
	}
}

func (e *Entry) Dropped() {
	if e.ref != nil {
		e.ref.Owner().Dropped(e.ref)
	}
}

// withBody returns a copy of e, not yet stored, with body, written from
// ref: the entry a response judged by its header becomes once its body is
// in.
func (e *Entry) WithBody(body []byte, ref *body.Ref) *Entry {
	c := *e.Entry
	c.ID, c.Body = cache.NewID(), body
	return &Entry{Entry: &c, Header: e.Header, Decision: e.Decision, rule: e.rule, Credentialed: e.Credentialed, ref: ref}
}

// decidedBy returns what Cache-Status says decided e's freshness: the
// targeted field the origin sent, or the prefix of the operator's rule.
func (e *Entry) DecidedBy() (field freshness.Source, rule string) {
	if e.Decision.Source == freshness.FromRule {
		return freshness.FromCacheControl, e.rule
	}
	return e.Decision.Source, ""
}

// Served are the values set on an answer from an entry: its Cache-Status,
// Age and Content-Length, formatted.
type Served struct {
	St            cachestatus.Status // with ttl in whole seconds
	Age           time.Duration
	Status        string // st as a Cache-Status value
	AgeText       string
	ContentLength string
}

// fields returns the values for serving e with status st at now.
func (e *Entry) Fields(st cachestatus.Status, now time.Time) *Served {
	st.TTL = st.TTL.Truncate(time.Second)
	age := e.Decision.Age(now).Truncate(time.Second)
	if f := e.served.Load(); f != nil && f.St == st && f.Age == age {
		return f
	}
	f := &Served{
		St:            st,
		Age:           age,
		Status:        st.String(),
		AgeText:       strconv.FormatInt(int64(age/time.Second), 10),
		ContentLength: strconv.Itoa(len(e.Body)),
	}
	if st.Hit {
		e.served.Store(f) // misses are served once; hits again and again
	}
	return f
}

// Failure is a failed validation: by which fields (httprule.Fingerprint), when.
type Failure struct {
	FP uint64
	At int64 // Unix nanoseconds
}

// failedRecently reports whether a validation of l failed less than
// within before now.
func (l *Entry) FailedRecently(now time.Time, within time.Duration) bool {
	at := l.FailedAt.Load()
	return at != 0 && now.UnixNano()-at < int64(within)
}
