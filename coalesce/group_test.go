package coalesce

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"corral/internal/testwait"
)

// heldFetch is a fetch that counts its calls, closes started on the
// first, and returns v once release is closed.
type heldFetch struct {
	calls            atomic.Int32
	started, release chan struct{}
	v                string
}

func newHeldFetch(v string) *heldFetch {
	return &heldFetch{started: make(chan struct{}), release: make(chan struct{}), v: v}
}

func (h *heldFetch) fetch(context.Context) (string, error) {
	if h.calls.Add(1) == 1 {
		close(h.started)
	}
	<-h.release
	return h.v, nil
}

func TestOneFetchPerKeyWhileItRuns(t *testing.T) {
	var g Group[string]
	h := newHeldFetch("v")
	fetches, started, release, fetch := &h.calls, h.started, h.release, h.fetch

	// The first caller's fetch is held open; every caller after it finds
	// the flight in progress and must join it.
	first := make(chan string, 1)
	go func() {
		v, led, _ := g.Do(context.Background(), "k", fetch)
		if !led {
			v = "did not lead: " + v
		}
		first <- v
	}()
	testwait.Receive(t, started, "the first fetch")

	const n = 500
	var wg sync.WaitGroup
	results := make([]string, n)
	led := make([]bool, n)
	joined := make(chan struct{}, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], led[i], _ = g.Do(joinCtx{context.Background(), joined}, "k", fetch)
		}()
	}
	for range n {
		testwait.Receive(t, joined, "callers to join the flight")
	}
	close(release)
	wg.Wait()

	if got := testwait.Receive(t, first, "the first caller"); got != "v" {
		t.Errorf("first caller got %q", got)
	}
	if f := fetches.Load(); f != 1 {
		t.Errorf("%d fetches for one key, want 1", f)
	}
	for i := range n {
		if results[i] != "v" || led[i] {
			t.Fatalf("caller %d got %q led=%v, want the first caller's v", i, results[i], led[i])
		}
	}
}

func TestCallerLeavingDoesNotCancelTheFetch(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	fetchErr := make(chan error, 1)
	started := make(chan struct{})
	fetch := func(ctx context.Context) (string, error) {
		close(started)
		<-release
		fetchErr <- ctx.Err()
		return "v", nil
	}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "trace-1"))
	left := make(chan error, 1)
	go func() {
		_, _, err := g.Do(ctx, "k", func(fctx context.Context) (string, error) {
			if fctx.Value(ctxKey{}) != "trace-1" {
				return "", errors.New("caller's values lost")
			}
			return fetch(fctx)
		})
		left <- err
	}()
	testwait.Receive(t, started, "the fetch")
	stayed := make(chan string, 1)
	joined := make(chan struct{}, 1)
	go func() {
		v, _, _ := g.Do(joinCtx{context.Background(), joined}, "k", fetch)
		stayed <- v
	}()
	testwait.Receive(t, joined, "the second caller to join")
	cancel()
	if err := testwait.Receive(t, left, "the leaving caller"); !errors.Is(err, context.Canceled) {
		t.Errorf("leaving caller got %v, want context.Canceled", err)
	}
	close(release)
	if err := testwait.Receive(t, fetchErr, "the fetch to finish"); err != nil {
		t.Errorf("fetch's context ended with %v when its first caller left", err)
	}
	if v := testwait.Receive(t, stayed, "the remaining caller"); v != "v" {
		t.Errorf("remaining caller got %q, want v", v)
	}
}

type ctxKey struct{}

// joinCtx reports when Do selects on it: Do does so only after
// singleflight has taken the call, so by then the caller is in the flight.
type joinCtx struct {
	context.Context
	joined chan<- struct{}
}

func (c joinCtx) Done() <-chan struct{} {
	c.joined <- struct{}{}
	return c.Context.Done()
}

func TestTimeoutBoundsAHungFetch(t *testing.T) {
	g := Group[string]{Timeout: 50 * time.Millisecond}
	exited := make(chan struct{})
	_, _, err := g.Do(context.Background(), "k", func(ctx context.Context) (string, error) {
		defer close(exited)
		<-ctx.Done()
		return "", ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want DeadlineExceeded", err)
	}
	testwait.Receive(t, exited, "the hung fetch to return")
}

func TestPanicBecomesAnError(t *testing.T) {
	var g Group[string]
	_, _, err := g.Do(context.Background(), "k", func(context.Context) (string, error) { panic("boom") })
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("got %v, want a PanicError carrying boom", err)
	}
	v, _, err := g.Do(context.Background(), "k", func(context.Context) (string, error) { return "ok", nil })
	if v != "ok" || err != nil {
		t.Errorf("after the panic got %q, %v; want the key usable again", v, err)
	}
}

func TestRefreshIsOncePerKeyAndSharedWithDo(t *testing.T) {
	var g Group[string]
	h := newHeldFetch("fresh")
	fetches, started, release, fetch := &h.calls, h.started, h.release, h.fetch
	if !g.Refresh(context.Background(), "k", func() Fetch[string] { return fetch }) {
		t.Fatal("first Refresh did not start")
	}
	testwait.Receive(t, started, "the refresh")
	if g.Refresh(context.Background(), "k", func() Fetch[string] { return fetch }) {
		t.Error("second Refresh started while the first ran")
	}
	got := make(chan string, 1)
	joined := make(chan struct{}, 1)
	go func() {
		v, _, _ := g.Do(joinCtx{context.Background(), joined}, "k", fetch)
		got <- v
	}()
	testwait.Receive(t, joined, "Do to join the refresh")
	close(release)
	if v := testwait.Receive(t, got, "Do during the refresh"); v != "fresh" {
		t.Errorf("Do got %q, want the refresh's value", v)
	}
	g.Wait(context.Background()) //nolint:errcheck // no deadline
	if f := fetches.Load(); f != 1 {
		t.Errorf("%d fetches, want 1: Do joined the refresh", f)
	}
	if !g.Refresh(context.Background(), "k", func() Fetch[string] { return func(context.Context) (string, error) { return "", nil } }) {
		t.Error("Refresh after the first finished did not start")
	}
	g.Wait(context.Background()) //nolint:errcheck // no deadline
}

// TestWaitOutlastsAFetchItsCallerLeft: Wait, which shutdown relies on,
// must cover a fetch whose only caller gave up on it.
func TestWaitOutlastsAFetchItsCallerLeft(t *testing.T) {
	var g Group[string]
	h := newHeldFetch("v")
	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, _, err := g.Do(ctx, "k", h.fetch)
		left <- err
	}()
	testwait.Receive(t, h.started, "the fetch")
	cancel()
	if err := testwait.Receive(t, left, "the caller to leave"); !errors.Is(err, context.Canceled) {
		t.Fatalf("leaving caller got %v, want context.Canceled", err)
	}

	expired, stop := context.WithCancel(context.Background())
	stop()
	if err := g.Wait(expired); err == nil {
		t.Error("Wait returned nil while the abandoned fetch still ran")
	}
	close(h.release)
	if err := g.Wait(context.Background()); err != nil {
		t.Errorf("Wait after the fetch ended: %v", err)
	}
}

// TestRefreshMakesItsFetchOnlyWhenItStarts: what a refresh's fetch needs
// is built only for a refresh that runs, not for every caller that asks.
func TestRefreshMakesItsFetchOnlyWhenItStarts(t *testing.T) {
	var g Group[string]
	h := newHeldFetch("fresh")
	var made int
	start := func() Fetch[string] {
		made++
		return h.fetch
	}
	for range 3 {
		g.Refresh(context.Background(), "k", start)
	}
	testwait.Receive(t, h.started, "the refresh")
	close(h.release)
	g.Wait(context.Background()) //nolint:errcheck // no deadline
	if made != 1 {
		t.Errorf("the fetch was made %d times for one refresh, want 1", made)
	}
}

// TestWaitOutlastsWorkHandedOn: what a fetch hands on past its return
// with Go (a body streamed to its callers) is waited for as a fetch is.
func TestWaitOutlastsWorkHandedOn(t *testing.T) {
	var g Group[string]
	release, done := make(chan struct{}), make(chan struct{})
	g.Go(func() {
		<-release
		close(done)
	})
	expired, stop := context.WithCancel(context.Background())
	stop()
	if err := g.Wait(expired); err == nil {
		t.Error("Wait returned nil while the work handed on still ran")
	}
	close(release)
	if err := g.Wait(context.Background()); err != nil {
		t.Errorf("Wait after the work ended: %v", err)
	}
	testwait.Receive(t, done, "the work")
}

// TestImpatientCallerLeavesAnothersFetch: a caller that waits on another
// caller's fetch past its patience gets ErrImpatient, and the fetch goes
// on for the others; the caller whose fetch runs waits for it, patience
// or not.
func TestImpatientCallerLeavesAnothersFetch(t *testing.T) {
	var g Group[string]
	h := newHeldFetch("v")
	type result struct {
		v   string
		led bool
		err error
	}
	leader, waiter := make(chan result, 1), make(chan result, 1)
	go func() {
		v, led, err := g.DoWithin(context.Background(), "k", time.Millisecond, h.fetch)
		leader <- result{v, led, err}
	}()
	testwait.Receive(t, h.started, "the leader's fetch")
	go func() {
		v, led, err := g.DoWithin(context.Background(), "k", 10*time.Millisecond, h.fetch)
		waiter <- result{v, led, err}
	}()
	if got := testwait.Receive(t, waiter, "the impatient waiter"); !errors.Is(got.err, ErrImpatient) || got.led {
		t.Errorf("the waiter got %+v, want ErrImpatient", got)
	}
	close(h.release)
	if got := testwait.Receive(t, leader, "the leader"); got.err != nil || !got.led || got.v != "v" {
		t.Errorf("the leader got %+v, want its own fetch's v", got)
	}
}

// TestCallerTakesWhicheverFlightDeliversFirst: a caller waiting on two
// keys' fetches at once takes the first result, and leaves the other,
// which goes on to its end, and which Wait outlasts.
func TestCallerTakesWhicheverFlightDeliversFirst(t *testing.T) {
	var g Group[string]
	slow, fast := newHeldFetch("slow"), newHeldFetch("fast")
	a := g.Start(context.Background(), "a", slow.fetch)
	b := g.Start(context.Background(), "b", fast.fetch)
	testwait.Receive(t, slow.started, "the slow fetch")
	testwait.Receive(t, fast.started, "the fast fetch")
	close(fast.release)
	var got string
	select {
	case r := <-a.Done():
		t.Fatalf("the held fetch delivered %+v first", r)
	case r := <-b.Done():
		v, led, err := b.Take(r)
		if err != nil || !led {
			t.Fatalf("Take = %q, %v, %v; want the caller's own fetch's value", v, led, err)
		}
		got = v
	}
	a.Leave()
	if got != "fast" {
		t.Errorf("took %q, want fast", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait while the left fetch runs = %v, want it to wait past the deadline", err)
	}
	close(slow.release)
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := slow.calls.Load(); n != 1 {
		t.Errorf("the left fetch ran %d times, want 1", n)
	}
}
