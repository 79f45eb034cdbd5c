// Package redisstore is a cache.Store on Redis, for the tier that corral
// replicas share: it keeps the cache package's contract (conditional
// writes, purge records that refuse late writes) with one Lua script per
// conditional write, and never makes a caller wait longer than its
// per-call timeout.
//
// It is the first step of the fleet (issue 12). What comes next, outside
// this package: the proxy keeps its memory store as the hit path and
// reads this one on a miss; a lease in Redis makes one fetch per key
// across the fleet; a breaker keeps a replica local-only while Redis
// fails; purges reach every replica over pub/sub.
//
// # Layout
//
// Every Redis key made from a cache key starts with Prefix and a hash tag,
// {T}, where T is the FNV-1a 64-bit hash, in 16 hex digits, of the key's
// base (what precedes its first NUL byte: see cache.VariantKey). So a
// key's entry, its variants, its purge record and its lease share one
// slot of a Redis Cluster, and the scripts that touch several of them run
// there; T being hex, no brace in a cache key can move the tag. A key's
// entry is a hash at Prefix+"{T}e:"+key with field v (the cache.Entry
// encoding, whose ID sits at cache.IDOffset) and field x (the moment it
// expires by Config.Now, in Unix microseconds). Redis also expires it by
// its own clock after the ttl, so that memory is given back; the x field
// is what a reader goes by. An entry with field q is not yet written: in
// a Cluster a Set checks the prefix records after writing it (see set),
// and readers take it for absent. A purge of a key is recorded at
// Prefix+"{T}p:"+H, H the key's own 64-bit FNV-1a hash in hex (so that a
// flood of unsafe requests with long URLs, each of which records a purge,
// costs Redis tens of bytes a record, not the URL; two keys of one tag
// with one hash share a record, which can only refuse a write), a purge
// of a prefix in the sorted set Prefix+"purges", each for Config.Keep. For the fleet (lease.go), an
// entry may also have field f (fresh until, Unix microseconds), a key a
// lease at Prefix+"{T}l:"+key, and replicas talk on the channels
// Prefix+"wake" and Prefix+"purge".
//
// # Cluster
//
// With a *redis.ClusterClient as Config.Client, or an Addr of the form
// redis+cluster://host:port?addr=host2:port (rediss+cluster:// for TLS),
// the store runs on a Redis Cluster: each call goes to the master of its
// key's slot, and a prefix purge scans every master. The set of prefix
// records is in one slot of its own. The client follows a few MOVED and
// ASK redirects (MaxRedirects 3); within that bound go-redis also sends a
// call again after a broken connection, so a script may run twice. A
// second run changes nothing more, but may answer otherwise: a Set with
// IfAbsent or IfID reports ErrConflict after writing, a purge of a key
// counts no entry dropped.
//
// # Redis
//
// It needs Redis 7 or later: its scripts declare flags (#!lua), so that
// on a Redis out of memory under the noeviction policy a Set is refused
// with an error, while a purge, which frees memory, still runs
// (allow-oom). Give Redis a maxmemory and an allkeys-lru or allkeys-lfu
// policy: entries are a cache, and Redis may evict any of them. It may
// evict a purge record too, and then a late write that the record would
// have refused lands: size maxmemory so that what Redis evicts is cold
// entries, not the last minutes' records.
//
// # Clocks
//
// Purge records hold the purger's at, and a write is refused when a
// record is at or after its Cond.Since, which the writer's clock gave: a
// comparison of two replicas' clocks. A writer whose clock runs ahead of
// the purger's by more than the time between its fetch's start and the
// purge can write back a response the purge should have refused; one
// whose clock runs behind has a write refused that could have landed. Keep
// replicas' clocks in step (NTP holds them within milliseconds), and
// Keep well above the longest fetch plus that skew. Expiry (field x)
// goes by the clock of the replica that wrote the entry.
//
// Times are compared in whole microseconds: a purge's time is rounded up
// and a fetch's start down, so that rounding can only refuse a write,
// never let one through.
package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/proxy/cache"
)

// Defaults for the Config fields left zero.
const (
	DefaultPrefix  = "corral:"
	DefaultTimeout = 50 * time.Millisecond
	DefaultKeep    = 10 * time.Minute
)

// Config configures a Store.
type Config struct {
	// Client is the Redis client to use: a *redis.Client, or a
	// *redis.ClusterClient for a Redis Cluster. When nil, New makes one
	// from Addr. A Client given here is used as it is: turn its context
	// deadlines on (ContextTimeoutEnabled) and its retries off
	// (MaxRetries -1), or a call may outlive Timeout.
	Client redis.UniversalClient

	// Addr is where Redis listens when Client is nil: a redis://,
	// rediss:// or unix:// URL (redis://host:6379/0), a host:port, the
	// path of a Unix socket (starting with /), or, for a Redis Cluster, a
	// redis+cluster:// or rediss+cluster:// URL naming one node or more
	// (redis+cluster://host1:6379?addr=host2:6379&addr=host3:6379).
	Addr string

	// Prefix starts every key the store writes, so that several
	// deployments can share one Redis; no deployment's Prefix may start
	// with another's, or a purge of everything in one reaches into the
	// other. It may not hold a brace, which would move the hash tag.
	// Empty means DefaultPrefix.
	Prefix string

	// Timeout bounds every call to Redis: each gets its own deadline,
	// on top of its context's. Zero means DefaultTimeout. A prefix purge
	// makes several calls, each so bounded, and so does a Set with a
	// Cond.Since (three: the write, the check of prefix records, and
	// the settling of the write).
	Timeout time.Duration

	// Keep is how long purge records live: the longest a fetch can run,
	// plus the clock skew between replicas. A write whose fetch began
	// longer ago than Keep is refused, as the record that could forbid
	// it may be gone. Zero means DefaultKeep.
	Keep time.Duration

	// Now is the clock that expiry and the age of purge records go by;
	// nil means time.Now.
	Now func() time.Time
}

// Store is a cache.Store on Redis. It does not implement cache.Sizer: the
// size of one namespace in a shared Redis is not cheap to know (DBSIZE
// counts every namespace; counting ours takes a SCAN of them all).
type Store struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, when it is a Redis Cluster's
	own     bool                 // rdb was made by New, and Close closes it
	prefix  string
	timeout time.Duration
	keep    time.Duration
	now     func() time.Time
}

var _ cache.Store = (*Store)(nil)

// New returns a Store on the Redis that cfg names. It does not connect:
// the first call does.
func New(cfg Config) (*Store, error) {
	s := &Store{
		rdb:     cfg.Client,
		prefix:  cmp.Or(cfg.Prefix, DefaultPrefix),
		timeout: cmp.Or(cfg.Timeout, DefaultTimeout),
		keep:    cmp.Or(cfg.Keep, DefaultKeep),
		now:     cfg.Now,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if strings.ContainsAny(s.prefix, "{}") {
		return nil, fmt.Errorf("redisstore: prefix %q holds a brace, which would move the hash tag", s.prefix)
	}
	if s.rdb == nil {
		rdb, err := newClient(cfg.Addr, s.timeout)
		if err != nil {
			return nil, err
		}
		s.rdb, s.own = rdb, true
	}
	s.cluster, _ = s.rdb.(*redis.ClusterClient)
	return s, nil
}

// Close closes the client New made; a Config.Client is left open.
func (s *Store) Close() error {
	if s.own {
		return s.rdb.Close()
	}
	return nil
}

// EntryKey is the Redis key of the entry under key in the namespace
// prefix, for tools and tests that look at Redis directly.
func EntryKey(prefix, key string) string { return tagged(prefix, key, "e:") }

// LeaseKey is the Redis key of the lease of key in the namespace prefix.
func LeaseKey(prefix, key string) string { return tagged(prefix, key, "l:") }

// tagLen is the length of the hash tag, braces included.
const tagLen = 1 + 16 + 1

// tagged is prefix, the hash tag of key's base, kind and key: see Layout.
func tagged(prefix, key, kind string) string {
	base := key
	if i := strings.IndexByte(key, 0); i >= 0 {
		base = key[:i]
	}
	h := fnv.New64a()
	h.Write([]byte(base))
	var b strings.Builder
	b.Grow(len(prefix) + tagLen + len(kind) + len(key))
	b.WriteString(prefix)
	b.WriteByte('{')
	b.WriteString(fmt.Sprintf("%016x", h.Sum64()))
	b.WriteByte('}')
	b.WriteString(kind)
	b.WriteString(key)
	return b.String()
}

func (s *Store) entryKey(key string) string { return EntryKey(s.prefix, key) }
func (s *Store) recordKey(key string) string {
	h := fnv.New64a()
	h.Write([]byte(key))
	k := tagged(s.prefix, key, "p:")
	return k[:len(k)-len(key)] + fmt.Sprintf("%016x", h.Sum64())
}
func (s *Store) prefixesKey() string { return s.prefix + "purges" }

// call returns ctx bounded by the per-call timeout, or the error of a
// context already done.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("redisstore: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
}

// do runs fn, one call to Redis, with ctx bounded by the per-call
// timeout, and wraps its error with fail against ctx, the caller's. A ctx
// already done fails at once, with no call.
func (s *Store) do(ctx context.Context, op, key string, fn func(ctx context.Context) error) error {
	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := fn(cctx); err != nil {
		return fail(ctx, op, key, err)
	}
	return nil
}

// fail wraps a Redis error, and the error of ctx, the caller's, when it
// is done: the client reports a deadline as an i/o timeout, which may
// come a moment before ctx says it is done.
func fail(ctx context.Context, op, key string, err error) error {
	cerr := ctx.Err()
	if d, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(d) {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("redisstore: %s %q: %w: %w", op, key, cerr, err)
	}
	return fmt.Errorf("redisstore: %s %q: %w", op, key, err)
}

// micros is t in Unix microseconds, rounded down, or up when up is true.
func micros(t time.Time, up bool) int64 {
	us := t.UnixMicro()
	if up && t.Nanosecond()%1000 != 0 {
		us++
	}
	return us
}
