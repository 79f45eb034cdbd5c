// Package fetch makes a proxy's shared fetches: from a Flight, a value
// built from the request that starts it, it decides whether the origin
// needs asking at all (another flight just stored the answer; in a
// fleet, another replica did, or holds the lease), asks it once for every
// client that waits, revalidating what is stored, stores what may be
// stored, streams what cannot be held, and backs a failing key off, but
// only when the failure is the resource's and not one client's.
package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
	"corral/proxy/internal/body"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
	"corral/proxy/internal/target"
	"corral/proxy/upstream"
)

// errInterim ends a fetch that the origin answered with a 1xx status as if
// it were final.
var errInterim = errors.New("upstream answered with an interim status as final")

// Fetcher makes the shared fetches of one proxy. Its fields are set before
// its first use, and never changed.
type Fetcher struct {
	Store  *stored.Store
	Fleet  *fleet.Fleet // the tier replicas share; nil when none
	Origin target.Upstream
	Guard  *upstream.Guard // every upstream request goes through it

	Buffers   *body.Budget // what a flight's bodies are held against when it has no Budget of its own
	MaxObject int64        // the largest body held, and stored
	MinRate   int64        // the slowest a streamed body's readers may read (body.Stream)

	Timeout    time.Duration // bounds one exchange with the origin, body included
	PassTTL    time.Duration // how long a pass mark in the shared tier holds
	Revalidate time.Duration // how long a validated response satisfies a client's no-cache (freshness.Decision.UseFor)
	Ahead      bool          // refresh a response that a hit finds in its last moments of freshness (stored.Entry.RefreshAhead)

	Now   func() time.Time
	Log   *slog.Logger
	Count func(status int, err error) // counts each upstream exchange by its result
	Go    func(fn func())             // runs work a fetch hands on past its return (a stream's pump), tracked with the flights
}

// Fetch asks the origin for the resource of in, revalidating in.Stale when
// it has validators, and stores the answer when it may. It buffers at most
// MaxObject bytes of body, and only what the buffer budget lets it. Before
// it calls the origin, it looks in the store again (another flight may
// have just stored the answer: Memory), and in a fleet asks the shared
// tier (SharedTier), or takes the fleet's lease to fetch for every
// replica.
func (fc *Fetcher) Fetch(ctx context.Context, in Flight) (f *Result, err error) {
	key, vkey, stale := in.Key, in.VKey, in.Stale
	// Two requests can both miss, then run their flights one after the
	// other: the second flight starts just after the first one stored its
	// answer. Look again before calling the origin. (in.Header holds the
	// fields the variants are keyed on as the client sent them.)
	cur, vk, _ := fc.Store.Lookup(ctx, key, in.Header)
	if cur != nil && (stale == nil || cur.ID != stale.ID) && cur.Kind == cache.Response && cur.Decision.State(fc.Now()) == freshness.Fresh {
		return &Result{Source: Memory, Entry: cur, Own: cur.Header}, nil
	}
	if vkey == key && vk != key {
		// This flight is for the bare URI, but a response stored since
		// says the URI varies: the variant's own flight may be running
		// now, and a second upstream request for it must not.
		return &Result{Source: LookAgain}, nil
	}
	if !in.Shared {
		return fc.exchange(ctx, in, nil)
	}
	// Across the fleet: the shared tier's answer, or its lease.
	c, f, sharedStale := fc.claim(ctx, in)
	if f != nil {
		return f, nil
	}
	if sharedStale != nil {
		in.Stale = sharedStale // the shared tier's stale copy: revalidate it
	}
	// Claim may have waited for another replica's fetch, which left
	// nothing to share (the answer may not be stored, say): the exchange
	// that follows gets an UpstreamTimeout of its own, or the wait
	// would turn a slow answer into a 504.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fc.Timeout)
	defer cancel()
	if c.Lease == nil {
		return fc.exchange(ctx, in, nil) // on our own
	}
	defer func() {
		c.Lease.Release(context.WithoutCancel(ctx), fc.localFor(afterLeaseOf(f, err, in.Stale != nil)))
	}()
	return fc.exchange(ctx, in, c.Lease)
}

// exchange asks the origin for the resource of in, as fetchUpstream does,
// for every client that waits on the flight, with its leader's fields,
// which the origin may need. A failed validation backs off when the
// failure is not one client's own (see confirmedFailure).
func (fc *Fetcher) exchange(ctx context.Context, in Flight, lease *fleet.Lease) (*Result, error) {
	f, err := fc.fetchUpstream(ctx, in, lease)
	if stale := in.Stale; stale != nil && Failed(f, err) && fc.confirmedFailure(in, stale) {
		fc.backOff(stale, f, err, in.Neutral)
	}
	return f, err
}

// confirmedFailure reports whether a failed validation of stale by the
// flight in is the resource's rather than one client's, which must not
// make everyone's answer stale (issue 23): the flight carried nothing of
// one client's but the fields the URI varies on (a background refresh, or
// a request that sent no other field), or a request with other fields
// failed too within failureWindow. It records in's failure.
func (fc *Fetcher) confirmedFailure(in Flight, stale *stored.Entry) bool {
	if in.Neutral {
		return true
	}
	fp, now := httprule.Fingerprint(in.Header), fc.Now().UnixNano()
	last := stale.LastFailure.Swap(&stored.Failure{FP: fp, At: now})
	return last != nil && last.FP != fp && now-last.At < int64(failureWindow)
}

// failureWindow is how long one client's failed validation waits for
// another's to confirm it.
const failureWindow = 10 * time.Second

// personal reports whether e, the answer to the flight in, may be its
// leader's own rather than the resource's (Result.Personal): it goes to no
// request that sent other fields, and is neither stored nor a pass mark.
// Only an answer to a request that carried one client's fields may be
// (not a neutral one; not one with credentials, whose flight is theirs
// alone), and then:
//
//   - a status that may speak of the request (httprule.AboutTheRequest:
//     a spent quota, a refused credential or field) that the origin did
//     not let caches keep;
//   - in place of a good stored answer (a 2xx), one that may not be shared
//     (Set-Cookie, private, Vary: *, ...), which may be so because of what
//     the leader sent (its cookie): a pass mark would send every client
//     upstream on its own, and drop the copy that stands in for a failing
//     origin;
//   - in place of a good stored answer, an error or a redirect, however
//     fresh the origin made it: one client's field may have provoked it
//     (cache poisoning by denial of service), unless it is a server error
//     the stored answer stands in for anyway (standIn).
//
// In the last two cases (confirm) a refresh of the stored answer, which
// carries nothing of one client's, asks again (Result.Confirm): if the answer is
// everyone's, it replaces the stored one for everyone then. With nothing
// good stored, an answer is the only one there is: stored, shared, or a
// pass mark, as RFC 9111 says.
func personal(in Flight, e *stored.Entry, standIn bool) (personal, confirm bool) {
	if in.Neutral || in.Credentialed {
		return false, false
	}
	stale := in.Stale
	switch {
	case httprule.AboutTheRequest(e.Status) && !e.Decision.Storable:
		return true, false
	case stale == nil || stale.Kind != cache.Response || stale.Status < 200 || stale.Status >= 300:
		// Nothing good stored: the answer is the only one there is, and
		// stored, shared, or makes a pass mark as RFC 9111 says.
		return false, false
	case Passes(e.Decision, stale):
		return true, true
	}
	p := e.Status >= 300 && !(httprule.IsServerError(e.Status) && standIn)
	return p, p
}

// ErrPersonal ends an exchange whose answer may speak of its leader's
// request (see Result.Personal) and whose body could not be held: every
// client of the flight goes upstream on its own.
var ErrPersonal = errors.New("the answer to the leader's own request was too large to hold")

// fetchUpstream is the exchange with the origin of fetch: it revalidates
// in.Stale when it has validators, and stores the answer when it may, in
// memory and, holding lease, in the tier the fleet shares.
func (fc *Fetcher) fetchUpstream(ctx context.Context, in Flight, lease *fleet.Lease) (_ *Result, err error) {
	key, stale := in.Key, in.Stale
	x := newExchangeContext(ctx)
	ctx = x
	streaming := false
	defer func() {
		if !streaming {
			x.end()
		}
	}()
	out, err := http.NewRequestWithContext(ctx, http.MethodGet, fc.Origin.URL(key).String(), nil)
	if err != nil {
		return nil, err
	}
	// The variant is keyed on what goes upstream, not on what the client
	// sent: a field it names in Connection, say, never reaches the origin.
	// in.Header is sharedFetchHeader's: the policy for stored answers is
	// applied already, and corral adds its Via.
	reqHeader := in.Header
	out.Header = reqHeader.Clone()
	out.Header.Add("Via", httprule.Via)
	if stale != nil {
		if v := stale.Header.Get("ETag"); v != "" {
			out.Header.Set("If-None-Match", v)
		}
		if v := stale.Header.Get("Last-Modified"); v != "" {
			out.Header.Set("If-Modified-Since", v)
		}
	}

	// The guard says when the request left, after any wait for the
	// upstream caps: that is the request_time of RFC 9111 section 4.2.3,
	// and a wait in the queue must not age the answer.
	if len(in.Header) == 0 {
		// No client field at all, not even one the response varies on
		// (a key the origin limits by): what the origin answers it may
		// pause the URL (see upstream.WithNeutral).
		out = out.WithContext(upstream.WithNeutral(out.Context()))
	}
	if stale != nil && stale.Decision.UsableDisconnected() {
		// The stale response stands in, at once, for full upstream caps
		// (serveError), rather than its clients wait in the queue; a
		// refresh, turned away, backs off and a later hit starts it
		// again, rather than hold, queued, a flight that the clients
		// that come join and wait on.
		out = out.WithContext(upstream.WithoutWait(out.Context()))
	}
	resp, sent, err := fc.Guard.Send(out)
	err = x.timedOut(err)
	var busy *upstream.BusyError
	if errors.As(err, &busy) {
		return nil, err // never sent: not an upstream exchange
	}
	if err != nil {
		fc.Count(0, err)
		return nil, err
	}
	defer func() {
		if !streaming {
			resp.Body.Close()
		}
	}()
	respTime := fc.Now()
	if resp.StatusCode < 200 {
		// A 101 to a request that asked for no upgrade, or any other
		// interim status as the final answer (RFC 9110 section 15.2):
		// its body is the bare connection, which no timeout bounds.
		// Closing it ends the exchange now.
		fc.Count(0, errInterim)
		return nil, fmt.Errorf("%w: %d", errInterim, resp.StatusCode)
	}

	if resp.StatusCode == http.StatusNotModified && stale != nil {
		fc.Count(resp.StatusCode, nil)
		e, own := fc.Store.Revalidated(key, reqHeader, stale, resp.Header, sent, respTime)
		f := &Result{Entry: e, Own: own, Status: resp.StatusCode}
		f.Stored, f.inShared = fc.Store.Put(ctx, key, e, sent, stale, fc.sharer(ctx, lease))
		return f, nil
	}

	// The body is held against the buffer budget until it is stored
	// (and counted by the store) or dropped.
	budget := in.Budget
	if budget == nil {
		budget = fc.Buffers
	}
	bb := body.NewBuffer(budget, fc.MaxObject)
	defer bb.Release()
	err = x.timedOut(bb.ReadAll(resp.Body, resp.ContentLength))
	if errors.Is(err, body.ErrTooLarge) || errors.Is(err, body.ErrFull) {
		fc.Count(resp.StatusCode, nil)
		e, own := fc.Store.NewEntry(http.MethodGet, key, reqHeader, resp.StatusCode, resp.Header, nil, sent, respTime)
		isPersonal, _ := personal(in, e, stale != nil && stale.Decision.UsableOnError(respTime))
		switch {
		case isPersonal:
			return nil, ErrPersonal
		case errors.Is(err, body.ErrFull) && stale != nil && stale.Decision.UsableDisconnected():
			return nil, err // the stale response stands in
		}
		rest := io.MultiReader(bytes.NewReader(bb.Over()), resp.Body)
		f := fc.streamed(ctx, in, resp, bb, err, e, own)
		streaming = true
		x.lift()
		fc.Go(func() {
			defer x.end()
			defer resp.Body.Close()
			f.Stream.Pump(rest)
		})
		return f, nil
	}
	fc.Count(resp.StatusCode, err)
	if err != nil {
		return nil, fmt.Errorf("reading upstream body: %w", err)
	}
	e, own := fc.Store.NewEntry(http.MethodGet, key, reqHeader, resp.StatusCode, resp.Header, bb.Trimmed(), sent, respTime)
	standIn := stale != nil && stale.Decision.UsableOnError(respTime)
	if isPersonal, confirm := personal(in, e, standIn); isPersonal {
		// Perhaps one client's answer: never shared, stored, nor a pass
		// mark. Unless it may only have been, a request with nothing of
		// one client's asks again in the background, and what it gets is
		// everyone's.
		return &Result{Entry: e, Own: own, Status: resp.StatusCode, Personal: true, Confirm: confirm, Sent: reqHeader}, nil
	}
	if httprule.IsServerError(resp.StatusCode) && standIn {
		// The stored response stands in for the error (RFC 5861
		// section 4), which must not replace it, however cacheable.
		return &Result{Entry: e, Own: own, Status: resp.StatusCode}, nil
	}
	f := &Result{Entry: e, Own: own, Status: resp.StatusCode}
	e.FromFields = !in.Neutral && !in.Credentialed
	f.Stored, f.inShared = fc.Store.Put(ctx, key, e, sent, nil, fc.sharer(ctx, lease))
	// An error or a redirect that a request with one client's fields got,
	// in place of one that such a request got: perhaps one client keeps
	// it stored, first to ask again at each expiry with the field that
	// provokes it (cache poisoning by denial of service). A refresh,
	// with nothing of any client's, asks whether it is everyone's.
	f.Confirm = f.Stored && e.FromFields && e.Status >= 300 && stale != nil && stale.FromFields && stale.Status >= 300
	if lease != nil && Passes(e.Decision, stale) {
		// Hit-for-miss across the fleet: the other replicas' clients
		// go upstream each on their own too, rather than queue.
		f.inShared = fc.sharePass(ctx, lease, in.VKey, e.Decision.Reason, sent)
	}
	return f, nil
}
