package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"

	"corral/freshness"
	"corral/proxy/rules"
)

// errTooLarge ends a fetch whose body would not fit in MaxObjectBytes.
var errTooLarge = errors.New("response body larger than the object limit")

// errInterim ends a fetch that the origin answered with a 1xx status as if
// it were final.
var errInterim = errors.New("upstream answered with an interim status as final")

// fetched is the outcome of one upstream exchange, shared by every client
// that waited on it.
type fetched struct {
	entry  *Entry
	status int  // what the origin answered: 304 for a revalidation, 0 when no call was needed
	stored bool // entry went into the store

	// again says, with no entry, that the URI turned out to vary while
	// this flight waited to start: its waiters look up again and join
	// their variant's flight instead.
	again bool

	// own is entry's header before the fields named by a qualified private
	// or no-cache were removed: for the client whose request it answers.
	own http.Header
}

// fetch asks the origin for the resource of in, revalidating stale when it
// has validators, and stores the answer when it may. It buffers at most
// MaxObjectBytes of body, and only what the buffer budget lets it.
func (p *Proxy) fetch(ctx context.Context, in *http.Request, key, vkey string, stale *Entry) (*fetched, error) {
	// Two requests can both miss, then run their flights one after the
	// other: the second flight starts just after the first one stored its
	// answer. Look again before calling the origin.
	cur, vk := p.lookup(key, in.Header)
	if cur != nil && cur != stale && !cur.Pass && cur.Decision.State(p.now()) == freshness.Fresh {
		return &fetched{entry: cur, own: cur.Header}, nil
	}
	if vkey == key && vk != key {
		// This flight is for the bare URI, but a response stored since
		// says the URI varies: the variant's own flight may be running
		// now, and a second upstream request for it must not.
		return &fetched{again: true}, nil
	}

	// The guard notes when the request leaves, after any wait for the
	// upstream caps: that is the request_time of RFC 9111 section 4.2.3,
	// and a wait in the queue must not age the answer.
	sent := new(time.Time)
	out, err := http.NewRequestWithContext(context.WithValue(ctx, sentKey{}, sent), http.MethodGet, p.upstreamURL(key).String(), nil)
	if err != nil {
		return nil, err
	}
	// The variant is keyed on what goes upstream, not on what the client
	// sent: a field it names in Connection, say, never reaches the origin.
	reqHeader := sharedFetchHeader(in.Header)
	out.Header = reqHeader.Clone()
	p.forward(out.Header, in, true)
	if stale != nil {
		if v := stale.Header.Get("ETag"); v != "" {
			out.Header.Set("If-None-Match", v)
		}
		if v := stale.Header.Get("Last-Modified"); v != "" {
			out.Header.Set("If-Modified-Since", v)
		}
	}

	*sent = p.now() // the guard moves it on if the request waits
	resp, err := p.guard.RoundTrip(out)
	var busy *busyError
	if errors.As(err, &busy) {
		return nil, err // never sent: not an upstream exchange
	}
	if err != nil {
		p.stats.upstream(0, err)
		return nil, err
	}
	defer resp.Body.Close()
	respTime := p.now()
	if resp.StatusCode < 200 {
		// A 101 to a request that asked for no upgrade, or any other
		// interim status as the final answer (RFC 9110 section 15.2):
		// its body is the bare connection, which no timeout bounds.
		// Closing it ends the exchange now.
		p.stats.upstream(0, errInterim)
		return nil, fmt.Errorf("%w: %d", errInterim, resp.StatusCode)
	}

	if resp.StatusCode == http.StatusNotModified && stale != nil {
		p.stats.upstream(resp.StatusCode, nil)
		e, own := p.revalidated(key, reqHeader, stale, resp.Header, *sent, respTime)
		return &fetched{entry: e, own: own, status: resp.StatusCode, stored: p.put(key, e, *sent, stale)}, nil
	}

	// The body is held against the buffer budget until it is stored
	// (and counted by the store) or dropped.
	bb := bodyBuffer{budget: p.buffers, limit: p.maxObject}
	defer bb.release()
	err = bb.readFrom(resp.Body, resp.ContentLength)
	if errors.Is(err, errTooLarge) || errors.Is(err, errBuffersFull) {
		p.stats.upstream(resp.StatusCode, nil)
		return nil, err
	}
	p.stats.upstream(resp.StatusCode, err)
	if err != nil {
		return nil, fmt.Errorf("reading upstream body: %w", err)
	}
	e, own := p.newEntry(key, reqHeader, resp.StatusCode, resp.Header, bb.trimmed(), *sent, respTime)
	if isServerError(resp.StatusCode) && stale != nil && stale.Decision.UsableOnError(respTime) {
		// The stored response stands in for the error (RFC 5861
		// section 4), which must not replace it, however cacheable.
		return &fetched{entry: e, own: own, status: resp.StatusCode}, nil
	}
	return &fetched{entry: e, own: own, status: resp.StatusCode, stored: p.put(key, e, *sent, nil)}, nil
}

// newEntry builds the Entry for a response to a request for key sent
// upstream with reqHeader, judged by the operator's rule for key's path if
// there is one. own is the header as the origin sent it, for the client
// that asked; the Entry's header loses the fields that may not be shared.
// Neither holds Corral-Cache-Control, which is for corral alone.
func (p *Proxy) newEntry(key string, reqHeader http.Header, status int, header http.Header, body []byte, reqTime, respTime time.Time) (e *Entry, own http.Header) {
	return p.newEntryFor(http.MethodGet, key, reqHeader, status, header, body, reqTime, respTime)
}

// newEntryFor is newEntry for a response to method.
func (p *Proxy) newEntryFor(method, key string, reqHeader http.Header, status int, header http.Header, body []byte, reqTime, respTime time.Time) (e *Entry, own http.Header) {
	own = header.Clone()
	removeHopHeaders(own)
	x := freshness.Exchange{
		Method:        method,
		RequestHeader: reqHeader,
		Status:        status,
		Header:        own,
		RequestTime:   reqTime,
		ResponseTime:  respTime,
	}
	path, _, _ := strings.Cut(key, "?")
	rule, ruled := rules.Match(p.rules, rulePath(path))
	if ruled {
		x.Rule = rule.Directives
	}
	d := p.policy.Evaluate(x)
	corralCC := own[corralOnly]
	delete(own, corralOnly)
	own.Del("Content-Length") // set from the body when served
	own.Del("Age")            // computed when served
	if own.Get("Date") == "" {
		own.Set("Date", respTime.UTC().Format(http.TimeFormat))
	}
	h := own
	if len(d.StripFields) > 0 {
		h = own.Clone()
		for _, f := range d.StripFields {
			h.Del(f)
		}
	}
	e = &Entry{Status: status, Header: h, Body: body, Decision: d, Vary: varyNames(h)}
	if corralCC != nil || d.Source == freshness.FromRule {
		e.forCorral = &forCorral{field: corralCC}
	}
	if d.Source == freshness.FromRule {
		// Counted when the rule decides, once per upstream response,
		// never per hit.
		e.forCorral.rule = rule.Prefix
		p.stats.RuleDecisions[rule.Prefix].Add(1)
	}
	if len(e.Vary) > 0 {
		e.VaryKey = sentVaryKey(e.Vary, reqHeader)
	}
	return e, own
}

// revalidated merges a 304's header into the stale entry it validated
// (RFC 9111 section 4.3.4) and returns the refreshed Entry. The stale
// entry's Corral-Cache-Control, kept out of its header, counts as stored
// with it.
func (p *Proxy) revalidated(key string, reqHeader http.Header, stale *Entry, header http.Header, reqTime, respTime time.Time) (*Entry, http.Header) {
	update := header.Clone()
	removeHopHeaders(update)
	for _, f := range notUpdatedBy304 {
		update.Del(f)
	}
	merged := stale.Header.Clone()
	if stale.forCorral != nil && stale.forCorral.field != nil {
		merged[corralOnly] = stale.forCorral.field
	}
	for k, v := range update {
		merged[k] = v
	}
	return p.newEntry(key, reqHeader, stale.Status, merged, stale.Body, reqTime, respTime)
}

// put stores e, fetched by a request sent at reqTime, under key (or under
// its variant key, with a Vary marker at key) when its decision allows and
// key was not invalidated since, and reports whether it did. An e that
// revalidates replaces is stored only while replaces still is: a 304 must
// not bring back a body that was purged while it was asked for.
func (p *Proxy) put(key string, e *Entry, reqTime time.Time, replaces *Entry) bool {
	if !e.Decision.Storable {
		return false
	}
	now := p.now()
	ttl := e.Decision.Until().Sub(now)
	if e.Header.Get("ETag") != "" || e.Header.Get("Last-Modified") != "" {
		// Past its stale windows the entry still saves a body transfer
		// when the origin answers a conditional request with 304.
		ttl += validatorGrace
	}
	if ttl <= 0 {
		return false
	}
	defer p.warnEvictions(now)
	return p.tombstones.store(key, reqTime, func() bool {
		if len(e.Vary) == 0 {
			if replaces != nil {
				if cur, _ := p.store.Get(key); cur != replaces {
					return false
				}
			}
			p.store.Set(key, e, ttl)
			return true
		}
		// Variants live under keys of their marker's generation: a
		// marker that is dropped (purged, replaced by a pass mark,
		// evicted) takes its variants out of reach with it. A marker
		// for the same Vary keeps its generation and lives as long as
		// its longest-lived variant.
		until := now.Add(ttl)
		marker := &Entry{Vary: e.Vary, varyGen: p.varyGens.Add(1)}
		if old, ok := p.store.Get(key); ok && old.Status == 0 && !old.Pass && slices.Equal(old.Vary, e.Vary) {
			marker.varyGen, marker.languages = old.varyGen, old.languages
			if old.markerUntil.After(until) {
				until = old.markerUntil
			}
		}
		marker.markerUntil = until
		vk := variantKey(key, marker.varyGen, e.VaryKey)
		if replaces != nil {
			if cur, _ := p.store.Get(vk); cur != replaces {
				return false
			}
		}
		marker.languages = withLanguage(marker.languages, contentLanguage(e), e.VaryKey)
		p.store.Set(key, marker, until.Sub(now))
		p.store.Set(vk, e, ttl)
		return true
	})
}

// warnEvictions logs, at most once a minute, that the memory budget is
// pushing entries out: a sign that -cache-bytes is too small for the
// working set.
func (p *Proxy) warnEvictions(now time.Time) {
	mem, ok := p.store.(*Memory)
	if !ok {
		return
	}
	n, seen := mem.Evictions(), p.evictionsWarned.Load()
	last := p.evictionWarnAt.Load()
	if n == seen || now.UnixNano()-last < int64(time.Minute) || !p.evictionWarnAt.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	p.evictionsWarned.Store(n)
	p.log.Warn("cache full: evicting entries to stay within -cache-bytes", "evicted", n-seen, "stored_bytes", mem.Bytes())
}

// validatorGrace is how long an entry with validators is kept past the
// last moment it could be served, for revalidation.
const validatorGrace = time.Minute

func variantKey(key string, gen uint64, varyKey string) string {
	return key + "\x00" + strconv.FormatUint(gen, 36) + "\x00" + varyKey
}

// lookup returns what the store holds for a request to key with header h,
// following a Vary marker to the variant, and the key it was found under.
func (p *Proxy) lookup(key string, h http.Header) (*Entry, string) {
	e, ok := p.store.Get(key)
	if !ok {
		return nil, key
	}
	if e.Status != 0 || e.Pass {
		return e, key
	}
	vk := variantKey(key, e.varyGen, varyKey(e.Vary, h))
	v, ok := p.store.Get(vk)
	if !ok && e.languages != nil {
		lang := firstLanguage(sentValues(h, "Accept-Language"))
		if other, ok := e.languages[lang]; ok {
			// Another request's answer is in the language this
			// request prefers above all others: checked again here,
			// since that variant may have been stored anew since.
			ovk := variantKey(key, e.varyGen, other)
			if v, ok := p.store.Get(ovk); ok && contentLanguage(v) == lang {
				return v, ovk
			}
		}
	}
	return v, vk
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
