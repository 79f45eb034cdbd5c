package redistest

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Hook is a go-redis hook made of one function, for tests that count,
// delay, fail or interleave a client's commands: it sees each command the
// client sends on its own, and next sends it. Dials and pipelines pass
// untouched.
type Hook func(ctx context.Context, cmd redis.Cmder, next redis.ProcessHook) error

func (h Hook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h Hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { return h(ctx, cmd, next) }
}

func (h Hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
