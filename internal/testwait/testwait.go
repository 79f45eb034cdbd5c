// Package testwait is how the tests of every package in corral wait: for a
// value on a channel, or, where only a real server or socket can say so,
// for a condition to hold. Either fails the test after a deadline generous
// enough for the race detector on a busy machine, rather than hang it.
package testwait

import (
	"errors"
	"runtime"
	"testing"
	"time"
)

// Timeout is how long Receive, Until and UntilNil wait before they fail
// the test: long enough never to fail a test that works, short enough to
// name the wait that hung well before the test binary's own timeout.
const Timeout = 10 * time.Second

// Receive returns what ch delivers, or fails t after Timeout, naming what
// it waited for.
func Receive[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(Timeout):
		t.Fatalf("timed out after %v waiting for %s", Timeout, what)
		panic("unreachable")
	}
}

// Until calls cond until it returns true, or fails t after Timeout,
// naming what it waited for. cond runs on the caller's goroutine, so it
// may fail t itself.
//
// Poll only for what nothing can signal: a real server or socket (Redis,
// a TCP peer), or a count kept by code under test that has no channel to
// say so. A test that owns the goroutine it waits for waits on a channel
// with Receive instead.
func Until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if poll(func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("timed out after %v waiting for %s", Timeout, what)
	}
}

// UntilNil is Until for a check that says why it does not hold yet: it
// calls check until it returns nil, or fails t after Timeout with the last
// error check returned.
func UntilNil(t testing.TB, what string, check func() error) {
	t.Helper()
	if err := poll(check); err != nil {
		t.Fatalf("timed out after %v waiting for %s: %v", Timeout, what, err)
	}
}

var errNotYet = errors.New("not yet")

// poll calls check until it returns nil, and returns nil then, or the
// last error once Timeout has passed. Between calls it yields for the
// first millisecond, for a goroutine of this process that is about to get
// there, then sleeps a few milliseconds, so that a check that asks a real
// server does not flood it.
func poll(check func() error) error {
	start := time.Now()
	for {
		err := check()
		if err == nil {
			return nil
		}
		switch waited := time.Since(start); {
		case waited > Timeout:
			return err
		case waited < time.Millisecond:
			runtime.Gosched()
		default:
			time.Sleep(5 * time.Millisecond)
		}
	}
}
