package redisstore_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/internal/testwait"
	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
)

func TestLookup(t *testing.T) { onEachRedis(t, testLookup) }

func testLookup(t *testing.T, url string, _ func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: time.Second})
	ctx := context.Background()
	now := time.Now()
	fresh := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("fresh")}
	stale := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("stale")}
	plain := &cache.Entry{ID: cache.NewID(), Status: 200, Body: []byte("plain")}
	must(t, s.SetFresh(ctx, "/fresh", fresh, time.Hour, now.Add(time.Minute), cache.Cond{}))
	must(t, s.SetFresh(ctx, "/stale", stale, time.Hour, now.Add(-time.Second), cache.Cond{}))
	must(t, s.Set(ctx, "/plain", plain, time.Hour, cache.Cond{}))
	// A plain Set over a fresh entry leaves it without a fresh-until.
	must(t, s.SetFresh(ctx, "/reset", plain, time.Hour, now.Add(time.Minute), cache.Cond{}))
	must(t, s.Set(ctx, "/reset", plain, time.Hour, cache.Cond{}))

	for _, tc := range []struct {
		key   string
		want  *cache.Entry
		fresh bool
		lease redisstore.LeaseState
	}{
		{"/fresh", fresh, true, redisstore.NoLease},
		{"/stale", stale, false, redisstore.LeaseTaken},
		{"/plain", plain, false, redisstore.LeaseTaken},
		{"/reset", plain, false, redisstore.LeaseTaken},
		{"/absent", nil, false, redisstore.LeaseTaken},
	} {
		t.Run(tc.key, func(t *testing.T) {
			got, err := s.Lookup(ctx, tc.key, "a", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if got.Fresh != tc.fresh || got.Lease != tc.lease || (got.Entry == nil) != (tc.want == nil) {
				t.Fatalf("Lookup = %+v, want entry %v, fresh %v, lease %v", got, tc.want != nil, tc.fresh, tc.lease)
			}
			if tc.want != nil && (got.Entry.ID != tc.want.ID || time.Until(got.Expires) < 59*time.Minute) {
				t.Errorf("Lookup = entry %d expiring %v, want %d in an hour", got.Entry.ID, got.Expires, tc.want.ID)
			}
			if tc.lease == redisstore.NoLease {
				return
			}
			// Another token finds it held.
			got, err = s.Lookup(ctx, tc.key, "b", time.Minute)
			if err != nil || got.Lease != redisstore.LeaseHeld {
				t.Errorf("second Lookup = %+v, %v; want the lease held", got, err)
			}
		})
	}

	// Acquire asks for the lease of a fresh entry too.
	got, err := s.Acquire(ctx, "/fresh", "a", time.Minute)
	if err != nil || !got.Fresh || got.Lease != redisstore.LeaseTaken || got.Entry == nil || got.Entry.ID != fresh.ID {
		t.Errorf("Acquire = %+v, %v; want the fresh entry and the lease", got, err)
	}
	// Lookup with no lease ttl asks for none.
	got, err = s.Lookup(ctx, "/other", "a", 0)
	if err != nil || got.Lease != redisstore.NoLease || got.Entry != nil {
		t.Errorf("Lookup with no lease = %+v, %v; want nothing", got, err)
	}
}

func TestLeaseLife(t *testing.T) { onEachRedis(t, testLeaseLife) }

func testLeaseLife(t *testing.T, url string, client func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: time.Second})
	ctx := context.Background()
	const ttl = 100 * time.Millisecond

	if got, err := s.Lookup(ctx, "/k", "a", ttl); err != nil || got.Lease != redisstore.LeaseTaken {
		t.Fatalf("Lookup = %+v, %v; want the lease", got, err)
	}
	// The same token asking again still holds it (a call sent twice).
	if got, err := s.Lookup(ctx, "/k", "a", ttl); err != nil || got.Lease != redisstore.LeaseTaken {
		t.Fatalf("Lookup again by the holder = %+v, %v; want the lease", got, err)
	}
	if ok, err := s.Renew(ctx, "/k", "b", time.Minute); err != nil || ok {
		t.Errorf("Renew by another token = %v, %v; want false", ok, err)
	}
	// It expires after ttl: another token gets it.
	testwait.Until(t, "the lease to expire", func() bool {
		got, err := s.Lookup(ctx, "/k", "b", ttl)
		if err != nil {
			t.Fatal(err)
		}
		return got.Lease == redisstore.LeaseTaken
	})
	// Its holder renews it past its ttl.
	if ok, err := s.Renew(ctx, "/k", "b", time.Hour); err != nil || !ok {
		t.Fatalf("Renew by the holder = %v, %v; want true", ok, err)
	}
	if pttl := client().PTTL(ctx, redisstore.LeaseKey("corral:", "/k")).Val(); pttl < 59*time.Minute {
		t.Errorf("PTTL after Renew = %v, want about an hour", pttl)
	}
	// Release by another token leaves it; by its holder drops it.
	must(t, s.Release(ctx, "/k", "a"))
	if got, _ := s.Lookup(ctx, "/k", "c", ttl); got.Lease != redisstore.LeaseHeld {
		t.Errorf("after another's Release: lease %v, want held", got.Lease)
	}
	must(t, s.Release(ctx, "/k", "b"))
	if got, _ := s.Lookup(ctx, "/k", "c", ttl); got.Lease != redisstore.LeaseTaken {
		t.Errorf("after the holder's Release: lease %v, want taken", got.Lease)
	}
}

func TestReleasePublishes(t *testing.T) { onEachRedis(t, testReleasePublishes) }

func testReleasePublishes(t *testing.T, url string, _ func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: time.Second})
	ctx := context.Background()
	ps := s.Subscribe(ctx, s.WakeChannel())
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	// Not the holder (there is none): it publishes anyway.
	must(t, s.Release(ctx, "/k", "nobody"))
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := ps.ReceiveMessage(rctx)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Channel != "corral:wake" || msg.Payload != "/k" {
		t.Errorf("message %q on %q, want /k on corral:wake", msg.Payload, msg.Channel)
	}
}

func TestLookupUndecodable(t *testing.T) { onEachRedis(t, testLookupUndecodable) }

func testLookupUndecodable(t *testing.T, _ string, client func() redis.UniversalClient) {
	c := client()
	s := newStore(t, redisstore.Config{Client: c, Timeout: time.Second})
	ctx := context.Background()
	x := strconv.FormatInt(time.Now().Add(time.Hour).UnixMicro(), 10)
	must(t, c.HSet(ctx, redisstore.EntryKey("corral:", "/g"), "v", "\x02garbage", "x", x).Err())
	got, err := s.Lookup(ctx, "/g", "a", time.Minute)
	if !errors.Is(err, redisstore.ErrUndecodable) || got.Entry != nil || got.Lease != redisstore.LeaseTaken {
		t.Errorf("Lookup = %+v, %v; want ErrUndecodable, no entry, the lease", got, err)
	}
	// A field f that is no number is not fresh, and no failure.
	must(t, c.HSet(ctx, redisstore.EntryKey("corral:", "/g"), "f", "soon").Err())
	if _, err := s.Lookup(ctx, "/g", "b", time.Minute); !errors.Is(err, redisstore.ErrUndecodable) {
		t.Errorf("Lookup with f not a number: %v, want ErrUndecodable", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// An entry written back after a purge (by a replica that missed it, with
// no condition) is absent to Lookup when it was fetched before the purge,
// and present when fetched after it.
func TestLookupHoldsPurgeRecords(t *testing.T) { onEachRedis(t, testLookupHoldsPurgeRecords) }

func testLookupHoldsPurgeRecords(t *testing.T, url string, _ func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	ctx := context.Background()
	now := time.Now()
	if _, err := s.Purge(ctx, "/v", false, now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key     string
		fetched time.Time
		want    bool
	}{
		{"/v", now.Add(-time.Second), false},
		{cache.VariantKey("/v", 7, "en"), now.Add(-time.Second), false},
		{"/v", now.Add(time.Second), true},
	} {
		e := &cache.Entry{ID: cache.NewID(), Status: 200, RequestTime: tc.fetched, ResponseTime: tc.fetched}
		if err := s.SetFresh(ctx, tc.key, e, time.Hour, now.Add(time.Hour), cache.Cond{}); err != nil {
			t.Fatal(err)
		}
		f, err := s.Lookup(ctx, tc.key, "t", 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Entry != nil; got != tc.want {
			t.Errorf("%q fetched %v from the purge: found %v, want %v", tc.key, tc.fetched.Sub(now), got, tc.want)
		}
	}
}

func TestWarmLoadsTheScripts(t *testing.T) { onEachRedis(t, testWarm) }

func testWarm(t *testing.T, url string, client func() redis.UniversalClient) {
	s := newStore(t, redisstore.Config{Addr: url, Timeout: 5 * time.Second})
	ctx := context.Background()
	if err := s.Warm(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := client().Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "number_of_cached_scripts:9") {
		t.Errorf("after Warm, Redis says:\n%s\nwant 9 cached scripts", info)
	}
}
