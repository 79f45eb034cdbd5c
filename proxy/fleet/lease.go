package fleet

import (
	"context"
	"errors"
	"sync"
	"time"

	"corral/proxy/cache"
)

// ErrTooLarge is returned by Lease.Put for a body over MaxObjectBytes.
var ErrTooLarge = errors.New("fleet: body larger than the shared tier's object limit")

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
