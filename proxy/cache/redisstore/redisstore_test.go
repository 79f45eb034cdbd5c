package redisstore_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/proxy/cache"
	"corral/proxy/cache/acceptance"
	"corral/proxy/cache/redisstore"
	"corral/proxy/cache/redisstore/redistest"
)

// newStore returns a store on srv in a namespace of its own.
func newStore(t *testing.T, cfg redisstore.Config) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var namespaces atomic.Int64

// onEachRedis runs test on a redis-server and on a Redis Cluster, each
// started for it. client returns a client of it, closed when the test
// ends.
func onEachRedis(t *testing.T, test func(t *testing.T, url string, client func() redis.UniversalClient)) {
	t.Run("single", func(t *testing.T) {
		srv := redistest.Start(t, false)
		test(t, srv.URL, func() redis.UniversalClient {
			c := srv.Client()
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t)
		test(t, cl.URL, func() redis.UniversalClient {
			c := cl.Client()
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
}

func TestAcceptance(t *testing.T) {
	for _, mode := range []string{"tcp", "unix", "cluster"} {
		t.Run(mode, func(t *testing.T) {
			var url string
			if mode == "cluster" {
				url = redistest.StartCluster(t).URL
			} else {
				url = redistest.Start(t, mode == "unix").URL
			}
			acceptance.Run(t, func(t *testing.T, now func() time.Time) cache.Store {
				return newStore(t, redisstore.Config{
					Addr:   url,
					Prefix: "test" + strconv.FormatInt(namespaces.Add(1), 10) + ":",
					// Generous: the race detector and a busy machine
					// slow the 4 MiB value down.
					Timeout: 5 * time.Second,
					Keep:    time.Hour,
					Now:     now,
				})
			})
		})
	}
}

func TestAddr(t *testing.T) {
	srv := redistest.Start(t, false)
	for _, addr := range []string{srv.Addr, srv.URL} {
		s := newStore(t, redisstore.Config{Addr: addr, Timeout: time.Second})
		if _, err := s.Get(context.Background(), "/a"); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Get through %q: %v, want ErrNotFound", addr, err)
		}
	}
	if _, err := redisstore.New(redisstore.Config{}); err == nil {
		t.Error("New with no Client and no Addr: no error")
	}
	if _, err := redisstore.New(redisstore.Config{Addr: "redis://host:notaport/x"}); err == nil {
		t.Error("New with a bad URL: no error")
	}
}

func TestClientGiven(t *testing.T) {
	srv := redistest.Start(t, false)
	c := srv.Client()
	defer c.Close()
	s := newStore(t, redisstore.Config{Client: c, Prefix: "mine:"})
	e := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("x")}
	if err := s.Set(context.Background(), "/a", e, time.Minute, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	n, err := c.Exists(context.Background(), redisstore.EntryKey("mine:", "/a")).Result()
	if err != nil || n != 1 {
		t.Errorf("EXISTS %q = %d, %v; want 1: the prefix is not used", redisstore.EntryKey("mine:", "/a"), n, err)
	}
	s.Close()
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Errorf("the store closed the client it was given: %v", err)
	}
}

// TestGarbage: a value that does not decode is an error, not a panic and
// not an entry.
func TestGarbage(t *testing.T) {
	srv := redistest.Start(t, false)
	c := srv.Client()
	defer c.Close()
	s := newStore(t, redisstore.Config{Client: c})
	ctx := context.Background()
	for _, v := range []string{"\x02garbage", "\x01", ""} {
		c.HSet(ctx, redisstore.EntryKey("corral:", "/g"), "v", v, "x", strconv.FormatInt(time.Now().Add(time.Hour).UnixMicro(), 10))
		if e, err := s.Get(ctx, "/g"); err == nil || errors.Is(err, cache.ErrNotFound) && v != "" {
			t.Errorf("Get of %q = %v, %v; want an error", v, e, err)
		}
	}
}

const callTimeout = 50 * time.Millisecond

// within checks that f returns an error, and within the call timeout and
// some slack for a busy machine.
func within(t *testing.T, what string, f func(context.Context) error) {
	t.Helper()
	start := time.Now()
	err := f(context.Background())
	took := time.Since(start)
	if err == nil || errors.Is(err, cache.ErrNotFound) {
		t.Errorf("%s: %v, want a failure", what, err)
	}
	if took > callTimeout+500*time.Millisecond {
		t.Errorf("%s took %v, with a %v timeout", what, took, callTimeout)
	}
}

// ops are the store's calls, each as a test calls it.
func ops(s *redisstore.Store) map[string]func(context.Context) error {
	e := &cache.Entry{ID: cache.NewID(), Status: 200}
	return map[string]func(context.Context) error{
		"Get": func(ctx context.Context) error { _, err := s.Get(ctx, "/a"); return err },
		"Set": func(ctx context.Context) error {
			return s.Set(ctx, "/a", e, time.Minute, cache.Cond{Since: time.Now()})
		},
		"Delete": func(ctx context.Context) error { return s.Delete(ctx, "/a") },
		"Purge":  func(ctx context.Context) error { _, err := s.Purge(ctx, "/a", false, time.Now()); return err },
		"PurgePrefix": func(ctx context.Context) error {
			_, err := s.Purge(ctx, "/", true, time.Now())
			return err
		},
	}
}

// TestKilledAndRestarted: with Redis gone every call fails within its
// timeout; once Redis is back, calls succeed again.
func TestKilledAndRestarted(t *testing.T) {
	srv := redistest.Start(t, false)
	s := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: callTimeout})
	ctx := context.Background()
	e := &cache.Entry{ID: cache.NewID(), Status: 200}
	if err := s.Set(ctx, "/a", e, time.Minute, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	for name, op := range ops(s) {
		within(t, name+" with Redis killed", op)
	}
	srv.Restart()
	for name, op := range ops(s) {
		if err := op(ctx); err != nil && !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%s after a restart: %v", name, err)
		}
	}
	if err := s.Set(ctx, "/a", e, time.Minute, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "/a"); err != nil {
		t.Errorf("Get after a restart: %v", err)
	}
}

// TestPaused: a Redis that takes no commands (CLIENT PAUSE) costs a
// call its timeout and no more; after the pause, calls succeed again.
func TestPaused(t *testing.T) {
	srv := redistest.Start(t, false)
	s := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: callTimeout})
	ctx := context.Background()
	if _, err := s.Get(ctx, "/a"); !errors.Is(err, cache.ErrNotFound) {
		t.Fatal(err)
	}
	admin := srv.Client()
	defer admin.Close()
	const pause = 2 * time.Second
	if err := admin.Do(ctx, "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	for name, op := range ops(s) {
		within(t, name+" with Redis paused", op)
	}
	if time.Since(paused) >= pause {
		t.Fatal("the pause ended before the calls: lengthen it")
	}
	if err := admin.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	for name, op := range ops(s) {
		if err := op(ctx); err != nil && !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("%s after the pause: %v", name, err)
		}
	}
}

// TestCallerDeadline: a caller's deadline shorter than the store's
// timeout is the one that holds.
func TestCallerDeadline(t *testing.T) {
	srv := redistest.Start(t, false)
	s := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: time.Minute})
	admin := srv.Client()
	defer admin.Close()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", 2000, "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	defer admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	start := time.Now()
	_, err := s.Get(ctx, "/a")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get past the caller's deadline: %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Get took %v past a %v deadline", took, callTimeout)
	}
}

// TestPurgePrefixGlob: a prefix purge matches the prefix as it is, not as
// a SCAN pattern, and braces in keys move no hash tag.
func TestPurgePrefixGlob(t *testing.T) { onEachRedis(t, testPurgePrefixGlob) }

func testPurgePrefixGlob(t *testing.T, url string, _ func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	ctx := context.Background()
	keys := []string{"/a*", "/a*/1", "/a[b]", "/a?", "/a\\", "/ab", "/a*b", "/a{", "/a{b}", "/z}e:/a*", "{x}e:/a*"}
	for _, k := range keys {
		if err := s.Set(ctx, k, &cache.Entry{ID: cache.NewID(), Status: 200}, time.Hour, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		prefix string
		n      int
	}{{"/a*", 3}, {"/a[", 1}, {"/a?", 1}, {"/a\\", 1}, {"/a{", 2}, {"/z}", 1}, {"{x}", 1}} {
		if n, err := s.Purge(ctx, tt.prefix, true, time.Now()); err != nil || n != tt.n {
			t.Errorf("Purge(%q, prefix) = %d, %v; want %d", tt.prefix, n, err, tt.n)
		}
	}
	if _, err := s.Get(ctx, "/ab"); err != nil {
		t.Errorf("Get(/ab) after purges of other prefixes: %v", err)
	}
}

// TestPurgePrefixMany: a prefix purge walks a namespace larger than one
// SCAN step, and leaves other namespaces alone.
func TestPurgePrefixMany(t *testing.T) { onEachRedis(t, testPurgePrefixMany) }

func testPurgePrefixMany(t *testing.T, url string, _ func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	other := newStore(t, redisstore.Config{Addr: url, Prefix: "other:", Timeout: 5 * time.Second})
	ctx := context.Background()
	const n = 1200
	for i := range n {
		e := &cache.Entry{ID: cache.NewID(), Status: 200}
		if err := s.Set(ctx, "/many/"+strconv.Itoa(i), e, time.Hour, cache.Cond{}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := other.Set(ctx, "/many/"+strconv.Itoa(i), e, time.Hour, cache.Cond{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, err := s.Purge(ctx, "", true, time.Now()); err != nil || got != n {
		t.Errorf("Purge of everything = %d, %v; want %d", got, err, n)
	}
	if _, err := other.Get(ctx, "/many/100"); err != nil {
		t.Errorf("Get from another namespace after a purge of everything: %v", err)
	}
}

// TestFull: a Redis out of memory with noeviction refuses writes with an
// error; reads and purges go on.
func TestFull(t *testing.T) {
	srv := redistest.Start(t, false)
	s := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: 5 * time.Second})
	ctx := context.Background()
	small := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("small")}
	if err := s.Set(ctx, "/small", small, time.Hour, cache.Cond{}); err != nil {
		t.Fatal(err)
	}
	admin := srv.Client()
	defer admin.Close()
	for _, kv := range [][2]string{{"maxmemory-policy", "noeviction"}, {"maxmemory", "1"}} {
		if err := admin.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	big := &cache.Entry{ID: cache.NewID(), Status: 200, Body: make([]byte, 1<<20)}
	err := s.Set(ctx, "/big", big, time.Hour, cache.Cond{})
	if err == nil || errors.Is(err, cache.ErrConflict) || errors.Is(err, cache.ErrPurged) {
		t.Errorf("Set into a full Redis: %v, want a failure", err)
	}
	if _, err := s.Get(ctx, "/small"); err != nil {
		t.Errorf("Get from a full Redis: %v", err)
	}
	// A purge frees memory: it runs however full Redis is.
	if n, err := s.Purge(ctx, "/small", false, time.Now()); err != nil || n != 1 {
		t.Errorf("Purge in a full Redis = %d, %v; want 1", n, err)
	}
	if n, err := s.Purge(ctx, "/", true, time.Now()); err != nil || n != 0 {
		t.Errorf("Purge of a prefix in a full Redis = %d, %v; want 0", n, err)
	}
}

// TestTwoReplicas: two stores on one namespace, as two replicas would
// be: a purge through one refuses the late write of the other, and an
// entry written through one is read through the other.
func TestTwoReplicas(t *testing.T) { onEachRedis(t, testTwoReplicas) }

func testTwoReplicas(t *testing.T, url string, _ func() redis.UniversalClient) {
	a := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	b := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	ctx := context.Background()
	began := time.Now()
	if _, err := a.Purge(ctx, "/k", false, began.Add(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	e := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("old")}
	if err := b.Set(ctx, cache.VariantKey("/k", 1, "gzip"), e, time.Hour, cache.Cond{Since: began}); !errors.Is(err, cache.ErrPurged) {
		t.Errorf("Set through b of a fetch begun before a's purge: %v, want ErrPurged", err)
	}
	if err := b.Set(ctx, "/k", e, time.Hour, cache.Cond{Since: began.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	got, err := a.Get(ctx, "/k")
	if err != nil || got.ID != e.ID {
		t.Errorf("Get through a of b's entry = %v, %v", got, err)
	}
}

// TestLayout: a key's entry, its variants and its lease share one slot of
// a cluster, whatever braces the key holds; a prefix with a brace, which
// would move the tag, is refused.
func TestLayout(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := cl.Client()
	defer c.Close()
	ctx := context.Background()
	for _, base := range []string{"/a", "/x{y}z", "{", "}", "/{}", ""} {
		want := c.ClusterKeySlot(ctx, redisstore.EntryKey("corral:", base)).Val()
		for _, k := range []string{
			redisstore.EntryKey("corral:", cache.VariantKey(base, 1, "gzip")),
			redisstore.EntryKey("corral:", cache.VariantKey(base, 2, "br{")),
			redisstore.LeaseKey("corral:", base),
		} {
			if got := c.ClusterKeySlot(ctx, k).Val(); got != want {
				t.Errorf("slot of %q = %d, want %d (the slot of %q's entry)", k, got, want, base)
			}
		}
	}
	for _, p := range []string{"a{", "}b:", "{x}:"} {
		if _, err := redisstore.New(redisstore.Config{Addr: cl.URL, Prefix: p}); err == nil {
			t.Errorf("New with prefix %q: no error", p)
		}
	}
}

// TestPendingUnseen: in a Cluster, a Set checks the prefix records after
// its write, which no reader sees until the check is done; refused, it
// leaves nothing behind. (On a single Redis the one script checks them.)
func TestPendingUnseen(t *testing.T) {
	srv := redistest.StartCluster(t)
	ctx := context.Background()
	reader := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: 5 * time.Second})
	c := srv.Client()
	defer c.Close()
	checks := 0
	c.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if cmd.Name() != "zrangebyscore" {
			return next(ctx, cmd)
		}
		checks++
		if e, err := reader.Get(ctx, "/p/a"); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("Get during the check of prefix records = %v, %v; want ErrNotFound", e, err)
		}
		if f, err := reader.Lookup(ctx, "/p/a", "reader", 0); err != nil || f.Entry != nil {
			t.Errorf("Lookup during the check of prefix records = %+v, %v; want no entry", f, err)
		}
		return next(ctx, cmd)
	}))
	s := newStore(t, redisstore.Config{Client: c, Timeout: 5 * time.Second})
	began := time.Now()
	e := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("x")}
	must(t, s.Set(ctx, "/p/a", e, time.Hour, cache.Cond{Since: began}))
	if got, err := reader.Get(ctx, "/p/a"); err != nil || got.ID != e.ID {
		t.Errorf("Get after the Set = %v, %v; want the entry", got, err)
	}
	if _, err := reader.Purge(ctx, "/p/", true, began.Add(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "/p/a", e, time.Hour, cache.Cond{Since: began}); !errors.Is(err, cache.ErrPurged) {
		t.Errorf("Set of a fetch begun before a prefix purge: %v, want ErrPurged", err)
	}
	if n := c.Exists(ctx, redisstore.EntryKey("corral:", "/p/a")).Val(); n != 0 {
		t.Errorf("a refused write left its entry behind")
	}
	if checks != 2 {
		t.Errorf("%d checks of the prefix records, want 2", checks)
	}
}

// Unsafe requests from clients purge their URLs, long ones too: a purge
// record costs Redis tens of bytes whatever the URL's length, and still
// refuses the write it is for.
func TestPurgeRecordsAreSmall(t *testing.T) {
	srv := redistest.Start(t, false)
	s := newStore(t, redisstore.Config{Addr: srv.URL, Timeout: 5 * time.Second})
	ctx := context.Background()
	long := "/x?" + strings.Repeat("a", 60000)
	began := time.Now()
	if _, err := s.Purge(ctx, long, false, began.Add(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	c := srv.Client()
	defer c.Close()
	keys := c.Keys(ctx, "*").Val()
	if len(keys) != 1 || len(keys[0]) > 64 {
		t.Errorf("a purge of a 60 kB URL left the keys %.100q", keys)
	}
	e := &cache.Entry{ID: cache.NewID(), Status: 200}
	if err := s.Set(ctx, long, e, time.Hour, cache.Cond{Since: began}); !errors.Is(err, cache.ErrPurged) {
		t.Errorf("Set of a fetch begun before the purge: %v, want ErrPurged", err)
	}
}

// TestScriptsReadTheEncodedID runs the Lua that the conditional scripts
// compare IDs with against an entry as the cache encodes it: the scripts
// and the encoding agree on where the ID sits (cache.IDOffset), or an
// IfID write would never match, or match the wrong bytes.
func TestScriptsReadTheEncodedID(t *testing.T) {
	srv := redistest.Start(t, false)
	c := srv.Client()
	defer c.Close()
	e := &cache.Entry{Kind: cache.Response, ID: 0x0102030405060708, Status: 200, Body: []byte("body")}
	v, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Eval(context.Background(), redisstore.LuaEntryID+"return entryID(ARGV[1])", nil, v).Text()
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x01\x02\x03\x04\x05\x06\x07\x08"; got != want {
		t.Errorf("the scripts read the ID %q out of an encoded entry, want %q", got, want)
	}
}
