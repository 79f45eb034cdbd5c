// Package fleet lets corral replicas share one Redis: a second cache tier
// behind each replica's memory, a lease per key so that one replica asks
// the origin for the whole fleet while the others wait to be woken, and
// purges that reach every replica. Redis never fails a caller: every call
// has a short deadline and no retry, and a breaker keeps the replica
// local-only while Redis fails, until a probe succeeds.
package fleet

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/proxy/cache"
)

// Defaults for the Config fields left zero.
const (
	DefaultTimeout         = 50 * time.Millisecond
	DefaultMaxObjectBytes  = 1 << 20
	DefaultLeaseTTL        = 2 * time.Second
	DefaultRecheck         = 250 * time.Millisecond
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = time.Second
)

// LocalOnly is the Reason of the PassMark a lease holder leaves when what
// it fetched is not in the shared tier (too large for it, not storable, or
// the fetch failed): the replicas that wait fetch on their own at once,
// each coalescing its own clients, instead of queueing one after another.
// Claim never hands such a mark to its caller.
const LocalOnly = "fleet-local-only"

// ErrTooLarge is returned by Lease.Put for a body over MaxObjectBytes.
var ErrTooLarge = errors.New("fleet: body larger than the shared tier's object limit")

// Config configures a Fleet.
type Config struct {
	// Addr is where Redis listens: a redis://, rediss:// or unix:// URL.
	// Ignored when Client is set.
	Addr string

	// Client, when set, is used instead of one made from Addr (tests
	// use it to count commands with a hook). Its retries must be off and
	// its context deadlines on; Close does not close it.
	Client *redis.Client

	// Prefix starts every Redis key and channel name, so that several
	// deployments can share one Redis. Empty means "corral:".
	Prefix string

	// Timeout bounds each Redis call. Zero means DefaultTimeout.
	Timeout time.Duration

	// MaxObjectBytes is the largest body written to Redis; a larger
	// response stays in the replica's memory only. Zero means
	// DefaultMaxObjectBytes.
	MaxObjectBytes int64

	// LeaseTTL is how long a lease lives unless renewed; the holder
	// renews it every third of it while its fetch runs. A holder that
	// dies holds the key this long at most. Zero means DefaultLeaseTTL.
	LeaseTTL time.Duration

	// Recheck is how often a replica waiting for another's fetch looks
	// again without being woken, in case a wake-up was lost. Zero means
	// DefaultRecheck.
	Recheck time.Duration

	// Keep is how long purge records live in Redis (redisstore.Config).
	Keep time.Duration

	// BreakerFailures is how many failed calls in a row open the
	// breaker; BreakerCooldown how long it stays open before one probe
	// call is let through. Zero means the defaults.
	BreakerFailures int
	BreakerCooldown time.Duration

	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// Logger receives warnings (breaker opened or closed, an entry that
	// does not decode, once). Nil means slog.Default().
	Logger *slog.Logger
}

// Fleet is one replica's link to the shared tier. It is safe for
// concurrent use.
type Fleet struct{}

// New returns a Fleet for cfg and starts its one pub/sub subscription
// (wake-ups and purges), which reconnects on its own. It does not wait
// for Redis: a Redis that is down only makes the replica local-only.
func New(cfg Config) (*Fleet, error) { panic("not yet") }

// Close stops the subscription and renewals, and closes the client New
// made.
func (f *Fleet) Close() error { panic("not yet") }

// Use is what a Judge makes of an entry the shared tier holds.
type Use int

const (
	// Fetch: not good enough; the caller needs a new response.
	Fetch Use = iota
	// Take: serve it (a fresh response, a Vary marker, a pass mark).
	Take
	// TakeIfHeld: serve it if another replica holds the lease and so
	// is fetching a new one (a response within stale-while-revalidate);
	// otherwise take the lease and fetch.
	TakeIfHeld
)

// Judge says what an entry found in the shared tier is good for.
type Judge func(e *cache.Entry) Use

// Claim is what Fleet.Claim found for a key.
type Claim struct {
	// Entry is what the shared tier holds and the judge took. With a
	// Lease, it is the stale response found there (nil if none), which
	// the caller may revalidate.
	Entry *cache.Entry

	// Expires is when Entry's life in the shared tier ends.
	Expires time.Time

	// Lease, when not nil, makes the caller the replica that fetches the
	// key for the fleet: it must Put what it fetched and Release.
	Lease *Lease
}

// Claim returns, for key, an entry of the shared tier that judge takes, or
// the lease to fetch the key for the whole fleet. While another replica
// holds the lease and nothing is taken, it waits to be woken (it registers
// for the wake-up before it looks, and looks again every Recheck in case
// the message was lost), until ctx ends. A lease whose holder died expires,
// and one waiter takes it over.
//
// A zero Claim (no Entry, no Lease) says: fetch on your own, without the
// fleet. Claim returns one when Redis fails or the breaker is open, when
// the holder left a LocalOnly mark, and when ctx ends while it waits. It
// counts and logs its failures itself, and never returns an error.
func (f *Fleet) Claim(ctx context.Context, key string, judge Judge) Claim { panic("not yet") }

// Lease is a replica's right to fetch one key for the fleet.
type Lease struct{}

// Put writes e under key (the leased key, or a key its fetch wrote
// beside it: a variant and its Vary marker) to the shared tier for ttl,
// fresh until fresh (Claim takes a fresh entry without a lease), unless a
// purge recorded at or after since forbids it (cache.ErrPurged). A body
// over MaxObjectBytes is not written (ErrTooLarge). After a call on the
// lease fails, the lease makes no further call: Put returns that failure
// at once.
func (l *Lease) Put(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, fresh, since time.Time) error {
	panic("not yet")
}

// Release ends the lease: it stops renewing it and, unless a call on the
// lease failed, with localFor > 0 first leaves a LocalOnly mark on the key
// for localFor, then deletes the lease if it is still this one's (compare
// and delete) and wakes the replicas waiting for the key. Always call it,
// once; it is safe on a nil Lease.
func (l *Lease) Release(ctx context.Context, localFor time.Duration) { panic("not yet") }

// Purge drops key (with prefix, every key it starts) from the shared tier,
// records the purge at at so that no fetch begun before it writes the key
// back, and tells every other replica to drop its own copy. It returns how
// many entries Redis dropped.
func (f *Fleet) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	panic("not yet")
}

// OnPurge sets the function called, on the subscription's goroutine, for
// each purge another replica announces. Set it before serving.
func (f *Fleet) OnPurge(fn func(key string, prefix bool, at time.Time)) { panic("not yet") }
