package proxy

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"corral/internal/testwait"
	"corral/proxy/cache/redisstore/redistest"
	"corral/proxy/fleet"
)

// TestUnsafeAnswerDoesNotWaitOnRedis is issue 17's third item: every
// successful unsafe request purged its URL fleet-wide inside
// ModifyResponse, two Redis round trips on the client's answer, which
// waited up to the Redis deadline for each when Redis was slow. The
// answer goes at once, this replica's memory purged; the fleet hears of
// it in the background.
func TestUnsafeAnswerDoesNotWaitOnRedis(t *testing.T) {
	srv := redistest.Start(t, false)
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "x"))
	held, release := make(chan struct{}, 8), make(chan struct{})
	var armed atomic.Bool // from the POST on, every call waits
	c := srv.Client()
	t.Cleanup(func() { c.Close() })
	c.AddHook(redistest.Hook(func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error {
		if armed.Load() {
			held <- struct{}{}
			<-release // Redis as slow as it likes, whatever the deadline
		}
		return next(ctx, cmd)
	}))
	rs := newReplicas(t, srv, o, clk, 1, Config{}, fleet.Config{Client: c})
	p := rs.ps[0]
	get(p, "/form")
	p.Wait()
	armed.Store(true)
	answered := make(chan response, 1)
	go func() {
		r, _ := do(p, http.MethodPost, "/form")
		answered <- r
	}()
	testwait.Receive(t, held, "the fleet's purge to reach Redis")
	r := testwait.Receive(t, answered, "the POST's answer while Redis holds the purge")
	armed.Store(false)
	close(release)
	if r.Status != http.StatusOK {
		t.Errorf("the POST got %+v, want the origin's 200", r)
	}
	clk.Advance(time.Second)
	if got, _ := get(p, "/form"); got.CacheStatus != "corral; fwd=uri-miss; fwd-status=200; stored; ttl=60" {
		t.Errorf("a GET after the POST got %q, want a miss: this replica's copy purged at once", got.CacheStatus)
	}
}
