package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/proxy/cache"
)

// What the fleet builds on: an entry may carry a fresh-until (field f,
// Unix microseconds by the writer's clock, rounded down), a key may have a
// lease (a plain string at LeaseKey(Prefix, key) holding its holder's token,
// with Redis's expiry), and replicas talk over two channels, WakeChannel
// and PurgeChannel. Each method here is one round trip.

// ErrUndecodable is wrapped by Lookup's error when the entry under the key
// does not decode: written by a corral of another encoding version, or
// garbage. The lease outcome is still reported.
var ErrUndecodable = errors.New("redisstore: entry does not decode")

// LeaseState is what Lookup did about the lease of a key.
type LeaseState int

const (
	// NoLease: no lease was asked for, because the entry was fresh or
	// leaseTTL was zero.
	NoLease LeaseState = iota
	// LeaseTaken: the caller's token now holds the lease.
	LeaseTaken
	// LeaseHeld: another token holds it.
	LeaseHeld
)

func (l LeaseState) String() string {
	switch l {
	case NoLease:
		return "none"
	case LeaseTaken:
		return "taken"
	case LeaseHeld:
		return "held"
	}
	return "lease(" + strconv.Itoa(int(l)) + ")"
}

// Found is what Lookup found under a key.
type Found struct {
	// Entry is the live entry (fresh or not), or nil.
	Entry *cache.Entry
	// Expires is when Entry's life in Redis ends (field x).
	Expires time.Time
	// Fresh says that the entry was fresh (before its field f), and so
	// that no lease was asked for unless the call forced it.
	Fresh bool
	// Lease is what became of the lease.
	Lease LeaseState
	// LocalOnly says that a MarkLocal of the key runs: the lease that
	// would have been asked for was not, and the caller fetches on its
	// own. A fresh entry comes back without it.
	LocalOnly bool
}

func (s *Store) leaseKey(key string) string { return LeaseKey(s.prefix, key) }

// WakeChannel is the channel Release publishes a key on when its lease
// ends, for the replicas waiting for it.
func (s *Store) WakeChannel() string { return s.prefix + "wake" }

// PurgeChannel is the channel on which replicas announce their purges.
func (s *Store) PurgeChannel() string { return s.prefix + "purge" }

// SetFresh is Set, and also records that e is fresh until fresh: Lookup
// hands out a fresh entry without asking for the lease. An entry written
// by Set is never fresh to Lookup.
func (s *Store) SetFresh(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, fresh time.Time, cond cache.Cond) error {
	if fresh.IsZero() {
		// The zero time would be taken for "no f field"; a time that
		// long past is never fresh anyway.
		fresh = time.Unix(0, 0)
	}
	return s.set(ctx, key, e, ttl, fresh, cond)
}

// lookupScript reads an entry and, unless it is fresh, asks for the lease
// of its key, as one step: a replica that finds no fresh entry either
// becomes the one to fetch it or learns that another is fetching it.
//
//	KEYS: entry, lease, purge records of the key and of its base key
//	      (one slot, by the hash tag), and on a single Redis the sorted
//	      set of prefix records
//	ARGV: now µs, token, lease ttl ms (0: ask for no lease), force ("1":
//	      ask for the lease even for a fresh entry), key
//
// It returns {state, v, x, fresh}: state is "none", "taken", "held" or
// "local" (a MarkLocal runs: the lease, which would have been asked for,
// was not);
// v and x are nil unless the entry is live (x after now); fresh is 1 if
// it is also before its fresh-until f, else 0. A field that is
// not a number counts as 0 (expired, not fresh) rather than failing. An
// entry not yet written (field q, see set) counts as absent, and so does
// one that a purge recorded at or after its request time (field t) has
// forbidden: a replica that missed the purge, or read the entry just
// before it, may have written back what the purge dropped (a Vary marker
// with its old generation, say). A lease the
// token already holds counts as taken: a cluster client sends a call
// again after a broken connection (within its MaxRedirects and the call's
// deadline), and the first may have run.
var lookupScript = redis.NewScript(`#!lua
local now = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'v', 'x', 'f', 'q', 'o', 't')
local live = cur[1] and not cur[4] and (tonumber(cur[2]) or 0) > now
local t = tonumber(cur[6])
if live and t then
  for i = 3, 4 do
    local r = redis.call('GET', KEYS[i])
    if r and tonumber(r) >= t then live = false end
  end
  if live and KEYS[5] then
    for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], t, '+inf')) do
      if string.sub(ARGV[5], 1, #p) == p then live = false end
    end
  end
end
local fresh = live and (tonumber(cur[3]) or 0) > now
local v, x = false, false
if live then v, x = cur[1], cur[2] end
local state = 'none'
local ask = (ARGV[4] == '1' or not fresh) and tonumber(ARGV[3]) > 0
if ask and (tonumber(cur[5]) or 0) > now then
  state = 'local'
elseif ask then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    state = 'taken'
  elseif redis.call('GET', KEYS[2]) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    state = 'taken'
  else
    state = 'held'
  end
end
return {state, v, x, fresh and 1 or 0}
`)

// Lookup returns the entry under key and, unless it is fresh, asks for
// its lease for token, to live leaseTTL (none when leaseTTL is zero). A
// fresh entry comes back with Fresh and NoLease; a stale one (live, past
// its fresh-until) with the lease's state; none, with the lease's state.
//
// An entry that does not decode comes back as none (Entry nil), with the
// lease's state and an error wrapping ErrUndecodable.
func (s *Store) Lookup(ctx context.Context, key, token string, leaseTTL time.Duration) (Found, error) {
	return s.lookup(ctx, "lookup", key, token, leaseTTL, false)
}

// Acquire is Lookup that asks for the lease even when the entry is fresh,
// for a caller that finds a fresh entry no good (Found.Fresh still says
// whether it was).
func (s *Store) Acquire(ctx context.Context, key, token string, leaseTTL time.Duration) (Found, error) {
	return s.lookup(ctx, "acquire", key, token, leaseTTL, true)
}

func (s *Store) lookup(ctx context.Context, op, key, token string, leaseTTL time.Duration, force bool) (Found, error) {
	ttl := int64(0)
	if leaseTTL > 0 {
		ttl = max(leaseTTL.Milliseconds(), 1)
	}
	f := "0"
	if force {
		f = "1"
	}
	base := key
	if i := strings.IndexByte(key, 0); i >= 0 {
		base = key[:i]
	}
	keys := []string{s.entryKey(key), s.leaseKey(key), s.recordKey(key), s.recordKey(base)}
	if s.cluster == nil {
		keys = append(keys, s.prefixesKey())
	}
	var res []any
	err := s.do(ctx, op, key, func(ctx context.Context) (err error) {
		res, err = lookupScript.Run(ctx, s.rdb, keys, micros(s.now(), false), token, ttl, f, key).Slice()
		return err
	})
	if err != nil {
		return Found{}, err
	}
	if len(res) != 4 {
		return Found{}, fail(ctx, op, key, fmt.Errorf("unexpected reply %v", res))
	}
	fresh, _ := res[3].(int64)
	found := Found{Fresh: fresh == 1}
	switch state, _ := res[0].(string); state {
	case "none":
	case "taken":
		found.Lease = LeaseTaken
	case "held":
		found.Lease = LeaseHeld
	case "local":
		found.LocalOnly = true
	default:
		return Found{}, fail(ctx, op, key, fmt.Errorf("unexpected reply %q", state))
	}
	v, _ := res[1].(string)
	x, _ := res[2].(string)
	if v == "" {
		return found, nil
	}
	us, err := strconv.ParseInt(x, 10, 64)
	if err != nil {
		return found, fail(ctx, op, key, fmt.Errorf("%w: expiry %q", ErrUndecodable, x))
	}
	e := new(cache.Entry)
	if err := e.UnmarshalOwned(readOnly(v)); err != nil {
		return found, fail(ctx, op, key, fmt.Errorf("%w: %w", ErrUndecodable, err))
	}
	found.Entry, found.Expires = e, time.UnixMicro(us)
	return found, nil
}

// markLocalScript marks a key local-only until a moment, beside its entry
// (field o), which it leaves as it is: a stale response there can still
// stand in for a failing origin. A key with no entry gets a hash of the
// mark alone, which Redis drops after ttl. Any Set replaces the mark.
//
//	KEYS: entry
//	ARGV: until µs, ttl ms
var markLocalScript = redis.NewScript(`#!lua
redis.call('HSET', KEYS[1], 'o', ARGV[1])
if redis.call('HEXISTS', KEYS[1], 'v') == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// MarkLocal tells the callers of Lookup for key, until now+ttl, to fetch
// on their own without a lease: what the lease holder fetched is not in
// Redis for them.
func (s *Store) MarkLocal(ctx context.Context, key string, ttl time.Duration) error {
	until := micros(s.now().Add(ttl), true)
	return s.do(ctx, "mark", key, func(ctx context.Context) error {
		return markLocalScript.Run(ctx, s.rdb, []string{s.entryKey(key)}, until, max(ttl.Milliseconds(), 1)).Err()
	})
}

// renewScript extends a lease if token still holds it.
//
//	KEYS: lease
//	ARGV: token, ttl ms
var renewScript = redis.NewScript(`#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

// Renew makes the lease of key live ttl from now if token holds it, and
// reports whether it did.
func (s *Store) Renew(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	var n int
	err := s.do(ctx, "renew", key, func(ctx context.Context) (err error) {
		n, err = renewScript.Run(ctx, s.rdb, []string{s.leaseKey(key)}, token, max(ttl.Milliseconds(), 1)).Int()
		return err
	})
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// releaseScript deletes a lease if token holds it, and wakes the waiters.
// It publishes even when the lease is no longer the token's: a needless
// wake-up costs a waiter one lookup, a missed one a Recheck. It only frees
// memory, so it may run on a Redis out of memory (allow-oom).
//
//	KEYS: lease
//	ARGV: token, wake channel, key
var releaseScript = redis.NewScript(`#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 0
`)

// Release ends the lease of key if token holds it, and publishes key on
// WakeChannel in any case.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.do(ctx, "release", key, func(ctx context.Context) error {
		return releaseScript.Run(ctx, s.rdb, []string{s.leaseKey(key)}, token, s.WakeChannel(), key).Err()
	})
}

// Publish publishes msg on channel.
func (s *Store) Publish(ctx context.Context, channel, msg string) error {
	return s.do(ctx, "publish", channel, func(ctx context.Context) error {
		return s.rdb.Publish(ctx, channel, msg).Err()
	})
}

// Subscribe returns a subscription to channels on the store's client. It
// does not wait for Redis: the subscription connects, and reconnects, on
// its own. The caller closes it. In a Redis Cluster, it listens on one
// node; PUBLISH on any node reaches every node's subscribers.
func (s *Store) Subscribe(ctx context.Context, channels ...string) *redis.PubSub {
	return s.rdb.Subscribe(ctx, channels...)
}

// scripts are every script the store runs.
var scripts = []*redis.Script{lookupScript, markLocalScript, renewScript, releaseScript, setScript, settleScript, purgeKeyScript, recordPrefixScript, dropScript}

// Warm loads the store's scripts into Redis (on every master of a
// Cluster), so that the first calls after a start run them at once rather
// than send them first (EVALSHA, NOSCRIPT, EVAL): within a deadline of
// tens of milliseconds, on a busy machine, that first exchange can miss.
// Calls work without it; ctx bounds it.
func (s *Store) Warm(ctx context.Context) error {
	load := func(ctx context.Context, c redis.Scripter) error {
		for _, sc := range scripts {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if s.cluster != nil {
		return s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	}
	return load(ctx, s.rdb)
}
