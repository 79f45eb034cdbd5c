package proxy

import (
	"context"
	"net/http"

	"corral/proxy/upstream"
)

// The proxy's side of the upstream guard (package upstream), which every
// upstream request goes through: what it tells the guard of a request,
// and the guard's answer when it sends nothing.

// withClient returns ctx carrying the address of r's client, for the
// upstream guard's count of 429s. A passed-through request gets its
// client's in Rewrite; only a flight calls this: a hit never goes
// upstream, and must not allocate.
func withClient(ctx context.Context, r *http.Request) context.Context {
	return upstream.WithClient(ctx, peerAddr(r.RemoteAddr))
}

// busyError is the upstream guard's answer instead of sending a request,
// which the proxy answers with a stale response or a 503; the proxy gives
// it too when its own buffer budget holds a request back.
type busyError = upstream.BusyError
