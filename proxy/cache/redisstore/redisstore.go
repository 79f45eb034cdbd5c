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
// Under the namespace Prefix, a key's entry is a hash at Prefix+"e:"+key
// with field v (the cache.Entry encoding, whose ID sits at bytes 2-9) and
// field x (the moment it expires by Config.Now, in Unix microseconds).
// Redis also expires it by its own clock after the ttl, so that memory is
// given back; the x field is what a reader goes by. A purge of a key is
// recorded at Prefix+"p:"+key, a purge of a prefix in the sorted set
// Prefix+"purges", each for Config.Keep. For the fleet (lease.go), an
// entry may also have field f (fresh until, Unix microseconds), a key a
// lease at Prefix+"l:"+key, and replicas talk on the channels
// Prefix+"wake" and Prefix+"purge".
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
	"strconv"
	"strings"
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
	// Client is the Redis client to use. When nil, New makes one from
	// Addr. A Client given here is used as it is: turn its context
	// deadlines on (ContextTimeoutEnabled) and its retries off
	// (MaxRetries -1), or a call may outlive Timeout.
	Client *redis.Client

	// Addr is where Redis listens when Client is nil: a redis://,
	// rediss:// or unix:// URL (redis://host:6379/0), a host:port, or the
	// path of a Unix socket (starting with /).
	Addr string

	// Prefix starts every key the store writes, so that several
	// deployments can share one Redis; no deployment's Prefix may start
	// with another's, or a purge of everything in one reaches into the
	// other. Empty means DefaultPrefix.
	Prefix string

	// Timeout bounds every call to Redis: each gets its own deadline,
	// on top of its context's. Zero means DefaultTimeout. A prefix purge
	// makes several calls, each so bounded.
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
	rdb     *redis.Client
	own     bool // rdb was made by New, and Close closes it
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
	if s.rdb == nil {
		opt, err := options(cfg.Addr)
		if err != nil {
			return nil, err
		}
		opt.ContextTimeoutEnabled = true
		opt.MaxRetries = -1
		opt.DialTimeout = s.timeout
		opt.ReadTimeout = s.timeout
		opt.WriteTimeout = s.timeout
		opt.PoolTimeout = s.timeout
		opt.DisableIdentity = true
		opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		s.rdb, s.own = redis.NewClient(opt), true
	}
	return s, nil
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

func (s *Store) entryKey(key string) string  { return s.prefix + "e:" + key }
func (s *Store) recordKey(key string) string { return s.prefix + "p:" + key }
func (s *Store) prefixesKey() string         { return s.prefix + "purges" }

// call returns ctx bounded by the per-call timeout, or the error of a
// context already done.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("redisstore: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	return ctx, cancel, nil
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
	outer := ctx
	ctx, cancel, err := s.call(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	now := micros(s.now(), false)
	vals, err := s.rdb.HMGet(ctx, s.entryKey(key), "v", "x").Result()
	if err != nil {
		return nil, fail(outer, "get", key, err)
	}
	v, _ := vals[0].(string)
	x, _ := vals[1].(string)
	if v == "" {
		return nil, cache.ErrNotFound
	}
	if until, err := strconv.ParseInt(x, 10, 64); err != nil || until <= now {
		return nil, cache.ErrNotFound
	}
	e := new(cache.Entry)
	if err := e.UnmarshalBinary(readOnly(v)); err != nil {
		return nil, fail(outer, "get", key, err)
	}
	return e, nil
}

// setScript writes an entry if its condition holds, as one step.
//
//	KEYS: entry, purge record of the key, purge record of the key it is
//	      a variant of (or the key's again), sorted set of prefix records
//	ARGV: encoding, ttl ms, expiry µs, since µs (0: no check), mode
//	      ("", "id" or "absent"), ID (8 bytes), now µs, key, and
//	      optionally fresh-until µs (SetFresh)
//
// It returns "purged", "conflict" or "ok". The checks, in the order the
// contract wants them: a record of the key, of its URI's key, or of a
// prefix of it, at or after since; then the entry there (one past its x
// is absent) against IfID or IfAbsent; then the write, with Redis's own
// expiry after the ttl. The entry's fields are replaced as a whole, so
// that a plain Set leaves no fresh-until (field f) of an earlier SetFresh.
var setScript = redis.NewScript(`#!lua
local since = tonumber(ARGV[4])
if since > 0 then
  for i = 2, 3 do
    local r = redis.call('GET', KEYS[i])
    if r and tonumber(r) >= since then return 'purged' end
  end
  local key = ARGV[8]
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], since, '+inf')) do
    if string.sub(key, 1, #p) == p then return 'purged' end
  end
end
local mode = ARGV[5]
if mode ~= '' then
  local cur = redis.call('HMGET', KEYS[1], 'v', 'x')
  local live = cur[1] and cur[2] and tonumber(cur[2]) > tonumber(ARGV[7])
  if mode == 'absent' and live then return 'conflict' end
  if mode == 'id' and not (live and string.sub(cur[1], 3, 10) == ARGV[6]) then return 'conflict' end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'x', ARGV[3])
if ARGV[9] then redis.call('HSET', KEYS[1], 'f', ARGV[9]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'ok'
`)

func (s *Store) Set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, cond cache.Cond) error {
	return s.set(ctx, key, e, ttl, time.Time{}, cond)
}

// set is Set, and SetFresh when fresh is not zero.
func (s *Store) set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, fresh time.Time, cond cache.Cond) error {
	outer := ctx
	if ttl <= 0 {
		return nil
	}
	now := s.now()
	if !cond.Since.IsZero() && cond.Since.Before(now.Add(-s.keep)) {
		return cache.ErrPurged // the record that could forbid it may be gone
	}
	v, err := e.MarshalBinary()
	if err != nil {
		return fail(outer, "set", key, err)
	}
	mode, id := "", make([]byte, 8)
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
	ctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	keys := []string{s.entryKey(key), s.recordKey(key), s.recordKey(base), s.prefixesKey()}
	args := []any{v, max(ttl.Milliseconds(), 1), micros(now.Add(ttl), true), since, mode, id, micros(now, false), key}
	if !fresh.IsZero() {
		args = append(args, micros(fresh, false))
	}
	res, err := setScript.Run(ctx, s.rdb, keys, args...).Text()
	if err != nil {
		return fail(outer, "set", key, err)
	}
	switch res {
	case "ok":
		return nil
	case "purged":
		return cache.ErrPurged
	case "conflict":
		return cache.ErrConflict
	}
	return fail(outer, "set", key, fmt.Errorf("unexpected reply %q", res))
}

func (s *Store) Delete(ctx context.Context, key string) error {
	outer := ctx
	ctx, cancel, err := s.call(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := s.rdb.Del(ctx, s.entryKey(key)).Err(); err != nil {
		return fail(outer, "delete", key, err)
	}
	return nil
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

// dropScript drops the entries KEYS and returns how many were live.
//
//	ARGV: now µs
var dropScript = redis.NewScript(`#!lua flags=allow-oom
local n = 0
for _, k in ipairs(KEYS) do
  local x = redis.call('HGET', k, 'x')
  if x and tonumber(x) > tonumber(ARGV[1]) then n = n + 1 end
  redis.call('DEL', k)
end
return n
`)

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
// at may be dropped too.
//
// Records are not collapsed as the Memory store's are: each lives for
// Keep, by Redis's clock, and costs Redis about a hundred bytes, so a
// flood of purges is bounded by Keep and Redis's maxmemory.
func (s *Store) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	outer := ctx
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("redisstore: %w", err)
	}
	now := s.now()
	atUS, nowUS := micros(at, true), micros(now, false)
	keepMS := max(s.keep.Milliseconds(), 1)
	if !prefix {
		cctx, cancel, err := s.call(ctx)
		if err != nil {
			return 0, err
		}
		defer cancel()
		n, err := purgeKeyScript.Run(cctx, s.rdb, []string{s.entryKey(key), s.recordKey(key)}, atUS, keepMS, nowUS).Int()
		if err != nil {
			return 0, fail(outer, "purge", key, err)
		}
		return n, nil
	}

	cctx, cancel, err := s.call(ctx)
	if err != nil {
		return 0, err
	}
	err = recordPrefixScript.Run(cctx, s.rdb, []string{s.prefixesKey()}, atUS, key, micros(now.Add(-s.keep), false), keepMS).Err()
	cancel()
	if err != nil {
		return 0, fail(outer, "purge", key, err)
	}
	pattern := globEscape(s.entryKey(key)) + "*"
	n := 0
	var cursor uint64
	for {
		cctx, cancel, err := s.call(ctx)
		if err != nil {
			return n, err
		}
		var keys []string
		keys, cursor, err = s.rdb.Scan(cctx, cursor, pattern, scanCount).Result()
		cancel()
		if err != nil {
			return n, fail(outer, "purge", key, err)
		}
		if len(keys) > 0 {
			if n, err = s.drop(ctx, keys, nowUS, n); err != nil {
				return n, fail(outer, "purge", key, err)
			}
		}
		if cursor == 0 {
			return n, nil
		}
	}
}

// drop drops the entries under the Redis keys keys, in a call of its own,
// and adds the live ones to n.
func (s *Store) drop(ctx context.Context, keys []string, nowUS int64, n int) (int, error) {
	ctx, cancel, err := s.call(ctx)
	if err != nil {
		return n, err
	}
	defer cancel()
	k, err := dropScript.Run(ctx, s.rdb, keys, nowUS).Int()
	return n + k, err
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
// cache.Entry.UnmarshalBinary, which only reads its input and copies out
// what it keeps: a 64 KiB value is copied once on its way from Redis,
// not twice.
func readOnly(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
