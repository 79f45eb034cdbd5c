// Package fakeclock is a clock for tests: it moves only when told, so
// that freshness, expiry and pauses never wait on real time.
package fakeclock

import (
	"sync"
	"time"
)

// Clock is a settable clock, safe for concurrent use; its Now is what a
// Config.Now takes.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a Clock that reads at.
func New(at time.Time) *Clock { return &Clock{now: at} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d and returns the new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}
