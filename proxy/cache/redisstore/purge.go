package redisstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// scanCount is the COUNT hint of each SCAN step of a prefix purge, and so
// about the number of keys each step deletes.
const scanCount = 500

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
