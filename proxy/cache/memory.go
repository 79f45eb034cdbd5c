package cache

import (
	"context"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// Config configures a Memory store. The zero Config is a store of one
// byte, which keeps nothing; set MaxBytes.
type Config struct {
	// MaxBytes bounds what the store holds, keys and headers included,
	// as entry weights estimate it.
	MaxBytes int64

	// Keep is how long a purge record must hold: the longest a fetch can
	// run, the upstream timeout. Past MaxPurgeRecords live records, older
	// ones may be dropped, and a write whose fetch began before what is
	// kept is refused. Zero keeps records only until that bound.
	Keep time.Duration

	// Now is the clock entries expire by; nil means time.Now. Expired
	// entries are never read, and a cleanup once a second of real time
	// drops them.
	Now func() time.Time
}

// Memory is an in-memory Store bounded in bytes, with otter's W-TinyLFU
// policy: a flood of one-off keys cannot push out the entries in use.
//
// Memory never blocks on I/O and ignores the contexts it is given: an
// answer from memory is always worth having, and a purge must not be
// half done. Its errors are only ErrNotFound, ErrConflict and ErrPurged.
type Memory struct {
	c         *otter.Cache[string, item]
	records   records
	evictions atomic.Int64
}

type item struct {
	e     *Entry
	ttl   time.Duration
	local any
}

var _ interface {
	Store
	Sizer
} = (*Memory)(nil)

// NewMemory returns an empty Memory store.
func NewMemory(cfg Config) *Memory {
	m := &Memory{records: records{keep: cfg.Keep}}
	opts := &otter.Options[string, item]{
		MaximumWeight: uint64(max(cfg.MaxBytes, 1)),
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
			if t, ok := e.Value.local.(Tracker); ok {
				t.Dropped()
			}
		},
	}
	if cfg.Now != nil {
		opts.Clock = clock(cfg.Now)
	}
	m.c = otter.Must(opts)
	return m
}

// clock is otter's view of Config.Now. Its ticks, which only start
// cleanups, are real: a ticker that otter never stops is collected once
// Close has stopped the goroutine that reads it.
type clock func() time.Time

func (c clock) NowNano() int64                        { return c().UnixNano() }
func (c clock) Tick(d time.Duration) <-chan time.Time { return time.Tick(d) }

// entryOverhead is what a stored Entry costs on the heap beside its bytes,
// as bench's BenchmarkStoreOverhead measures it behind the proxy: the
// Entry and what SetLocal keeps beside it (the proxy's freshness
// decision and served header), its header map with room for eight fields
// (about 380 B), otter's node (about 100 B), and once it is hit, its
// served field values (about 180 B). The benchmark measured about
// 1,270 B on the heap for an entry of three fields, which the weigher's
// 1,152 B and the fields' own bytes cover. Counting less would let a store
// of small entries outgrow its budget.
const entryOverhead = 1152

// mapSlot is what each header field past the eighth adds to the map.
const mapSlot = 40

// size estimates the bytes e holds on the heap, for the store's budget.
func (e *Entry) size() int {
	n := entryOverhead + len(e.Body) + len(e.VaryKey) + len(e.Reason) + mapSlot*max(len(e.Header)-8, 0)
	for k, vs := range e.Header {
		n += len(k) + 16
		for _, v := range vs {
			n += len(v) + 16
		}
	}
	for _, v := range e.Vary {
		n += len(v) + 16
	}
	return n
}

func (m *Memory) Get(_ context.Context, key string) (*Entry, error) {
	it, ok := m.c.GetIfPresent(key)
	if !ok {
		return nil, ErrNotFound
	}
	return it.e, nil
}

// GetLocal returns the entry under key and what SetLocal kept beside it
// (nil after a plain Set), or nil and nil. It is the hit path: it allocates nothing.
func (m *Memory) GetLocal(key string) (*Entry, any) {
	it, _ := m.c.GetIfPresent(key)
	return it.e, it.local
}

func (m *Memory) Set(ctx context.Context, key string, e *Entry, ttl time.Duration, cond Cond) error {
	return m.SetLocal(ctx, key, e, nil, ttl, cond)
}

// SetLocal is Set with local kept beside e for as long as e stays, for
// GetLocal to hand back: what this process derives from the entry and the
// state it keeps about it (its freshness decision, a memo of the fields
// served from it, a back-off), which must not go into the Entry itself.
// Its cost is counted in entryOverhead. A local that is a Tracker is told
// when the store takes e and when it lets go of it.
func (m *Memory) SetLocal(_ context.Context, key string, e *Entry, local any, ttl time.Duration, cond Cond) error {
	if ttl <= 0 {
		return nil
	}
	it := item{e: e, ttl: ttl, local: local}
	// The read lock keeps Purge out from the check of its records to the
	// write; otter's Compute keeps other writes of key out from the check
	// of the current entry to the write.
	m.records.mu.RLock()
	defer m.records.mu.RUnlock()
	if !cond.Since.IsZero() && m.records.purged(key, cond.Since) {
		return ErrPurged
	}
	var err error
	m.c.Compute(key, func(old item, found bool) (item, otter.ComputeOp) {
		switch {
		case cond.IfAbsent && found,
			cond.IfID != 0 && (!found || old.e.ID != cond.IfID):
			err = ErrConflict
			return old, otter.CancelOp
		}
		// Before the old entry's Dropped, which otter calls once this
		// returns: a local that replaces one sharing its body is never
		// seen to leave the body unheld.
		if t, ok := local.(Tracker); ok {
			t.Kept()
		}
		return it, otter.WriteOp
	})
	return err
}

// Tracker is what a local given to SetLocal may implement to learn how long
// the store holds its entry in memory: the memory its entry points to (a
// body, say) is counted by the store's budget just so long, and its owner
// must count it elsewhere past that. Both run under a lock of the store,
// and must not call it.
type Tracker interface {
	// Kept is called when the store takes the entry.
	Kept()
	// Dropped is called once the store lets go of the entry: evicted,
	// expired, replaced, deleted or purged.
	Dropped()
}

func (m *Memory) Delete(_ context.Context, key string) error {
	m.c.Invalidate(key)
	return nil
}

func (m *Memory) Purge(_ context.Context, key string, prefix bool, at time.Time) (int, error) {
	n := 0
	m.records.mu.Lock()
	defer m.records.mu.Unlock()
	m.records.add(key, prefix, at)
	if !prefix {
		if _, ok := m.c.Invalidate(key); ok {
			n = 1
		}
		return n, nil
	}
	for k := range m.c.Keys() {
		if strings.HasPrefix(k, key) {
			if _, ok := m.c.Invalidate(k); ok {
				n++
			}
		}
	}
	return n, nil
}

// Bytes is the weight the store holds now, the latest writes included.
func (m *Memory) Bytes() int64 {
	// otter applies writes to its policy, and to the weight, in batches,
	// possibly on another goroutine: without CleanUp the entries just
	// stored may not count yet.
	m.c.CleanUp()
	return int64(m.c.WeightedSize())
}

// Len is the number of entries the store holds now.
func (m *Memory) Len() int { return m.c.EstimatedSize() }

// Evictions is how many entries the budget has pushed out so far.
func (m *Memory) Evictions() int64 { return m.evictions.Load() }

// Close stops the store's background cleanup; entries stay readable.
func (m *Memory) Close() { m.c.StopAllGoroutines() }

// MaxPurgeRecords bounds the purge records a Memory store keeps live.
// Clients choose the URIs that unsafe requests purge, so past this many
// the records collapse into one "everything was purged now", which costs
// the fetches under way their write and nothing else.
const MaxPurgeRecords = 10_000

// records remember when keys, or every key under a prefix, were purged,
// for as long as a fetch that began earlier could still be running, so
// that such a fetch does not write the old response back after the purge.
//
// The check and the write it guards must be one step, or a purge could
// fall between them: Set holds the read lock around both, Purge the write
// lock around recording and dropping.
type records struct {
	keep time.Duration // a fetch's longest life

	mu       sync.RWMutex
	keys     map[string]time.Time
	prefixes map[string]time.Time // "" stands for every key
	cutoff   time.Time            // records older than this are gone
}

// add records that key, or every key starting with it when prefix is
// true, was purged at at. The caller holds mu.
func (r *records) add(key string, prefix bool, at time.Time) {
	if r.keys == nil {
		r.keys, r.prefixes = make(map[string]time.Time), make(map[string]time.Time)
	}
	m := r.keys
	if prefix {
		m = r.prefixes
	}
	if len(m) >= MaxPurgeRecords {
		r.sweep(at)
		if len(m) >= MaxPurgeRecords/2 {
			// Still full of live records: one for everything stands
			// in for them all, so the next sweep is far off again.
			newest := at
			for _, old := range []map[string]time.Time{r.keys, r.prefixes} {
				for _, t := range old {
					newest = later(newest, t)
				}
				clear(old)
			}
			key, m, at = "", r.prefixes, newest
		}
	}
	m[key] = later(m[key], at)
}

// sweep drops the records no running fetch can predate.
func (r *records) sweep(now time.Time) {
	r.cutoff = later(r.cutoff, now.Add(-r.keep))
	for _, m := range []map[string]time.Time{r.keys, r.prefixes} {
		for k, at := range m {
			if at.Before(r.cutoff) {
				delete(m, k)
			}
		}
	}
}

// purged reports whether a write to key of a fetch that began at since is
// forbidden: key, or the key it is a variant of, or a prefix of it was
// purged at or after since, or since is older than the records kept. The
// caller holds mu for reading.
func (r *records) purged(key string, since time.Time) bool {
	if since.Before(r.cutoff) {
		return true // the record that could forbid it may be gone
	}
	if at, ok := r.keys[key]; ok && !at.Before(since) {
		return true
	}
	if base := baseKey(key); len(base) < len(key) {
		if at, ok := r.keys[base]; ok && !at.Before(since) {
			return true
		}
	}
	for p, at := range r.prefixes {
		if !at.Before(since) && strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// later is the later of a and b (a when they are the same moment).
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
