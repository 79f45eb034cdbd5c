package proxy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"corral/freshness"
)

// Entry is one stored response. Once stored it is never modified: serving
// copies its header, and a revalidation stores a new Entry.
type Entry struct {
	Status int
	Header http.Header // hop-by-hop and private fields already removed
	Body   []byte

	// Decision is what freshness said when the response arrived.
	Decision freshness.Decision

	// forCorral is what the Entry keeps of the directives aimed at corral
	// alone; nil when there are none, as for most entries.
	forCorral *forCorral

	// Vary holds the canonical names of the request fields the response
	// varies on, and VaryKey the request's normalised values of them.
	// An Entry with Status 0 is a Vary marker: stored under the URI, it
	// says that the responses live under their variant keys.
	Vary    []string
	VaryKey string

	// varyGen and markerUntil belong to a Vary marker: the generation
	// in its variants' keys, and when it expires.
	varyGen     uint64
	markerUntil time.Time

	// languages maps, for a marker of a response that varies on
	// Accept-Language alone, each stored variant's Content-Language to
	// its variant key, so that a request whose first choice is that
	// language is answered by it (RFC 9111 section 4.1 lets a cache
	// select a response by its own knowledge of the field). Copied on
	// write; at most maxLanguages.
	languages map[string]string

	// Pass marks a key whose last response could not be shared: until
	// the Entry expires, requests for it go upstream each on its own
	// instead of queueing behind a flight (Varnish's hit-for-miss).
	Pass bool

	// refreshAt is when, in Unix nanoseconds, a background refresh may
	// next start; set after a failed refresh so that a struggling origin
	// is not asked again on every stale hit.
	refreshAt atomic.Int64

	// failedAt is when, in Unix nanoseconds, the last validation of e
	// with the origin failed. For refreshBackoff after it, requests that
	// e may answer stale are answered by it without asking again. It is
	// apart from refreshAt, which may run for minutes: one client can
	// make a validation fail (with fields the origin rejects), and must
	// not pin a stale answer on everyone for longer than that.
	failedAt atomic.Int64

	// served remembers the field values of the last answer from e. They
	// change at most once a second, and a hot entry is served thousands
	// of times in one: the hit path formats them only when they change.
	served atomic.Pointer[servedFields]
}

// forCorral is kept apart from the Entry so that entries without a rule
// or Corral-Cache-Control do not grow by its size.
type forCorral struct {
	// rule is the prefix of the operator's rule that decided, "" when
	// none did.
	rule string
	// field holds the origin's Corral-Cache-Control, which is never
	// served but counts again when a 304 revalidates the entry.
	field []string
}

// withBody returns a copy of e, not yet stored, with body: the Entry a
// response judged by its header becomes once its body is in.
func (e *Entry) withBody(body []byte) *Entry {
	return &Entry{Status: e.Status, Header: e.Header, Body: body, Decision: e.Decision,
		forCorral: e.forCorral, Vary: e.Vary, VaryKey: e.VaryKey}
}

// decidedBy returns what Cache-Status says decided e's freshness: the
// targeted field the origin sent, or the prefix of the operator's rule.
func (e *Entry) decidedBy() (field freshness.Source, rule string) {
	if e.Decision.Source == freshness.FromRule && e.forCorral != nil {
		return freshness.FromCacheControl, e.forCorral.rule
	}
	return e.Decision.Source, ""
}

// failedRecently reports whether a validation of e failed less than
// refreshBackoff before now.
func (e *Entry) failedRecently(now time.Time) bool {
	at := e.failedAt.Load()
	return at != 0 && now.UnixNano()-at < int64(refreshBackoff)
}

// servedFields are the values serve sets on an answer from an Entry.
type servedFields struct {
	st            cacheStatus // with ttl in whole seconds
	age           time.Duration
	status        string // st as a Cache-Status value
	ageText       string
	contentLength string
}

// fields returns the values for serving e with status st at now.
func (e *Entry) fields(st cacheStatus, now time.Time) *servedFields {
	st.ttl = st.ttl.Truncate(time.Second)
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
	if st.hit {
		e.served.Store(f) // misses are served once; hits again and again
	}
	return f
}

// entryOverhead is what a stored Entry costs on the heap beside its bytes,
// as bench's BenchmarkStoreOverhead measures it: the Entry with its
// Decision (about 320 B), its header map with room for eight fields
// (about 380 B), otter's node (about 100 B), and once it is hit, its
// served field values (about 180 B). Counting less would let a store of
// small entries outgrow its budget.
const entryOverhead = 1024

// mapSlot is what each header field past the eighth adds to the map.
const mapSlot = 40

// size estimates the bytes e holds on the heap, for the store's budget.
func (e *Entry) size() int {
	n := entryOverhead + len(e.Body) + len(e.VaryKey) + mapSlot*max(len(e.Header)-8, 0)
	for k, vs := range e.Header {
		n += len(k) + 16
		for _, v := range vs {
			n += len(v) + 16
		}
	}
	for _, v := range e.Vary {
		n += len(v) + 16
	}
	if e.forCorral != nil {
		n += 48 + len(e.forCorral.rule)
		for _, v := range e.forCorral.field {
			n += len(v) + 16
		}
	}
	return n
}

// Store holds entries by key. Implementations must be safe for concurrent
// use and must not modify an Entry.
type Store interface {
	Get(key string) (*Entry, bool)
	// Set stores e under key for at most ttl.
	Set(key string, e *Entry, ttl time.Duration)
	Delete(key string)
	// DeletePrefix drops every entry whose key starts with prefix, all
	// of them for "", and reports how many it dropped.
	DeletePrefix(prefix string) int
}

// Memory is an in-memory Store bounded in bytes, with otter's W-TinyLFU
// policy: a flood of one-off keys cannot push out the entries in use.
type Memory struct {
	c         *otter.Cache[string, item]
	evictions atomic.Int64
}

type item struct {
	e   *Entry
	ttl time.Duration
}

// NewMemory returns a Memory store that keeps its entries, keys included,
// within maxBytes.
func NewMemory(maxBytes int64) *Memory {
	m := &Memory{}
	m.c = otter.Must(&otter.Options[string, item]{
		MaximumWeight: uint64(max(maxBytes, 1)),
		Weigher: func(key string, it item) uint32 {
			return uint32(min(len(key)+it.e.size(), math.MaxUint32))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(en otter.Entry[string, item]) time.Duration {
			return en.Value.ttl
		}),
		OnAtomicDeletion: func(e otter.DeletionEvent[string, item]) {
			if e.Cause == otter.CauseOverflow {
				m.evictions.Add(1)
			}
		},
	})
	return m
}

func (m *Memory) Get(key string) (*Entry, bool) {
	it, ok := m.c.GetIfPresent(key)
	return it.e, ok
}

func (m *Memory) Set(key string, e *Entry, ttl time.Duration) {
	if ttl > 0 {
		m.c.Set(key, item{e, ttl})
	}
}

func (m *Memory) Delete(key string) { m.c.Invalidate(key) }

func (m *Memory) DeletePrefix(prefix string) int {
	n := 0
	for k := range m.c.Keys() {
		if strings.HasPrefix(k, prefix) {
			if _, ok := m.c.Invalidate(k); ok {
				n++
			}
		}
	}
	return n
}

// Bytes is the weight the store holds now, the latest writes included.
func (m *Memory) Bytes() int64 {
	// otter applies writes to its policy, and to the weight, in batches,
	// possibly on another goroutine: without CleanUp the entries just
	// stored may not count yet.
	m.c.CleanUp()
	return int64(m.c.WeightedSize())
}

// Evictions is how many entries the budget has pushed out so far.
func (m *Memory) Evictions() int64 { return m.evictions.Load() }

// Close stops the store's background cleanup; entries stay readable.
func (m *Memory) Close() { m.c.StopAllGoroutines() }

// Len is the number of entries the store holds now.
func (m *Memory) Len() int { return m.c.EstimatedSize() }
