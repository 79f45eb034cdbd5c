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

// ErrTooLarge is returned by Lease.Put for a body over MaxObjectBytes.
var ErrTooLarge = errors.New("fleet: body larger than the shared tier's object limit")

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

// await registers a waiter for a wake-up of key. The Claim that waits
// registers before it looks in Redis: a wake-up published between its
// look and its wait then still reaches it.
func (f *Fleet) await(key string) chan struct{} {
	ch := make(chan struct{})
	f.mu.Lock()
	f.waiters[key] = append(f.waiters[key], ch)
	f.mu.Unlock()
	return ch
}

// unwait removes the waiter ch of key, if a wake-up has not already.
func (f *Fleet) unwait(key string, ch chan struct{}) {
	if ch == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.waiters[key]
	for i, c := range w {
		if c == ch {
			w = append(w[:i], w[i+1:]...)
			break
		}
	}
	if len(w) == 0 {
		delete(f.waiters, key)
	} else {
		f.waiters[key] = w
	}
}

// wake wakes every waiter of key.
func (f *Fleet) wake(key string) {
	f.mu.Lock()
	w := f.waiters[key]
	delete(f.waiters, key)
	f.mu.Unlock()
	for _, ch := range w {
		close(ch)
	}
}

// Use is what a Judge makes of an entry the shared tier holds.
type Use int

const (
	// Fetch: not good enough; the caller needs a new response.
	Fetch Use = iota
	// Take: serve it (a fresh response, a Vary marker, a pass mark).
	Take
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

	// Local says the holder of the last lease left a local-only mark:
	// the caller fetches on its own. Entry is then the stale response
	// the shared tier holds, if any, which may stand in for a failure.
	Local bool
}

// Claim returns, for key, an entry of the shared tier that judge takes, or
// the lease to fetch the key for the whole fleet. While another replica
// holds the lease and nothing is taken, it waits to be woken (it registers
// for the wake-up before it looks, and looks again every Recheck in case
// the message was lost), until ctx ends. A lease whose holder died expires,
// and one waiter takes it over.
//
// A zero Claim (no Entry, no Lease) says: fetch on your own, without the
// fleet. Claim returns one when Redis fails or the breaker is open, and
// when ctx ends while it waits; and one with Local, and the stale entry if
// there is one, when the holder left a local-only mark. It
// counts and logs its failures itself, and never returns an error.
func (f *Fleet) Claim(ctx context.Context, key string, judge Judge) Claim {
	if f.closing.Err() != nil {
		return Claim{}
	}
	token := f.id + "-" + strconv.FormatUint(f.tokens.Add(1), 36)
	var ch chan struct{}
	defer func() { f.unwait(key, ch) }()
	// force asks for the lease even of a fresh entry: the judge wants
	// something newer. waited and woken tell a takeover (the lease
	// expired under a holder that never released it) from a hand-over.
	force, waited, woken := false, false, false
	for {
		f.unwait(key, ch)
		ch = f.await(key)
		found, err := f.lookup(ctx, key, token, force)
		if err != nil && !errors.Is(err, redisstore.ErrUndecodable) {
			// Counted by call; an undecodable entry is a miss, with
			// the lease outcome reported beside it.
			f.stats.unavailable.Add(1)
			return Claim{}
		}
		e := found.Entry
		if found.LocalOnly {
			f.stats.localMarks.Add(1)
			c := Claim{Local: true}
			if e != nil && e.Kind == cache.Response {
				c.Entry, c.Expires = e, found.Expires
			}
			return c
		}
		use := Fetch
		if e != nil {
			use = judge(e)
		}
		switch found.Lease {
		case redisstore.NoLease: // fresh: no lease asked for
			if e != nil && use == Take {
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
			if force { // Acquire always asks; nothing to wait for
				f.stats.unavailable.Add(1)
				return Claim{}
			}
			force = true
			continue
		case redisstore.LeaseTaken:
			if e != nil && use == Take {
				f.release(ctx, key, token)
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
			f.stats.taken.Add(1)
			if waited && !woken {
				f.stats.takeovers.Add(1)
			}
			c := Claim{Lease: f.newLease(ctx, key, token)}
			if e != nil && e.Kind == cache.Response {
				c.Entry, c.Expires = e, found.Expires
			}
			return c
		case redisstore.LeaseHeld:
			if e != nil && use == Take {
				f.stats.hits.Add(1)
				return Claim{Entry: e, Expires: found.Expires}
			}
		}
		if !waited {
			waited = true
			f.stats.waited.Add(1)
		}
		force = false
		t := time.NewTimer(f.recheck)
		select {
		case <-ch:
			woken = true
			f.stats.wokenByMessage.Add(1)
		case <-t.C:
			f.stats.wokenByRecheck.Add(1)
		case <-ctx.Done():
			t.Stop()
			f.stats.abandoned.Add(1)
			return Claim{}
		case <-f.closing.Done():
			t.Stop()
			return Claim{}
		}
		t.Stop()
	}
}

// lookup is Store.Lookup, or Acquire when force is set, through the
// breaker. It counts an undecodable entry, and logs the first.
func (f *Fleet) lookup(ctx context.Context, key, token string, force bool) (redisstore.Found, error) {
	var found redisstore.Found
	o, fn := opLookup, f.store.Lookup
	if force {
		o, fn = opAcquire, f.store.Acquire
	}
	err := f.call(ctx, o, func(ctx context.Context) (err error) {
		found, err = fn(ctx, key, token, f.leaseTTL)
		return err
	})
	if errors.Is(err, redisstore.ErrUndecodable) {
		f.stats.decodeErrors.Add(1)
		f.decodeOnce.Do(func() {
			f.log.Warn("fleet: an entry in Redis does not decode; taken as a miss (logged once)", "err", err)
		})
	}
	return found, err
}

// release gives back a lease, waking the waiters. It runs even if ctx has
// ended, bounded by Timeout: a lease left behind makes every waiter wait
// for its expiry.
func (f *Fleet) release(ctx context.Context, key, token string) error {
	return f.call(context.WithoutCancel(ctx), opRelease, func(ctx context.Context) error {
		return f.store.Release(ctx, key, token)
	})
}

// Lease is a replica's right to fetch one key for the fleet.
type Lease struct {
	f          *Fleet
	key, token string
	stop       chan struct{} // closed by Release: renewal ends

	mu       sync.Mutex
	err      error // the first failed call on the lease
	released bool
}

// newLease returns the lease of key held by token, and starts renewing it
// until Release, the end of ctx, or Close.
func (f *Fleet) newLease(ctx context.Context, key, token string) *Lease {
	l := &Lease{f: f, key: key, token: token, stop: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed { // else Close may be waiting already: the lease just expires
		f.renewals.Add(1)
		go l.renew(ctx)
	}
	return l
}

// renew renews the lease every third of LeaseTTL, so that two renewals
// can fail to arrive in time before it expires. A failed renewal stops
// renewing: the lease expires, and a waiter takes it over.
func (l *Lease) renew(ctx context.Context) {
	f := l.f
	defer f.renewals.Done()
	t := time.NewTicker(max(f.leaseTTL/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-l.stop:
			return
		case <-ctx.Done():
			return
		case <-f.closing.Done():
			return
		}
		var ok bool
		err := f.call(ctx, opRenew, func(ctx context.Context) (err error) {
			ok, err = f.store.Renew(ctx, l.key, l.token, f.leaseTTL)
			return err
		})
		if err != nil {
			return
		}
		if !ok {
			select {
			case <-l.stop: // released meanwhile: not lost
			default:
				f.stats.lost.Add(1)
				f.log.Debug("fleet: lease lost before its release", "key", l.key)
			}
			return
		}
		f.stats.renewed.Add(1)
	}
}

// errNoLease is returned by Put on a nil Lease.
var errNoLease = errors.New("fleet: no lease")

// CondFor is the condition for writing e, an entry that crosses between
// a replica and the shared tier, to a store: to Redis (Lease.Put), and to
// a replica's memory from Redis (the proxy's promotion). No purge recorded
// at or after since may forbid it, and a pass mark never replaces a live
// entry. A pass mark says only that one fetch, which found nothing stored,
// got an answer it could not share: an answer that may be one client's
// own (a 400 to a field the origin refuses, say). It must not take away
// a copy that another fetch stored, in Redis or in the memory of a
// replica (a body too large for Redis lives only there), and that stands
// in for a failing origin (RFC 5861 section 4).
func CondFor(e *cache.Entry, since time.Time) cache.Cond {
	return cache.Cond{Since: since, IfAbsent: e.Kind == cache.PassMark}
}

// Put writes e under key (the leased key, or a key its fetch wrote
// beside it: a variant and its Vary marker) to the shared tier for ttl,
// fresh until fresh (Claim takes a fresh entry without a lease), if
// CondFor(e, since) holds: else cache.ErrPurged (a purge since), or
// cache.ErrConflict (a pass mark where a live entry is). A body
// over MaxObjectBytes is not written (ErrTooLarge). After a call on the
// lease fails, the lease makes no further call: Put returns that failure
// at once.
func (l *Lease) Put(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, fresh, since time.Time) error {
	if l == nil {
		return errNoLease
	}
	if err := l.failure(); err != nil {
		return err
	}
	if int64(len(e.Body)) > l.f.maxObject {
		return ErrTooLarge
	}
	err := l.f.call(ctx, opSet, func(ctx context.Context) error {
		return l.f.store.SetFresh(ctx, key, e, ttl, fresh, CondFor(e, since))
	})
	if err != nil && !answered(err) {
		l.fail(err)
	}
	return err
}

func (l *Lease) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

func (l *Lease) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// Release ends the lease: it stops renewing it and, in the background so
// that no client waits on it, with localFor > 0 leaves a local-only mark
// on the key for localFor (unless a call on the lease failed), then
// deletes the lease if it is still this one's (compare and delete) and
// wakes the replicas waiting for the key. The delete is tried even after
// a failed call: a lease left behind makes every waiter wait out its
// LeaseTTL. Always call it, once; it is safe on a nil Lease. Close waits
// for what it started.
//
// It runs even when ctx has ended, each call bounded by Timeout: a fetch
// that timed out is the likeliest to leave a local-only mark.
func (l *Lease) Release(ctx context.Context, localFor time.Duration) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return
	}
	l.released = true
	close(l.stop)
	failed := l.err != nil
	l.mu.Unlock()
	f := l.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return // the lease expires
	}
	f.renewals.Add(1)
	go func() {
		defer f.renewals.Done()
		ctx := context.WithoutCancel(ctx)
		if localFor > 0 && !failed {
			f.call(ctx, opSet, func(ctx context.Context) error { //nolint:errcheck // counted; the release goes on
				return f.store.MarkLocal(ctx, l.key, localFor)
			})
		}
		f.release(ctx, l.key, l.token) //nolint:errcheck // counted; the lease expires
	}()
}

// Purge drops key (with prefix, every key it starts) from the shared tier,
// records the purge at at so that no fetch begun before it writes the key
// back, and tells every other replica to drop its own copy. It returns how
// many entries Redis dropped.
//
// It announces the purge even when Redis's part of it failed: the other
// replicas' memory is then at least purged. It returns the first error.
func (f *Fleet) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	var n int
	err := f.call(ctx, opPurge, func(ctx context.Context) (err error) {
		n, err = f.store.Purge(ctx, key, prefix, at)
		return err
	})
	msg := purgeMessage{from: f.id, key: key, prefix: prefix, at: at}
	perr := f.call(ctx, opPublish, func(ctx context.Context) error {
		return f.store.Publish(ctx, f.purgeCh, msg.String())
	})
	return n, cmp.Or(err, perr)
}

// announceQueue bounds the purges that Announce holds for Redis: any
// client can send unsafe requests, and their purges must not grow it.
const announceQueue = 1024

// Announce purges key, or every key under it with prefix, across the fleet
// as Purge does, at a time recorded now, but in the background: the
// caller, the answer to a client's unsafe request, does not wait on Redis
// (issue 17). Past announceQueue purges waiting, one is dropped, and
// counted: it then holds on this replica only (the caller purged its
// memory), until the entries expire elsewhere.
func (f *Fleet) Announce(key string, prefix bool, at time.Time) {
	select {
	case f.announcements <- purgeMessage{from: f.id, key: key, prefix: prefix, at: at}:
	default:
		f.stats.announced[announceDropped].Add(1)
	}
}

// announcer makes Announce's purges, one after another, until Close.
func (f *Fleet) announcer() {
	defer f.renewals.Done()
	for {
		select {
		case m := <-f.announcements:
			_, err := f.Purge(f.closing, m.key, m.prefix, m.at)
			switch {
			case err == nil:
				f.stats.announced[announceMade].Add(1)
			case f.closing.Err() != nil:
				f.stats.announced[announceDropped].Add(1)
			default:
				f.stats.announced[announceFailed].Add(1)
				f.log.Warn("purge of the shared tier failed; other replicas may serve the purged response until it expires", "uri", m.key, "prefix", m.prefix, "err", err)
			}
		case <-f.closing.Done():
			f.stats.announced[announceDropped].Add(int64(len(f.announcements)))
			return
		}
	}
}

// What became of an announced purge.
const (
	announceMade = iota
	announceFailed
	announceDropped
	numAnnounced
)

// OnPurge adds fn to the functions called, on the subscription's
// goroutine, for each purge another replica announces, and returns the
// function that removes it again: every proxy on the Fleet hears every
// purge, and one that is shut down, none.
func (f *Fleet) OnPurge(fn func(key string, prefix bool, at time.Time)) (stop func()) {
	f.subMu.Lock()
	defer f.subMu.Unlock()
	f.lastSub++
	id := f.lastSub
	f.setSubscribers(func(m map[int64]func(string, bool, time.Time)) { m[id] = fn })
	return func() {
		f.subMu.Lock()
		defer f.subMu.Unlock()
		f.setSubscribers(func(m map[int64]func(string, bool, time.Time)) { delete(m, id) })
	}
}

// setSubscribers replaces the subscribers by a copy that change made,
// with subMu held, so that purged reads them without a lock.
func (f *Fleet) setSubscribers(change func(map[int64]func(string, bool, time.Time))) {
	m := make(map[int64]func(string, bool, time.Time))
	if old := f.subscribers.Load(); old != nil {
		for id, fn := range *old {
			m[id] = fn
		}
	}
	change(m)
	f.subscribers.Store(&m)
}

// purged handles a message on the purge channel.
func (f *Fleet) purged(payload string) {
	m, ok := parsePurge(payload)
	if !ok {
		f.stats.purgesDropped.Add(1)
		return
	}
	if m.from == f.id {
		return // this replica's own: its caller purged its memory already
	}
	f.stats.purgesReceived.Add(1)
	if subs := f.subscribers.Load(); subs != nil {
		for _, fn := range *subs {
			fn(m.key, m.prefix, m.at)
		}
	}
}
