package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"corral/proxy/cache"
	"corral/proxy/cache/redisstore"
)

// op names a kind of Redis call, for the metrics.
type op int

const (
	opLookup op = iota
	opAcquire
	opSet
	opRenew
	opRelease
	opPurge
	opPublish
	numOps
)

var opNames = [numOps]string{"lookup", "acquire", "set", "renew", "release", "purge", "publish"}

// errBreakerOpen is wrapped by the error of a call the breaker skipped.
var errBreakerOpen = errors.New("fleet: Redis skipped while the breaker is open")

// errCallerGone marks, for the breaker, a call whose caller's context
// ended: what it says of Redis is unknown, so it counts neither way.
var errCallerGone = errors.New("fleet: caller gone")

// answered says that err is an answer of Redis, not a failure to get one.
func answered(err error) bool {
	return errors.Is(err, cache.ErrPurged) || errors.Is(err, cache.ErrConflict) ||
		errors.Is(err, cache.ErrNotFound) || errors.Is(err, redisstore.ErrUndecodable)
}

// call runs fn, one Redis call, through the breaker, and counts and times
// it. While the breaker is open it returns at once, with no call.
func (f *Fleet) call(ctx context.Context, o op, fn func(context.Context) error) error {
	done, err := f.breaker.Allow()
	if err != nil {
		f.stats.rejected.Add(1)
		return fmt.Errorf("%w: %s: %w", errBreakerOpen, opNames[o], err)
	}
	start := time.Now()
	err = fn(ctx)
	f.latency.Observe(time.Since(start).Seconds())
	if err == nil || answered(err) {
		f.stats.ops[o].ok.Add(1)
		done(nil)
		return err
	}
	f.stats.ops[o].failed.Add(1)
	if ctx.Err() != nil {
		done(errCallerGone)
	} else {
		done(err)
		f.log.Debug("fleet: Redis call failed", "op", opNames[o], "err", err)
	}
	return err
}

// breakerChanged logs the breaker's changes of state.
func (f *Fleet) breakerChanged(_ string, from, to gobreaker.State) {
	switch to {
	case gobreaker.StateOpen:
		if from == gobreaker.StateHalfOpen {
			// A probe failed: still down, said once already.
			f.log.Debug("fleet: Redis still failing")
			return
		}
		f.log.Warn("fleet: Redis failing; local-only until a probe succeeds")
	case gobreaker.StateClosed:
		f.log.Info("fleet: Redis answers again; shared tier back")
	default:
		f.log.Debug("fleet: probing Redis")
	}
}
