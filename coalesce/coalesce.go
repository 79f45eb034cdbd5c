// Package coalesce runs at most one fetch per key at a time and hands its
// result to every caller that asked for that key while it ran. The fetch
// belongs to no caller: a caller that gives up leaves it running for the
// others, and only the group's timeout ends it early.
package coalesce

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Group coalesces fetches by key. The zero Group is ready to use and puts
// no time limit on a fetch.
type Group[V any] struct {
	// Timeout bounds each fetch, however many callers wait on it.
	Timeout time.Duration

	sf         singleflight.Group
	mu         sync.Mutex
	refreshing map[string]bool // keys with a background refresh running
	running    int             // callers whose fetch has not delivered yet
	idle       chan struct{}   // closed when running drops to zero
}

// Fetch produces the value for one key. Its context carries the values of
// the caller that started the flight but none of its cancellation.
type Fetch[V any] func(ctx context.Context) (V, error)

// Do returns the result of the fetch for key, starting one unless a fetch for
// key is already running, in which case it waits for that one instead. led
// reports whether this caller's fetch ran: false when the result came from
// another caller's. If ctx ends first, Do returns ctx.Err() at once and the
// fetch goes on for whoever else waits, or for nobody.
func (g *Group[V]) Do(ctx context.Context, key string, fetch Fetch[V]) (v V, led bool, err error) {
	return g.DoWithin(ctx, key, 0, fetch)
}

// ErrImpatient is what DoWithin returns to a caller that waited on
// another caller's fetch for as long as it would.
var ErrImpatient = errors.New("coalesce: another caller's fetch ran past the patience")

// DoWithin is Do for a caller that waits on another caller's fetch for
// patience at most (none, when it is zero or less): past it, DoWithin
// returns ErrImpatient, and the fetch goes on for whoever else waits. A
// caller whose own fetch runs waits for it as Do does.
func (g *Group[V]) DoWithin(ctx context.Context, key string, patience time.Duration, fetch Fetch[V]) (v V, led bool, err error) {
	c := g.Start(ctx, key, fetch)
	var impatient <-chan time.Time
	if patience > 0 {
		t := time.NewTimer(patience)
		defer t.Stop()
		impatient = t.C
	}
	for {
		select {
		case r := <-c.Done():
			return c.Take(r)
		case <-impatient:
			if c.Led() {
				impatient = nil // its own fetch: wait on
				continue
			}
			err = ErrImpatient
		case <-ctx.Done():
			err = ctx.Err()
		}
		c.Leave()
		return v, false, err
	}
}

// Call is one caller's wait for the fetch of a key, which it started or
// joined (Start). The caller receives the fetch's result from Done, and
// hands it to Take, or stops waiting with Leave: exactly one of the two.
// A caller may wait on several Calls at once, and take whichever
// delivers first.
type Call[V any] struct {
	g   *Group[V]
	ch  <-chan singleflight.Result
	ran atomic.Bool // this caller's fetch is the one that runs
}

// Start returns the caller's Call for the fetch for key, starting the
// fetch unless one for key is already running.
func (g *Group[V]) Start(ctx context.Context, key string, fetch Fetch[V]) *Call[V] {
	// Each caller counts as running until its flight has delivered, even
	// after it left: singleflight delivers only once the fetch returned,
	// so Wait outlasts every fetch without knowing which caller led it.
	g.begin()
	c := &Call[V]{g: g}
	// ran is written by the flight's goroutine when this caller's fetch
	// starts, and read by the caller: after the delivery, which the
	// channel orders, or before it, to know whether it leads.
	c.ch = g.sf.DoChan(key, g.run(ctx, func(ctx context.Context) (V, error) {
		c.ran.Store(true)
		return fetch(ctx)
	}))
	return c
}

// Result is what a Call's Done delivers, for Take.
type Result = singleflight.Result

// Done returns the channel the fetch's result arrives on, once.
func (c *Call[V]) Done() <-chan Result { return c.ch }

// Led reports whether the caller's own fetch is the one that runs: it
// leads the flight. Before the result arrives, false may yet turn true
// (the fetch has not started); after, it is final.
func (c *Call[V]) Led() bool { return c.ran.Load() }

// Take returns the value and error of r, received from Done, and whether
// the caller's fetch ran.
func (c *Call[V]) Take(r Result) (v V, led bool, err error) {
	c.g.end()
	if r.Err != nil {
		return v, c.ran.Load(), r.Err
	}
	return r.Val.(V), c.ran.Load(), nil
}

// Leave stops waiting: the fetch goes on, for whoever else waits, or for
// nobody.
func (c *Call[V]) Leave() {
	go func() {
		<-c.ch
		c.g.end()
	}()
}

// Refresh starts a fetch for key in the background and returns at once. It
// reports false, and does nothing, when a refresh of key is already running.
// start makes the fetch: Refresh calls it, on the caller's goroutine, only
// when the refresh starts, so that what the fetch needs is built only then.
// A Do for key while the refresh runs waits for it rather than fetching
// again, and a refresh that starts while a Do's fetch runs joins that fetch.
func (g *Group[V]) Refresh(ctx context.Context, key string, start func() Fetch[V]) bool {
	g.mu.Lock()
	if g.refreshing[key] {
		g.mu.Unlock()
		return false
	}
	if g.refreshing == nil {
		g.refreshing = make(map[string]bool)
	}
	g.refreshing[key] = true
	g.running++
	g.mu.Unlock()

	run := g.run(ctx, start())
	go func() {
		g.sf.Do(key, run) //nolint:errcheck // the fetch reports its own outcome
		g.mu.Lock()
		delete(g.refreshing, key)
		g.mu.Unlock()
		g.end()
	}()
	return true
}

// Go runs fn on a goroutine of its own, counted as a fetch until it
// returns: Wait waits for it too. It is for work a fetch hands on past its
// return, such as streaming to its callers a body it could not hold.
func (g *Group[V]) Go(fn func()) {
	g.begin()
	go func() {
		defer g.end()
		fn()
	}()
}

func (g *Group[V]) begin() {
	g.mu.Lock()
	g.running++
	g.mu.Unlock()
}

func (g *Group[V]) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.running--
	if g.running == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// Wait blocks until every fetch started so far, in the foreground or the
// background, has finished, or until ctx ends, and then returns ctx.Err().
func (g *Group[V]) Wait(ctx context.Context) error {
	g.mu.Lock()
	if g.running == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run wraps fetch so that it runs on a context detached from the caller,
// bounded by the group's timeout, and so that a panic becomes an error:
// singleflight re-panics a DoChan panic on a fresh goroutine, which would
// take the whole process down.
func (g *Group[V]) run(ctx context.Context, fetch Fetch[V]) func() (any, error) {
	return func() (v any, err error) {
		fctx := context.WithoutCancel(ctx)
		if g.Timeout > 0 {
			var cancel context.CancelFunc
			fctx, cancel = context.WithTimeout(fctx, g.Timeout)
			defer cancel()
		}
		defer func() {
			if p := recover(); p != nil {
				v, err = nil, &PanicError{Value: p, Stack: debug.Stack()}
			}
		}()
		return fetch(fctx)
	}
}

// PanicError is the error a fetch that panicked returns to its callers.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("coalesce: fetch panicked: %v", e.Value)
}
