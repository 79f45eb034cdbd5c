package stored

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/internal/body"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/target"
	"corral/proxy/rules"
)

// Config configures a Store.
type Config struct {
	// Store holds the entries. A store that keeps a local beside each
	// entry (cache.Memory) keeps the Entry there, for the hit path;
	// behind any other, each read recomputes it.
	Store cache.Store

	// Rules are the operator's freshness rules, as Config.Rules of the
	// proxy gives them.
	Rules []rules.Rule

	// Policy holds the operator's freshness defaults.
	Policy freshness.Policy

	// PassTTL is how long a pass mark lasts.
	PassTTL time.Duration

	// Unstored keeps the large bodies clients are written that the store
	// does not hold (see body.Ref).
	Unstored *body.Unstored

	Now func() time.Time
	Log *slog.Logger
}

// Store is the proxy's store: see the package's doc.
type Store struct {
	store         cache.Store
	locals        localStore // store, when it keeps a local beside each entry
	rules         []rules.Rule
	ruleDecisions map[string]*atomic.Int64
	policy        freshness.Policy
	passTTL       time.Duration
	unstored      *body.Unstored
	now           func() time.Time
	log           *slog.Logger

	evictionsWarned atomic.Int64 // evictions counted by the last warning
	evictionWarnAt  atomic.Int64 // Unix nanoseconds of that warning
}

// New returns the Store of cfg, or why its rules are wrong.
func New(cfg Config) (*Store, error) {
	s := &Store{
		store:    cfg.Store,
		policy:   cfg.Policy,
		passTTL:  cfg.PassTTL,
		unstored: cfg.Unstored,
		now:      cfg.Now,
		log:      cfg.Log,
	}
	s.locals, _ = s.store.(localStore)
	if err := s.setRules(cfg.Rules); err != nil {
		return nil, err
	}
	return s, nil
}

// Sharer writes e, stored under key for ttl and fresh until fresh, to the
// tier the fleet shares, and reports whether it landed: see Put.
type Sharer func(key string, e *Entry, ttl time.Duration, fresh, since time.Time) bool

// Purge drops what is stored for uri, or with prefix for every URI that
// starts with it, at at: see cache.Store. A Vary marker takes its variants
// out of reach with it: a later marker starts a new generation of variant
// keys.
func (s *Store) Purge(uri string, prefix bool, at time.Time) (int, error) {
	return s.store.Purge(context.Background(), uri, prefix, at)
}

// Sizer is the store's cache.Sizer, or nil when it has none.
func (s *Store) Sizer() cache.Sizer {
	size, _ := s.store.(cache.Sizer)
	return size
}

// RuleDecisions counts, by the prefix of each rule, the upstream
// responses whose freshness the rule decided. Its keys never change.
func (s *Store) RuleDecisions() map[string]*atomic.Int64 { return s.ruleDecisions }

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
func (s *Store) Recompute(key string, e *cache.Entry) *Entry {
	l := &Entry{Entry: e, Header: e.Header}
	if e.Kind != cache.Response {
		return l
	}
	// Its own: a store that keeps no local decodes a body of its own for
	// each read, which no budget but the buffers' counts.
	l.ref = s.unstored.NewRef(e.Body)
	l.Decision, l.rule = s.evaluate(key, freshness.Exchange{
		Method:       http.MethodGet,
		Status:       e.Status,
		Header:       e.Header,
		RequestTime:  e.RequestTime,
		ResponseTime: e.ResponseTime,
	})
	l.Header = servedHeader(e.Header)
	return l
}

// evaluate judges x, a response for key, by the operator's rule for key's
// path, when there is one, and returns the rule's prefix when it decided:
// the one judgment of a response, whether it just arrived (NewEntry) or
// comes from a store that keeps no Entry beside it (Recompute).
func (s *Store) evaluate(key string, x freshness.Exchange) (freshness.Decision, string) {
	rule, ruled := s.ruleFor(key)
	if ruled {
		x.Rule = rule.Directives
	}
	d := s.policy.Evaluate(x)
	if d.Source != freshness.FromRule {
		return d, ""
	}
	return d, rule.Prefix
}

// localStore is implemented by stores that keep a local beside each entry,
// as cache.Memory does: the hit path reads through it.
type localStore interface {
	GetLocal(key string) (*cache.Entry, any)
	SetLocal(ctx context.Context, key string, e *cache.Entry, local any, ttl time.Duration, cond cache.Cond) error
}

// get returns what the store holds under key, or nil: when nothing is
// stored, and when the store fails, which is logged and counts as a miss.
func (s *Store) Get(ctx context.Context, key string) *Entry {
	if s.locals != nil {
		e, l := s.locals.GetLocal(key)
		if e == nil {
			return nil
		}
		if l, ok := l.(*Entry); ok && l.Entry == e {
			return l
		}
		return s.Recompute(key, e)
	}
	e, err := s.store.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, cache.ErrNotFound) && ctx.Err() == nil { // a client that left is no news
			s.log.Warn("cache read failed; treated as a miss", "key", key, "err", err)
		}
		return nil
	}
	return s.Recompute(key, e)
}

// setErr is set, reporting why not: cache.ErrPurged, cache.ErrConflict, or
// a failure of the store, which it logs.
func (s *Store) Set(ctx context.Context, key string, e *Entry, ttl time.Duration, cond cache.Cond) error {
	var err error
	if ls, ok := s.store.(localStore); ok {
		// What the proxy computed from the exchange itself (the
		// request and the rule for its key included) stays beside
		// the entry, for the hit path.
		err = ls.SetLocal(ctx, key, e.Entry, e, ttl, cond)
	} else {
		err = s.store.Set(ctx, key, e.Entry, ttl, cond)
	}
	if err != nil && !errors.Is(err, cache.ErrPurged) && !errors.Is(err, cache.ErrConflict) {
		s.log.Warn("cache write failed; not stored", "key", key, "err", err)
	}
	return err
}

// newEntryFor is newEntry for a response to method.
func (s *Store) NewEntry(method, key string, reqHeader http.Header, status int, header http.Header, body []byte, reqTime, respTime time.Time) (e *Entry, own http.Header) {
	own = header.Clone()
	httprule.RemoveHopHeaders(own)
	d, rule := s.evaluate(key, freshness.Exchange{
		Method:        method,
		RequestHeader: reqHeader,
		Status:        status,
		Header:        own,
		RequestTime:   reqTime,
		ResponseTime:  respTime,
	})
	own.Del("Content-Length") // set from the body when served
	if own.Get("Date") == "" {
		own.Set("Date", respTime.UTC().Format(http.TimeFormat))
	}
	h := own // the stored header
	if len(d.StripFields) > 0 || own["Age"] != nil || own[httprule.CorralOnly] != nil {
		h = own.Clone()
		for _, f := range d.StripFields {
			h.Del(f)
		}
	}
	delete(own, httprule.CorralOnly)
	delete(own, "Age")
	e = &Entry{
		Entry: &cache.Entry{
			Kind:         cache.Response,
			ID:           cache.NewID(),
			RequestTime:  reqTime,
			ResponseTime: respTime,
			Status:       status,
			Header:       h,
			Body:         body,
			Vary:         httprule.VaryNames(h),
		},
		Header:       servedHeader(h),
		Decision:     d,
		rule:         rule,
		Credentialed: httprule.Credentialed(reqHeader),
		ref:          s.unstored.NewRef(body),
	}
	if rule != "" {
		// Counted when the rule decides, once per upstream response,
		// never per hit.
		s.ruleDecisions[rule].Add(1)
	}
	if len(e.Vary) > 0 {
		e.VaryKey = httprule.SentVaryKey(e.Vary, reqHeader)
	}
	return e, own
}

// revalidated merges a 304's header into the stale entry it validated
// (RFC 9111 section 4.3.4) and returns the refreshed entry. The stale
// entry's Corral-Cache-Control, never served, counts as stored with it; its
// Age, of the exchange that fetched it, does not.
func (s *Store) Revalidated(key string, reqHeader http.Header, stale *Entry, header http.Header, reqTime, respTime time.Time) (*Entry, http.Header) {
	update := header.Clone()
	httprule.RemoveHopHeaders(update)
	for _, f := range httprule.NotUpdatedBy304 {
		update.Del(f)
	}
	merged := stale.Entry.Header.Clone()
	delete(merged, "Age")
	for k, v := range update {
		merged[k] = v
	}
	e, own := s.NewEntry(http.MethodGet, key, reqHeader, stale.Status, merged, stale.Body, reqTime, respTime)
	e.Credentialed = e.Credentialed || stale.Credentialed
	if stale.ref != nil && stale.ref.Held() {
		// The same body: the store holds it once for both, and while
		// the one replaces the other, it is never seen to let go of it.
		e.ref = stale.ref
	}
	return e, own
}

// put stores e, fetched by a request sent at reqTime, under key (or under
// its variant key, with a Vary marker at key) when its decision allows and
// key was not purged since, and reports whether it did. An e that
// revalidates replaces is stored only while replaces still is: a 304 must
// not bring back a body that was purged while it was asked for.
//
// Holding lease, put writes what it stored to the tier the fleet *body.Shares
// too, and reports in shared whether that landed.
func (s *Store) Put(ctx context.Context, key string, e *Entry, reqTime time.Time, replaces *Entry, share Sharer) (stored, shared bool) {
	if !e.Decision.Storable {
		return false, false
	}
	now := s.now()
	ttl := e.Decision.Until().Sub(now)
	if e.Status >= 200 && e.Status < 300 && ttl > 0 || e.Entry.Header.Get("ETag") != "" || e.Entry.Header.Get("Last-Modified") != "" {
		// Past its stale windows the entry still saves a body transfer
		// when the origin answers a conditional request with 304; and a
		// good answer that had a lifetime, never served then, keeps an
		// error that one client's field provokes from taking its place
		// as if the URL had nothing stored (fetch's personal, issue 23).
		ttl += validatorGrace
	}
	if ttl <= 0 {
		return false, false
	}
	defer s.warnEvictions(now)
	cond := cache.Cond{Since: reqTime}
	if replaces != nil {
		cond.IfID = replaces.ID
	}
	fresh := now.Add(max(e.Decision.TTL(now), 0))
	if len(e.Vary) == 0 {
		if s.Set(ctx, key, e, ttl, cond) != nil {
			return false, false
		}
		return true, share != nil && share(key, e, ttl, fresh, reqTime)
	}
	// Variants live under keys of their marker's generation: a marker
	// that is dropped (purged, replaced by a pass mark, evicted) takes
	// its variants out of reach with it. A marker for the same Vary keeps
	// its generation and lives as long as its longest-lived variant.
	until := now.Add(ttl)
	// The marker's request time is its variant's: a purge at or after
	// it forbids the marker as it does the variant, wherever a replica
	// reads it (promote, and Redis's lookup).
	marker := &Entry{Entry: &cache.Entry{Kind: cache.VaryMarker, ID: cache.NewID(), RequestTime: reqTime, Vary: e.Vary, Gen: cache.NewID()}}
	if old := s.Get(ctx, key); old != nil && old.Kind == cache.VaryMarker && slices.Equal(old.Vary, e.Vary) {
		marker.Gen, marker.languages = old.Gen, old.languages
		if old.Until.After(until) {
			until = old.Until
		}
	}
	marker.Until = until
	marker.languages = withLanguage(marker.languages, contentLanguage(e), e.VaryKey)
	// The variant goes first: if its condition fails, the marker is left
	// as it was. A purge between the two writes refuses the marker, and
	// the variant, under a generation no marker leads to, is out of reach.
	vk := cache.VariantKey(key, marker.Gen, e.VaryKey)
	if s.Set(ctx, vk, e, ttl, cond) != nil || s.Set(ctx, key, marker, until.Sub(now), cache.Cond{Since: reqTime}) != nil {
		return false, false
	}
	// The same order in the shared tier: a replica that finds the
	// marker finds the variant.
	shared = share != nil && share(vk, e, ttl, fresh, reqTime) &&
		share != nil && share(key, marker, until.Sub(now), until, reqTime)
	return true, shared
}

// warnEvictions logs, at most once a minute, that the memory budget is
// pushing entries out: a sign that -cache-bytes is too small for the
// working set.
func (s *Store) warnEvictions(now time.Time) {
	size, ok := s.store.(cache.Sizer)
	if !ok {
		return
	}
	n, seen := size.Evictions(), s.evictionsWarned.Load()
	last := s.evictionWarnAt.Load()
	if n == seen || now.UnixNano()-last < int64(time.Minute) || !s.evictionWarnAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	s.evictionsWarned.Store(n)
	s.log.Warn("cache full: evicting entries to stay within -cache-bytes", "evicted", n-seen, "stored_bytes", size.Bytes())
}

// validatorGrace is how long an entry with validators, or a good answer
// (2xx), is kept past the last moment it could be served, for
// revalidation.
const validatorGrace = time.Minute

// lookup returns what the store holds for a request to key with header h,
// following a Vary marker to the variant, the key it was found under, and
// the names of the fields the URI varies on (nil when it is not known to).
func (s *Store) Lookup(ctx context.Context, key string, h http.Header) (e *Entry, vkey string, vary []string) {
	e = s.Get(ctx, key)
	if e == nil {
		return nil, key, nil
	}
	if e.Kind != cache.VaryMarker {
		return e, key, e.Vary
	}
	vk := cache.VariantKey(key, e.Gen, httprule.VaryKey(e.Vary, h))
	v := s.Get(ctx, vk)
	if v == nil && e.languages != nil {
		lang := httprule.FirstLanguage(httprule.SentValues(h, "Accept-Language"))
		if other, ok := e.languages[lang]; ok {
			// Another request's answer is in the language this
			// request prefers above all others: checked again here,
			// since that variant may have been stored anew since.
			ovk := cache.VariantKey(key, e.Gen, other)
			if v := s.Get(ctx, ovk); v != nil && contentLanguage(v) == lang {
				return v, ovk, e.Vary
			}
		}
	}
	return v, vk, e.Vary
}

// withLanguage returns languages, copied, with lang mapped to varyKey and
// no other language mapped to it; the same map when nothing changes.
func withLanguage(languages map[string]string, lang, varyKey string) map[string]string {
	stale := false
	for l, vk := range languages {
		stale = stale || (vk == varyKey && l != lang)
	}
	if !stale && (lang == "" || languages[lang] == varyKey || len(languages) >= maxLanguages) {
		return languages
	}
	m := make(map[string]string, len(languages)+1)
	for l, vk := range languages {
		if vk != varyKey {
			m[l] = vk
		}
	}
	if lang != "" && len(m) < maxLanguages {
		m[lang] = varyKey
	}
	return m
}

// maxLanguages bounds the languages a Vary marker remembers.
const maxLanguages = 16

// contentLanguage is the language of e, a response that varies on
// Accept-Language alone, when it names exactly one; "" otherwise.
func contentLanguage(e *Entry) string {
	if len(e.Vary) != 1 || e.Vary[0] != "Accept-Language" {
		return ""
	}
	vs := e.Header.Values("Content-Language")
	if len(vs) != 1 || strings.Contains(vs[0], ",") {
		return ""
	}
	return strings.ToLower(textproto.TrimString(vs[0]))
}

// ruleFor returns the operator's rule for the path of key (a URI key, or a
// variant key, which starts with its URI's), matched in the form rulePath
// gives: every caller, the response's arrival and a recomputation of a
// stored entry alike, must find the same rule.
func (s *Store) ruleFor(key string) (rules.Rule, bool) {
	if len(s.rules) == 0 {
		return rules.Rule{}, false
	}
	base, _, _ := strings.Cut(key, "\x00")
	path, _, _ := strings.Cut(base, "?")
	return rules.Match(s.rules, target.RulePath(path))
}

// setRules checks rs as rules.Parse would, brings their prefixes to the
// form rulePath gives request paths (rulePrefix), and makes a decision
// counter for each.
func (s *Store) setRules(rs []rules.Rule) error {
	s.ruleDecisions = make(map[string]*atomic.Int64, len(rs))
	for _, given := range rs {
		r, err := rules.Parse(given.String())
		if err == nil {
			r.Prefix, err = target.Normalize(r.Prefix)
			r.Prefix = target.RulePrefix(r.Prefix)
		}
		if err == nil && s.ruleDecisions[r.Prefix] != nil {
			err = fmt.Errorf("a rule for prefix %s is given already", r.Prefix)
		}
		if err != nil {
			return fmt.Errorf("rule %q: %w", given.String(), err)
		}
		s.rules = append(s.rules, r)
		s.ruleDecisions[r.Prefix] = new(atomic.Int64)
	}
	return nil
}

// markPass remembers, for PassTTL, that key's responses cannot be shared.
// Callers give the variant key when the request was for a known variant
// (lookup returns the URL's own key otherwise), so that one variant's
// answer (too large, or private) neither passes every other variant of the
// URL nor drops their stored responses with the Vary marker.
func (s *Store) MarkPass(ctx context.Context, key, reason string) {
	e := &cache.Entry{Kind: cache.PassMark, ID: cache.NewID(), Reason: reason}
	s.Set(ctx, key, &Entry{Entry: e}, s.passTTL, cache.Cond{}) //nolint:errcheck // logged; the mark is a hint
	s.log.Debug("response not shareable; passing key", "key", key, "reason", reason)
}
