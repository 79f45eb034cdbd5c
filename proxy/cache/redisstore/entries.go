package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"

	"corral/proxy/cache"
)

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

// readOnly returns the bytes of s without copying them, for
// cache.Entry.UnmarshalOwned, which keeps them as the entry's body: a
// string is never changed, and neither is a stored entry, so a 64 KiB
// value is not copied at all on its way from the reply into the entry.
func readOnly(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
