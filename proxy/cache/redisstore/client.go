package redisstore

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// ClusterURL reports whether addr names a Redis Cluster (a
// redis+cluster:// or rediss+cluster:// URL) and, if so, returns it with
// the scheme that redis.ParseClusterURL takes (redis:// or rediss://).
func ClusterURL(addr string) (string, bool) {
	for _, scheme := range []string{"redis", "rediss"} {
		if rest, ok := strings.CutPrefix(addr, scheme+"+cluster://"); ok {
			return scheme + "://" + rest, true
		}
	}
	return "", false
}

// newClient makes the client for addr, as Config.Addr describes it, when
// Config.Client is nil. Each call it makes goes out once (no retries, one
// dial attempt: a dead Redis costs one refused dial), bounded by the
// deadline of its context and each wait by timeout; it tells Redis
// nothing of itself (no CLIENT SETINFO, no maintenance notifications).
// go-redis has one options type for a Redis and another for a Cluster,
// with no type in common: the same three lines set both.
func newClient(addr string, timeout time.Duration) (redis.UniversalClient, error) {
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if u, ok := ClusterURL(addr); ok {
		o, err := redis.ParseClusterURL(u)
		if err != nil {
			return nil, fmt.Errorf("redisstore: %w", err)
		}
		o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
		o.DisableIdentity, o.MaintNotificationsConfig = true, off
		// A MOVED or ASK reply is no failure, only a slot that changed
		// hands: follow a few. (go-redis also tries a failed call again
		// within this bound; the call's deadline still holds.)
		o.MaxRedirects = 3
		return redis.NewClusterClient(o), nil
	}
	o, err := options(addr)
	if err != nil {
		return nil, err
	}
	o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries = true, -1, 1
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout = timeout, timeout, timeout, timeout
	o.DisableIdentity, o.MaintNotificationsConfig = true, off
	return redis.NewClient(o), nil
}

// options parses an address as Config.Addr describes it.
func options(addr string) (*redis.Options, error) {
	switch {
	case addr == "":
		return nil, errors.New("redisstore: no Client and no Addr")
	case strings.Contains(addr, "://"):
		opt, err := redis.ParseURL(addr)
		if err != nil {
			return nil, fmt.Errorf("redisstore: %w", err)
		}
		return opt, nil
	case strings.HasPrefix(addr, "/"):
		return &redis.Options{Network: "unix", Addr: addr}, nil
	default:
		return &redis.Options{Network: "tcp", Addr: addr}, nil
	}
}
