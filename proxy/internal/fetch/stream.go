package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/stored"
)

// streamed hands the body of resp, whose start bb holds and which could not
// be held whole (why: body.ErrTooLarge or body.ErrFull), and which e judges
// from its header, to the clients of in's flight as a stream, so that
// they share one upstream exchange rather than go upstream each on their
// own. The stream's window is bb's buffer,
// whose reservation it takes over, or when that is smaller, a buffer of
// body.StreamWindow bytes outside the budget: one per flight, as a
// passed-through answer is copied through one buffer per request. A body
// too large to store also passes its key, as a fetch of it would, so that
// later requests go upstream on their own.
func (fc *Fetcher) streamed(ctx context.Context, in Flight, resp *http.Response, bb *body.Buffer, why error, e *stored.Entry, own http.Header) *Result {
	win, release := bb.Take()
	if cap(win) < body.StreamWindow {
		win = append(make([]byte, 0, body.StreamWindow), win...)
		release() // the window is outside the budget
		release = func() {}
	}
	d := cachestatus.BuffersFull
	if errors.Is(why, body.ErrTooLarge) {
		d = cachestatus.TooLarge
		fc.Store.MarkPass(ctx, in.VKey, string(d))
	}
	return &Result{Entry: e, Own: own, Status: resp.StatusCode, Stream: body.NewStream(win, resp.ContentLength, d, fc.MinRate, release)}
}

// exchangeContext is the context of one upstream exchange: ctx's values,
// and its deadline kept by a timer of the exchange's own rather than by
// ctx, so that lift can take it away when the body goes on streaming to
// the flight's clients past the flight (see stream): a streamed body is
// bounded, as a passed-through one is, until its header arrives, then by
// its readers' pace. end ends the exchange. timedOut returns err as
// context.DeadlineExceeded when the deadline is what ended it.
type exchangeContext struct {
	context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
}

func newExchangeContext(ctx context.Context) *exchangeContext {
	x := &exchangeContext{}
	x.Context, x.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	if d, ok := ctx.Deadline(); ok {
		x.timer = time.AfterFunc(time.Until(d), func() { x.cancel(context.DeadlineExceeded) })
	}
	return x
}

func (x *exchangeContext) lift() {
	if x.timer != nil {
		x.timer.Stop()
	}
}

func (x *exchangeContext) end() {
	x.lift()
	x.cancel(nil)
}

func (x *exchangeContext) timedOut(err error) error {
	if err != nil && errors.Is(context.Cause(x), context.DeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}
