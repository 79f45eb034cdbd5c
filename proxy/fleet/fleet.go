// Package fleet lets corral replicas share one Redis: a second cache tier
// behind each replica's memory, a lease per key so that one replica asks
// the origin for the whole fleet while the others wait to be woken, and
// purges that reach every replica. Redis never fails a caller: every call
// has a short deadline and is not retried (on a Redis Cluster, go-redis
// may send a call again within its deadline after a redirect or a broken
// connection, which the store's scripts allow for: see redisstore), and a
// breaker keeps the replica local-only while Redis fails, until a probe
// succeeds.
package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
	"corral/proxy/metrics"
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

// Config configures a Fleet.
type Config struct {
	// Addr is where Redis listens: a redis://, rediss:// or unix:// URL,
	// or a redis+cluster:// or rediss+cluster:// URL for a Redis Cluster
	// (redisstore.Config.Addr). Ignored when Client is set.
	Addr string

	// Client, when set, is used instead of one made from Addr (tests
	// use it to count commands with a hook): a *redis.Client, or a
	// *redis.ClusterClient for a Redis Cluster. Its retries must be off and
	// its context deadlines on; Close does not close it.
	Client redis.UniversalClient

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
type Fleet struct {
	store     *redisstore.Store
	id        string // this replica's, in its purge messages
	tokens    atomic.Uint64
	leaseTTL  time.Duration
	recheck   time.Duration
	maxObject int64
	now       func() time.Time
	log       *slog.Logger
	breaker   *gobreaker.TwoStepCircuitBreaker[struct{}]

	ps      *redis.PubSub
	wakeCh  string
	purgeCh string
	done    chan struct{}   // closed when the subscription's goroutine returns
	closing context.Context // done once Close begins: waits, renewals and the warm-up stop
	stop    context.CancelFunc
	close   sync.Once

	mu       sync.Mutex
	waiters  map[string][]chan struct{} // closed by a wake-up for the key
	closed   bool
	renewals sync.WaitGroup // of the renewal goroutines, started under mu

	// subscribers are the functions OnPurge was given and not yet
	// stopped, by the number each was given under; copied on write.
	subMu       sync.Mutex
	subscribers atomic.Pointer[map[int64]func(key string, prefix bool, at time.Time)]
	lastSub     int64
	decodeOnce  sync.Once // the first undecodable entry is logged, the others counted

	announcements chan purgeMessage // Announce's, for the announcer

	stats   counters
	latency prometheus.Histogram
}

// New returns a Fleet for cfg and starts its one pub/sub subscription
// (wake-ups and purges), which reconnects on its own. It does not wait
// for Redis: a Redis that is down only makes the replica local-only.
func New(cfg Config) (*Fleet, error) {
	timeout := cmp.Or(cfg.Timeout, DefaultTimeout)
	store, err := redisstore.New(redisstore.Config{
		Client:  cfg.Client,
		Addr:    cfg.Addr,
		Prefix:  cfg.Prefix,
		Timeout: timeout,
		Keep:    cfg.Keep,
		Now:     cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	f := &Fleet{
		store:     store,
		id:        strconv.FormatUint(cache.NewID(), 16),
		leaseTTL:  cmp.Or(cfg.LeaseTTL, DefaultLeaseTTL),
		recheck:   cmp.Or(cfg.Recheck, DefaultRecheck),
		maxObject: cmp.Or(cfg.MaxObjectBytes, DefaultMaxObjectBytes),
		now:       cfg.Now,
		log:       cfg.Logger,
		wakeCh:    store.WakeChannel(),
		purgeCh:   store.PurgeChannel(),
		done:      make(chan struct{}),
		waiters:   make(map[string][]chan struct{}),

		announcements: make(chan purgeMessage, announceQueue),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "corral_redis_command_duration_seconds",
			Help:    "Time of a call to Redis, as the replica measured it.",
			Buckets: metrics.LatencyBuckets,
		}),
	}
	f.closing, f.stop = context.WithCancel(context.Background())
	if f.now == nil {
		f.now = time.Now
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	failures := cmp.Or(cfg.BreakerFailures, DefaultBreakerFailures)
	f.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1, // half-open: one probe
		Timeout:     cmp.Or(cfg.BreakerCooldown, DefaultBreakerCooldown),
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(max(failures, 1))
		},
		IsSuccessful:  func(err error) bool { return err == nil || answered(err) },
		IsExcluded:    func(err error) bool { return errors.Is(err, errCallerGone) },
		OnStateChange: f.breakerChanged,
	})

	// The first SUBSCRIBE is only a first try, bounded like any call:
	// go-redis tries again on its own until Redis answers.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	f.ps = store.Subscribe(ctx, f.wakeCh, f.purgeCh)
	cancel()
	go f.listen(f.ps.Channel())
	f.renewals.Add(1)
	go f.announcer()
	// The first calls after a start find the scripts loaded, and the
	// connection made, rather than spend their deadline on it.
	f.renewals.Add(1)
	go func() {
		defer f.renewals.Done()
		ctx, cancel := context.WithTimeout(f.closing, time.Second)
		defer cancel()
		store.Warm(ctx) //nolint:errcheck // calls work without it
	}()
	return f, nil
}

// Close stops the subscription and renewals, and closes the client New
// made.
func (f *Fleet) Close() error {
	var err error
	f.close.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.stop()
		f.mu.Unlock()
		err = f.ps.Close()
		<-f.done
		f.renewals.Wait()
		err = errors.Join(err, f.store.Close())
	})
	return err
}

// listen reads the subscription until Close closes it.
func (f *Fleet) listen(msgs <-chan *redis.Message) {
	defer close(f.done)
	for m := range msgs {
		switch m.Channel {
		case f.wakeCh:
			f.wake(m.Payload)
		case f.purgeCh:
			f.purged(m.Payload)
		}
	}
}
