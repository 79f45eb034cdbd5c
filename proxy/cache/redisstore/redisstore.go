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
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"corral/proxy/cache"
)

// Defaults for the Config fields left zero.
const (
	DefaultPrefix  = "corral:"
	DefaultTimeout = 50 * time.Millisecond
	DefaultKeep    = 10 * time.Minute
)

// scanCount is the COUNT hint of each SCAN step of a prefix purge, and so
// about the number of keys each step deletes.
const scanCount = 500

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

// ClusterURL reports whether addr names a Redis Cluster (a
// redis+cluster:// or rediss+cluster:// URL) and, if so, returns it with
// the scheme that redis.ParseClusterURL takes (redis:// or rediss://).
func ClusterURL(addr string) (string, bool) {
	for _, scheme := range []string{"redis", "rediss"} {
		if rest, ok := strings.CutPrefix(addr, scheme+"+cluster://"); ok {
			return scheme + "://" + rest, true
		}
	}
	return "", false
}

// newClient makes the client for addr, as Config.Addr describes it, when
// Config.Client is nil. Each call it makes goes out once (no retries, one
// dial attempt: a dead Redis costs one refused dial), bounded by the
// deadline of its context and each wait by timeout; it tells Redis
// nothing of itself (no CLIENT SETINFO, no maintenance notifications).
// go-redis has one options type for a Redis and another for a Cluster,
// with no type in common: the same three lines set both.
func newClient(addr string, timeout time.Duration) (redis.UniversalClient, error) {
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if u, ok := ClusterURL(addr); ok {
		o, err := redis.ParseClusterURL(u)
		if err != nil {
			return nil, fmt.Errorf("redisstore: %w", err)
		}
		o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.DisableIdentity, o.MaintNotificationsConfig = true, off
		// A MOVED or ASK reply is no failure, only a slot that changed
		// hands: follow a few. (go-redis also tries a failed call again
		// within this bound; the call's deadline still holds.)
		o.MaxRedirects = 3
		return redis.NewClusterClient(o), nil
	}
	o, err := options(addr)
	if err != nil {
		return nil, err
	}
	o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
	o.DisableIdentity, o.MaintNotificationsConfig = true, off
	return redis.NewClient(o), nil
}

// options parses an address as Config.Addr describes it.
func options(addr string) (*redis.Options, error) {
	switch {
	case addr == "":
		return nil, errors.New("redisstore: no Client and no Addr")
	case strings.Contains(addr, "://"):
		opt, err := redis.ParseURL(addr)
		if err != nil {
			return nil, fmt.Errorf("redisstore: %w", err)
		}
		return opt, nil
	case strings.HasPrefix(addr, "/"):
		return &redis.Options{Network: "unix", Addr: addr}, nil
	default:
		return &redis.Options{Network: "tcp", Addr: addr}, nil
	}
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

func (s *Store) Get(ctx context.Context, key string) (*cache.Entry, error) {
	now := micros(s.now(), false)
	var vals []any
	err := s.do(ctx, "get", key, func(ctx context.Context) (err error) {
		vals, err = s.rdb.HMGet(ctx, s.entryKey(key), "v", "x", "q").Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	v, _ := vals[0].(string)
	x, _ := vals[1].(string)
	if v == "" || vals[2] != nil {
		return nil, cache.ErrNotFound // absent, or not yet written
	}
	if until, err := strconv.ParseInt(x, 10, 64); err != nil || until <= now {
		return nil, cache.ErrNotFound
	}
	e := new(cache.Entry)
	if err := e.UnmarshalOwned(readOnly(v)); err != nil {
		return nil, fail(ctx, "get", key, err)
	}
	return e, nil
}

// setScript writes an entry if its condition holds, as one step.
//
//	KEYS: entry, purge record of the key, purge record of the key it is
//	      a variant of (or the key's again): one slot, by the hash tag
//	      and, on a single Redis, the sorted set of prefix records
//	ARGV: encoding, ttl ms, expiry µs, since µs (0: no check), mode
//	      ("", "id" or "absent"), ID (8 bytes), now µs, pending ("1":
//	      write it with field q, not yet written), fresh-until µs ("":
//	      none; SetFresh), key, the entry's request time µs ("": none;
//	      field t, by which Lookup holds purge records against it)
//
// It returns "purged", "conflict" or "ok". The checks, in the order the
// contract wants them: a record of the key or of its URI's key at or
// after since, and on a single Redis of a prefix of it; then the entry
// there (one past its x is absent) against IfID or IfAbsent; then the
// write, with Redis's own expiry after the ttl. In a Cluster the records
// of prefixes are in another slot: set checks them after the write. The
// entry's fields are replaced as a whole, so that a plain Set leaves no
// fresh-until (field f) of an earlier SetFresh.
var setScript = redis.NewScript("#!lua\n" + luaEntryID + `
local since = tonumber(ARGV[4])
if since > 0 then
  for i = 2, 3 do
    local r = redis.call('GET', KEYS[i])
    if r and tonumber(r) >= since then return 'purged' end
  end
  if KEYS[4] then
    local key = ARGV[10]
    for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], since, '+inf')) do
      if string.sub(key, 1, #p) == p then return 'purged' end
    end
  end
end
local mode = ARGV[5]
if mode ~= '' then
  local cur = redis.call('HMGET', KEYS[1], 'v', 'x')
  local live = cur[1] and cur[2] and tonumber(cur[2]) > tonumber(ARGV[7])
  if mode == 'absent' and live then return 'conflict' end
  if mode == 'id' and not (live and entryID(cur[1]) == ARGV[6]) then return 'conflict' end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'x', ARGV[3])
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'q', '1') end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'f', ARGV[9]) end
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 't', ARGV[11]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'ok'
`)

// luaEntryID defines entryID(v) for the scripts that compare IDs: the ID
// of an encoded entry, where cache.IDOffset says it sits (Lua counts from
// one).
var luaEntryID = fmt.Sprintf("local function entryID(v) return string.sub(v, %d, %d) end\n",
	cache.IDOffset+1, cache.IDOffset+cache.IDSize)

// settleScript ends the pending state of an entry that set wrote, if it
// is still the one set wrote (its ID): it drops it, or makes it written.
//
//	KEYS: entry
//	ARGV: ID (cache.IDSize bytes), "drop" or "keep"
var settleScript = redis.NewScript("#!lua flags=allow-oom\n" + luaEntryID + `
local v = redis.call('HGET', KEYS[1], 'v')
if v and entryID(v) == ARGV[1] then
  if ARGV[2] == 'drop' then redis.call('DEL', KEYS[1]) else redis.call('HDEL', KEYS[1], 'q') end
end
return 0
`)

func (s *Store) Set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, cond cache.Cond) error {
	return s.set(ctx, key, e, ttl, time.Time{}, cond)
}

// set is Set, and SetFresh when fresh is not zero.
func (s *Store) set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, fresh time.Time, cond cache.Cond) error {
	if ttl <= 0 {
		return nil
	}
	now := s.now()
	if !cond.Since.IsZero() && cond.Since.Before(now.Add(-s.keep)) {
		return cache.ErrPurged // the record that could forbid it may be gone
	}
	v, err := e.MarshalBinary()
	if err != nil {
		return fail(ctx, "set", key, err)
	}
	mode, id := "", make([]byte, cache.IDSize)
	switch {
	case cond.IfID != 0:
		mode = "id"
		for i := range id {
			id[i] = byte(cond.IfID >> (56 - 8*i))
		}
	case cond.IfAbsent:
		mode = "absent"
	}
	since := int64(0)
	if !cond.Since.IsZero() {
		since = max(micros(cond.Since, false), 1)
	}
	base := key
	if i := strings.IndexByte(key, 0); i >= 0 {
		base = key[:i]
	}
	// On a single Redis the script checks the prefix records too, in
	// the one round trip; in a Cluster they are in another slot, and the
	// write stays pending until checked against them (below).
	keys := []string{s.entryKey(key), s.recordKey(key), s.recordKey(base)}
	pending := "0"
	switch {
	case s.cluster == nil:
		keys = append(keys, s.prefixesKey())
	case since > 0:
		pending = "1"
	}
	freshUS := ""
	if !fresh.IsZero() {
		freshUS = strconv.FormatInt(micros(fresh, false), 10)
	}
	reqUS := ""
	if !e.RequestTime.IsZero() {
		reqUS = strconv.FormatInt(micros(e.RequestTime, false), 10)
	}
	args := []any{v, max(ttl.Milliseconds(), 1), micros(now.Add(ttl), true), since, mode, id, micros(now, false), pending, freshUS, key, reqUS}
	var res string
	err = s.do(ctx, "set", key, func(ctx context.Context) (err error) {
		res, err = setScript.Run(ctx, s.rdb, keys, args...).Text()
		return err
	})
	if err != nil {
		return err
	}
	switch res {
	case "ok":
	case "purged":
		return cache.ErrPurged
	case "conflict":
		return cache.ErrConflict
	default:
		return fail(ctx, "set", key, fmt.Errorf("unexpected reply %q", res))
	}
	if pending == "0" {
		return nil
	}

	// In a Cluster: the entry is written, pending: readers take it for absent. Now the
	// records of prefixes, which live in a slot of their own, so that no
	// script can check them with the write. Writing first and reading
	// after is what makes this safe. A prefix purge records first (ZADD),
	// then SCANs and drops the entries. If this read sees the record, the
	// entry is dropped here. If it does not, the read ran before the ZADD,
	// so the write, which ran before the read, ran before the SCAN began:
	// SCAN returns every key that exists from its start to its end, and
	// the purge drops the entry. Either way no purged write survives.
	// Until settled, the entry is pending, so that no reader serves it in
	// between; a Set that fails from here leaves it pending, unseen, until
	// Redis expires it or a write replaces it.
	if len(v) < cache.IDOffset+cache.IDSize {
		return fail(ctx, "set", key, errors.New("encoding too short"))
	}
	id = []byte(v[cache.IDOffset : cache.IDOffset+cache.IDSize])
	var prefixes []string
	err = s.do(ctx, "set", key, func(ctx context.Context) (err error) {
		prefixes, err = s.rdb.ZRangeByScore(ctx, s.prefixesKey(), &redis.ZRangeBy{Min: strconv.FormatInt(since, 10), Max: "+inf"}).Result()
		return err
	})
	if err != nil {
		return err
	}
	settle, result := "keep", error(nil)
	for _, p := range prefixes {
		if strings.HasPrefix(key, p) {
			settle, result = "drop", cache.ErrPurged
			break
		}
	}
	err = s.do(ctx, "set", key, func(ctx context.Context) error {
		err := settleScript.Run(ctx, s.rdb, []string{s.entryKey(key)}, id, settle).Err()
		if result != nil {
			return nil // settled or still pending, it is never served
		}
		return err
	})
	if err != nil {
		return err
	}
	return result
}

func (s *Store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, "delete", key, func(ctx context.Context) error {
		return s.rdb.Del(ctx, s.entryKey(key)).Err()
	})
}

// purgeKeyScript records the purge of one key and drops its entry, as
// one step, so that no Set falls between them.
//
//	KEYS: entry, purge record
//	ARGV: at µs, Keep ms, now µs
//
// The record keeps the later of its time and at. It returns 1 if a live
// entry was dropped, else 0.
var purgeKeyScript = redis.NewScript(`#!lua flags=allow-oom
local r = redis.call('GET', KEYS[2])
if not r or tonumber(r) < tonumber(ARGV[1]) then r = ARGV[1] end
redis.call('SET', KEYS[2], r, 'PX', ARGV[2])
local x = redis.call('HGET', KEYS[1], 'x')
redis.call('DEL', KEYS[1])
if x and tonumber(x) > tonumber(ARGV[3]) then return 1 end
return 0
`)

// recordPrefixScript records the purge of a prefix, and drops the prefix
// records no fetch can predate any more.
//
//	KEYS: sorted set of prefix records
//	ARGV: at µs, prefix, oldest µs a record must cover, Keep ms
var recordPrefixScript = redis.NewScript(`#!lua flags=allow-oom
local r = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not r or tonumber(r) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 0
`)

// dropSource drops the entries KEYS and returns how many were live.
//
//	ARGV: now µs
const dropSource = `#!lua flags=allow-oom
local n = 0
for _, k in ipairs(KEYS) do
  local x = redis.call('HGET', k, 'x')
  if x and tonumber(x) > tonumber(ARGV[1]) then n = n + 1 end
  redis.call('DEL', k)
end
return n
`

var dropScript = redis.NewScript(dropSource)

// Purge drops the entry under key, or every entry under the prefix key,
// and records the purge at at for Keep.
//
// The purge of one key is one script. The purge of a prefix records the
// prefix first, so that from then on a write begun before at is refused,
// then walks the database with SCAN and drops what matches, a step at a
// time (about scanCount keys: a SCAN and a script, each bounded by
// Timeout): its cost grows with every key in the database, other
// namespaces included, not with the keys it drops, and a failure half
// way leaves the rest in place (the record still refuses late writes);
// call it again. Entries written during the walk by fetches begun after
// at may be dropped too. In a Redis Cluster it walks every master at once,
// each with its own SCAN.
//
// Records are not collapsed as the Memory store's are: each lives for
// Keep, by Redis's clock, and costs Redis about a hundred bytes, so a
// flood of purges is bounded by Keep and Redis's maxmemory.
func (s *Store) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("redisstore: %w", err)
	}
	now := s.now()
	atUS, nowUS := micros(at, true), micros(now, false)
	keepMS := max(s.keep.Milliseconds(), 1)
	if !prefix {
		var n int
		err := s.do(ctx, "purge", key, func(ctx context.Context) (err error) {
			n, err = purgeKeyScript.Run(ctx, s.rdb, []string{s.entryKey(key), s.recordKey(key)}, atUS, keepMS, nowUS).Int()
			return err
		})
		if err != nil {
			return 0, err
		}
		return n, nil
	}

	err := s.do(ctx, "purge", key, func(ctx context.Context) error {
		return recordPrefixScript.Run(ctx, s.rdb, []string{s.prefixesKey()}, atUS, key, micros(now.Add(-s.keep), false), keepMS).Err()
	})
	if err != nil {
		return 0, err
	}
	// Every entry under the prefix: the hash tag is 16 characters
	// between braces, and the key follows it as it is.
	pattern := globEscape(s.prefix) + "{" + strings.Repeat("?", tagLen-2) + "}e:" + globEscape(key) + "*"
	var total int
	if s.cluster == nil {
		total, err = s.scanDrop(ctx, s.rdb, pattern, nowUS)
	} else {
		var mu sync.Mutex
		err = s.cluster.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
			n, err := s.scanDrop(ctx, node, pattern, nowUS)
			mu.Lock()
			total += n
			mu.Unlock()
			return err
		})
	}
	if err != nil {
		return total, fail(ctx, "purge", key, err)
	}
	return total, nil
}

// scanDrop walks the keys of one Redis (the only one, or a master of the
// cluster) that match pattern, and drops them a SCAN step at a time. It
// returns how many were live.
func (s *Store) scanDrop(ctx context.Context, rdb redis.Cmdable, pattern string, nowUS int64) (int, error) {
	n := 0
	var cursor uint64
	for {
		cctx, cancel, err := s.call(ctx)
		if err != nil {
			return n, err
		}
		var keys []string
		keys, cursor, err = rdb.Scan(cctx, cursor, pattern, scanCount).Result()
		cancel()
		if err != nil {
			return n, err
		}
		if len(keys) > 0 {
			if n, err = s.drop(ctx, keys, nowUS, n); err != nil {
				return n, err
			}
		}
		if cursor == 0 {
			return n, nil
		}
	}
}

// drop drops the entries under the Redis keys keys, in a call of its own,
// and adds the live ones to n. On a single Redis that is one script; in a
// cluster, whose scripts may only touch keys of one slot, a pipeline of
// one script per hash tag, which the client sends to each master in one
// round trip (a slot that moves redirects its script, not the rest).
func (s *Store) drop(ctx context.Context, keys []string, nowUS int64, n int) (int, error) {
	ctx, cancel, err := s.call(ctx)
	if err != nil {
		return n, err
	}
	defer cancel()
	if s.cluster == nil {
		k, err := dropScript.Run(ctx, s.rdb, keys, nowUS).Int()
		return n + k, err
	}
	byTag := map[string][]string{}
	for _, k := range keys {
		tag := k[len(s.prefix) : len(s.prefix)+tagLen]
		byTag[tag] = append(byTag[tag], k)
	}
	pipe := s.cluster.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(byTag))
	for _, ks := range byTag {
		cmds = append(cmds, pipe.Eval(ctx, dropSource, ks, nowUS))
	}
	_, err = pipe.Exec(ctx)
	for _, c := range cmds {
		if k, err := c.Int(); err == nil {
			n += k
		}
	}
	return n, err
}

// globEscape escapes the characters SCAN's MATCH gives a meaning to.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readOnly returns the bytes of s without copying them, for
// cache.Entry.UnmarshalOwned, which keeps them as the entry's body: a
// string is never changed, and neither is a stored entry, so a 64 KiB
// value is not copied at all on its way from the reply into the entry.
func readOnly(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
