package proxy

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
)

// local is a stored cache.Entry as this process uses it: the entry, which
// any process can decode, and beside it what this process derives from it
// and keeps about it. The in-memory store keeps a local beside its entry
// (cache.Memory.SetLocal), so that a hit finds both without computing or
// allocating anything.
type local struct {
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

	// credentialed says the body came from a request with
	// Authorization, or from an entry that did (a 304 keeps the body it
	// validates): it may answer this replica's clients when the origin
	// made it public, but never goes to the tier the fleet shares.
	credentialed bool

	// languages maps, for a Vary marker of a response that varies on
	// Accept-Language alone, each stored variant's Content-Language to
	// its variant key, so that a request whose first choice is that
	// language is answered by it (RFC 9111 section 4.1 lets a cache
	// select a response by its own knowledge of the field). Copied on
	// write; at most maxLanguages. Per process: another process's
	// marker starts without it.
	languages map[string]string

	// refreshAt is when, in Unix nanoseconds, a background refresh may
	// next start; set after a failed refresh so that a struggling origin
	// is not asked again on every stale hit.
	refreshAt atomic.Int64

	// failedAt is when, in Unix nanoseconds, the last validation of the
	// entry with the origin failed. For refreshBackoff after it, requests
	// that it may answer stale are answered by it without asking again.
	// It is apart from refreshAt, which may run for minutes: one client
	// can make a validation fail (with fields the origin rejects), and
	// must not pin a stale answer on everyone for longer than that.
	failedAt atomic.Int64

	// lastFailure is the last failed validation of the entry by a
	// request that carried one client's fields, which another client's
	// must confirm before everyone backs off (confirmedFailure).
	lastFailure atomic.Pointer[failure]

	// served remembers the field values of the last answer from the
	// entry. They change at most once a second, and a hot entry is
	// served thousands of times in one: the hit path formats them only
	// when they change.
	served atomic.Pointer[servedFields]

	// ref is what a body of largeBody or more is written from, nil for
	// a smaller one. Entries that share a body (a 304 refreshes an
	// entry with the body it had) share it.
	ref *body.Ref
}

// Kept and Dropped tell e's body ref whether the store holds e: the
// store's budget counts e's body just so long (see cache.Tracker).
func (e *local) Kept() {
	if e.ref != nil {
		e.ref.Owner().Kept(e.ref, e.Body)
	}
}

func (e *local) Dropped() {
	if e.ref != nil {
		e.ref.Owner().Dropped(e.ref)
	}
}

// withBody returns a copy of e, not yet stored, with body, written from
// ref: the entry a response judged by its header becomes once its body is
// in.
func (e *local) withBody(body []byte, ref *body.Ref) *local {
	c := *e.Entry
	c.ID, c.Body = cache.NewID(), body
	return &local{Entry: &c, Header: e.Header, Decision: e.Decision, rule: e.rule, credentialed: e.credentialed, ref: ref}
}

// decidedBy returns what Cache-Status says decided e's freshness: the
// targeted field the origin sent, or the prefix of the operator's rule.
func (e *local) decidedBy() (field freshness.Source, rule string) {
	if e.Decision.Source == freshness.FromRule {
		return freshness.FromCacheControl, e.rule
	}
	return e.Decision.Source, ""
}

// servedFields are the values serve sets on an answer from an entry.
type servedFields struct {
	st            cachestatus.Status // with ttl in whole seconds
	age           time.Duration
	status        string // st as a Cache-Status value
	ageText       string
	contentLength string
}

// fields returns the values for serving e with status st at now.
func (e *local) fields(st cachestatus.Status, now time.Time) *servedFields {
	st.TTL = st.TTL.Truncate(time.Second)
	age := e.Decision.Age(now).Truncate(time.Second)
	if f := e.served.Load(); f != nil && f.st == st && f.age == age {
		return f
	}
	f := &servedFields{
		st:            st,
		age:           age,
		status:        st.String(),
		ageText:       strconv.FormatInt(int64(age/time.Second), 10),
		contentLength: strconv.Itoa(len(e.Body)),
	}
	if st.Hit {
		e.served.Store(f) // misses are served once; hits again and again
	}
	return f
}

// servedHeader is h without the fields that are stored but never served.
func servedHeader(h http.Header) http.Header {
	if h["Age"] == nil && h[httprule.CorralOnly] == nil {
		return h
	}
	h = h.Clone()
	delete(h, "Age")
	delete(h, httprule.CorralOnly)
	return h
}

// recompute derives the local of e, stored under key, from e alone: for
// entries that come from a store that keeps no local beside them (any
// store but one made by New or NewMemory), or that another process wrote.
// A stored response was storable, so the request that fetched it, which
// e does not keep, could only have made it unstorable.
func (p *Proxy) recompute(key string, e *cache.Entry) *local {
	l := &local{Entry: e, Header: e.Header}
	if e.Kind != cache.Response {
		return l
	}
	// Its own: a store that keeps no local decodes a body of its own for
	// each read, which no budget but the buffers' counts.
	l.ref = p.unstored.NewRef(e.Body)
	x := freshness.Exchange{
		Method:       http.MethodGet,
		Status:       e.Status,
		Header:       e.Header,
		RequestTime:  e.RequestTime,
		ResponseTime: e.ResponseTime,
	}
	rule, ruled := p.ruleFor(key)
	if ruled {
		x.Rule = rule.Directives
	}
	l.Decision = p.policy.Evaluate(x)
	if l.Decision.Source == freshness.FromRule {
		l.rule = rule.Prefix
	}
	l.Header = servedHeader(e.Header)
	return l
}

// localStore is implemented by stores that keep a local beside each entry,
// as cache.Memory does: the hit path reads through it.
type localStore interface {
	GetLocal(key string) (*cache.Entry, any)
	SetLocal(ctx context.Context, key string, e *cache.Entry, local any, ttl time.Duration, cond cache.Cond) error
}

// NewMemory returns an in-memory store of maxBytes for Config.Store, that
// keeps beside each entry what the proxy derives from it, as the store New
// makes when Config.Store is nil does. Its purge records hold for the
// default UpstreamTimeout; past it, a longer fetch's answer is not stored.
func NewMemory(maxBytes int64) *cache.Memory {
	return cache.NewMemory(cache.Config{MaxBytes: maxBytes, Keep: defaultUpstreamTimeout})
}

// get returns what the store holds under key, or nil: when nothing is
// stored, and when the store fails, which is logged and counts as a miss.
func (p *Proxy) get(ctx context.Context, key string) *local {
	if p.locals != nil {
		e, l := p.locals.GetLocal(key)
		if e == nil {
			return nil
		}
		if l, ok := l.(*local); ok && l.Entry == e {
			return l
		}
		return p.recompute(key, e)
	}
	e, err := p.store.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) && ctx.Err() == nil { // a client that left is no news
			p.log.Warn("cache read failed; treated as a miss", "key", key, "err", err)
		}
		return nil
	}
	return p.recompute(key, e)
}

// set stores e under key for ttl if cond holds, and reports whether it
// did. A failure of the store is logged and counts as not stored.
func (p *Proxy) set(ctx context.Context, key string, e *local, ttl time.Duration, cond cache.Cond) bool {
	return p.setErr(ctx, key, e, ttl, cond) == nil
}

// setErr is set, reporting why not: cache.ErrPurged, cache.ErrConflict, or
// a failure of the store, which it logs.
func (p *Proxy) setErr(ctx context.Context, key string, e *local, ttl time.Duration, cond cache.Cond) error {
	var err error
	if ls, ok := p.store.(localStore); ok {
		// What the proxy computed from the exchange itself (the
		// request and the rule for its key included) stays beside
		// the entry, for the hit path.
		err = ls.SetLocal(ctx, key, e.Entry, e, ttl, cond)
	} else {
		err = p.store.Set(ctx, key, e.Entry, ttl, cond)
	}
	if err != nil && !errors.Is(err, cache.ErrPurged) && !errors.Is(err, cache.ErrConflict) {
		p.log.Warn("cache write failed; not stored", "key", key, "err", err)
	}
	return err
}

// failure is a failed validation: by which fields (httprule.Fingerprint), when.
type failure struct {
	fp uint64
	at int64 // Unix nanoseconds
}

// failedRecently reports whether a validation of l failed less than
// within before now.
func (l *local) failedRecently(now time.Time, within time.Duration) bool {
	at := l.failedAt.Load()
	return at != 0 && now.UnixNano()-at < int64(within)
}
