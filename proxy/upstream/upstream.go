// Package upstream keeps a proxy from amplifying its origin's trouble: every
// request to the origin passes a rate cap, an in-flight cap and a bounded
// queue, and none is sent while the origin asked, with Retry-After, for a
// pause; what the guard holds back fails at once with a *BusyError.
package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// Config configures a Guard. The zero Config puts no cap on anything but
// the pauses the origin asks for.
type Config struct {
	// Transport sends the requests the guard lets through. If nil,
	// http.DefaultTransport is used.
	Transport http.RoundTripper

	// MaxRPS caps the requests sent per second, across all keys. Zero
	// means no cap.
	MaxRPS float64

	// MaxInflight caps the requests in flight at once, across all keys.
	// Zero means no cap.
	MaxInflight int

	// MaxQueue bounds the requests that wait for their turn under
	// MaxRPS or MaxInflight; past it a request is turned away at once.
	MaxQueue int

	// MaxWait bounds how long a request whose context has no deadline
	// may queue. Zero means as long as its context allows.
	MaxWait time.Duration

	// MaxPause caps how long an origin's Retry-After pauses a key or the
	// whole origin. Zero means 30 seconds; a negative value means that
	// Retry-After pauses nothing.
	MaxPause time.Duration

	// BasePath is the origin's own escaped path, which the guard leaves
	// out when it tells the origin's endpoints apart.
	BasePath string

	// Now is the guard's clock. If nil, time.Now is used.
	Now func() time.Time

	// Observe, if not nil, is told how long each exchange took, body
	// included.
	Observe func(time.Duration)

	// Logger receives the warning that the whole origin is paused. If
	// nil, slog.Default() is used.
	Logger *slog.Logger
}

// BusyError is what the guard answers instead of sending a request.
type BusyError struct {
	RetryAfter time.Duration // when the client might try again
	Why        string
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("upstream request not sent: %s (retry after %s)", e.Why, e.RetryAfter)
}

// Stats is what a Guard counts, read at one moment, as plain values.
type Stats struct {
	Throttled    int64     // requests turned away, ever
	Inflight     int64     // requests sent and not yet finished
	Queued       int64     // requests waiting for a token or a slot
	OriginPaused bool      // the whole origin asked for a pause that runs now
	PausedKeys   int       // keys whose own pause runs now
	LastAnswer   time.Time // when the origin last answered at all; zero before it did
}

// ParseRetryAfter parses Retry-After (RFC 9110 section 10.2.3),
// delay-seconds or an HTTP-date, into a pause from now; zero when absent or
// invalid. Callers cap it: the origin may ask for years.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return max(d, 0)
}

// neutralKey marks, in an upstream request's context, a request that
// carries nothing of one client's.
type neutralKey struct{}

// WithNeutral returns ctx marking an upstream request that carries nothing
// of any one client's (no field but those its answer varies on): what the
// origin answers it speaks of the resource, or of the proxy itself, never
// of one client. Only such answers pause anything: any other request may
// carry a spent API key, a session cookie, or a field the origin refuses,
// and its 429 or 503 is about that client (see Guard.noteRetryAfter).
func WithNeutral(ctx context.Context) context.Context {
	return context.WithValue(ctx, neutralKey{}, true)
}

func neutral(ctx context.Context) bool {
	return ctx.Value(neutralKey{}) != nil
}

// noWaitKey marks, in an upstream request's context, a request that has
// something to stand in for it.
type noWaitKey struct{}

// WithoutWait returns ctx marking an upstream request that the guard
// turns away at once, rather than queue, when the caps are full: one
// for which a stale response may stand in, so that no client waits in the
// queue for what it can have now (fetches that one client started and
// left at a tarpit may hold the slots until the upstream timeout).
func WithoutWait(ctx context.Context) context.Context {
	return context.WithValue(ctx, noWaitKey{}, true)
}

func noWait(ctx context.Context) bool {
	return ctx.Value(noWaitKey{}) != nil
}

// streamingKey marks, in an upstream request's context, a request whose
// answer streams to its one client.
type streamingKey struct{}

// WithStreaming returns ctx marking an upstream request whose answer
// streams to one client at that client's pace, as a passed-through answer
// does: the guard frees its in-flight slot once the header is in, so that
// a slow client never holds a slot the shared fetches need.
func WithStreaming(ctx context.Context) context.Context {
	return context.WithValue(ctx, streamingKey{}, true)
}

func streaming(ctx context.Context) bool {
	return ctx.Value(streamingKey{}) != nil
}
