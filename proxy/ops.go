package proxy

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Ready reports why the proxy cannot serve, or nil when it can: the
// upstream answered lately or accepts a connection now, or the store holds
// responses it could serve stale.
func (p *Proxy) Ready(ctx context.Context) error {
	if last := p.guard.Stats().LastAnswer; !last.IsZero() && p.now().Sub(last) < readyRecent {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyDialTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.origin.HostPort())
	if err == nil {
		conn.Close()
		return nil
	}
	if s := p.store.Sizer(); s != nil && s.Len() > 0 {
		return nil
	}
	return fmt.Errorf("upstream unreachable (%v) and nothing cached", err)
}

// readyRecent is how recent an upstream answer must be to count as proof
// of reachability; readyDialTimeout bounds the probe made otherwise.
const (
	readyRecent      = 10 * time.Second
	readyDialTimeout = time.Second
)
