package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/fleet"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
	"corral/proxy/upstream"
)

// errInterim ends a fetch that the origin answered with a 1xx status as if
// it were final.
var errInterim = errors.New("upstream answered with an interim status as final")

// fetched is the outcome of one upstream exchange, shared by every client
// that waited on it.
type fetched struct {
	entry  *stored.Entry
	status int  // what the origin answered: 304 for a revalidation, 0 when no call was needed
	stored bool // entry went into the store

	// again says, with no entry, that the URI turned out to vary while
	// this flight waited to start: its waiters look up again and join
	// their variant's flight instead.
	again bool

	// own is entry's header before the fields named by a qualified private
	// or no-cache were removed: for the client whose request it answers.
	own http.Header

	// fromShared says, with status 0, that entry came from the tier the
	// fleet shares, not from this replica's memory.
	fromShared bool

	// stream, when not nil, is entry's body, which the fetch could not
	// hold: each client reads it from there (see stream), and entry is
	// neither stored nor shared beyond the flight.
	stream *body.Stream

	// personal says the answer may speak of its leader's own request
	// rather than of the resource (httprule.AboutTheRequest: a spent quota, a
	// refused field), which carried fields beyond those the response
	// varies on, and the origin did not let caches keep it: it is the
	// leader's, and of requests that sent the same fields (sent), never
	// stored or shared with the others.
	personal bool
	sent     http.Header

	// inShared says the fetch left its answer in the tier the fleet
	// shares, a response or a pass mark, for the replicas that wait.
	inShared bool
}

// flight is what a shared fetch starts from: a value built from the
// client request that starts or joins the flight, before it does, as
// ReverseProxy clones its outgoing request. A fetch may outlive the
// handler of the request that started it (the client left; a background
// refresh), so it reads this, never the client's request. Nothing in it
// is modified once built.
type flight struct {
	id     string        // the coalescing key (flightKey)
	key    string        // the request target: path and query
	vkey   string        // the variant key lookup found; key when the URI is not known to vary
	header http.Header   // the request fields a shared fetch sends (httprule.SharedFetchHeader)
	vary   []string      // the fields the URI is known to vary on
	stale  *stored.Entry // the stored response to validate; nil when none

	// client is the address of the client whose request leads it
	// (clientAddr); budget is what its bodies are held against: its
	// client's share of the buffer budget, or when nil (a refresh, which
	// no client leads) the whole. Set when the fetch starts.
	client netip.Addr
	budget *body.Budget

	// neutral says header carries nothing of one client's but the
	// fields the URI is known to vary on, which every client of the
	// variant sends alike.
	neutral bool

	// round is how many flights for the key came before this one in the
	// same herd, each of whose answers spoke of its own leader's request
	// (see fetchAndServe): 0 for the first.
	round int

	// shared says the fleet's tier may be read and written for it: there
	// is one, and the request carries no Authorization (an answer fetched
	// with credentials never reaches another replica).
	shared bool

	// credentialed says the request carries Authorization: its flight
	// is shared only by requests with the same credentials (flightKey),
	// whose answer is theirs as much as the leader's.
	credentialed bool

	// background says no client waits on it: a refresh.
	background bool

	// req holds the directives of the request that started it, by which
	// an answer from the shared tier is judged as one from memory is.
	req freshness.RequestDirectives
}

// newFlight builds the flight for r, a request for key with directives
// req, whose lookup found stale (or nil) under vkey, for a URI that varies
// on the fields vary. Only a request that starts or joins a flight builds
// one: a hit never does.
func (p *Proxy) newFlight(r *http.Request, req freshness.RequestDirectives, key, vkey string, vary []string, stale *stored.Entry) flight {
	h := httprule.SharedFetchHeader(r.Header)
	credentialed := r.Header["Authorization"] != nil
	return flight{
		id:           p.flightKey(r, vkey),
		key:          key,
		vkey:         vkey,
		header:       h,
		vary:         vary,
		stale:        stale,
		client:       p.clientAddr(r),
		neutral:      httprule.OnlyFields(h, vary),
		shared:       p.fleet != nil && !credentialed,
		credentialed: credentialed,
		req:          req,
	}
}

// roundID is the coalescing key of in's round (see fetchAndServe).
func (in flight) roundID() string {
	if in.round == 0 {
		return in.id
	}
	return in.id + "\x00round" + strconv.Itoa(in.round)
}

// neutralized returns in as a request that carries nothing of its client's:
// only the fields its URI varies on (RFC 9111 section 4.1), which every
// client of the variant sends alike.
func (in flight) neutralized() flight {
	h := make(http.Header, len(in.vary))
	for _, name := range in.vary {
		if vs, ok := in.header[name]; ok {
			h[name] = vs
		}
	}
	in.header, in.neutral = h, true
	return in
}

// fetch asks the origin for the resource of in, revalidating in.stale when
// it has validators, and stores the answer when it may. It buffers at most
// MaxObjectBytes of body, and only what the buffer budget lets it.
func (p *Proxy) fetch(ctx context.Context, in flight) (f *fetched, err error) {
	key, vkey, stale := in.key, in.vkey, in.stale
	// Two requests can both miss, then run their flights one after the
	// other: the second flight starts just after the first one stored its
	// answer. Look again before calling the origin. (in.header holds the
	// fields the variants are keyed on as the client sent them.)
	cur, vk, _ := p.store.Lookup(ctx, key, in.header)
	if cur != nil && (stale == nil || cur.ID != stale.ID) && cur.Kind == cache.Response && cur.Decision.State(p.now()) == freshness.Fresh {
		return &fetched{entry: cur, own: cur.Header}, nil
	}
	if vkey == key && vk != key {
		// This flight is for the bare URI, but a response stored since
		// says the URI varies: the variant's own flight may be running
		// now, and a second upstream request for it must not.
		return &fetched{again: true}, nil
	}
	if !in.shared {
		return p.exchange(ctx, in, nil)
	}
	// Across the fleet: the shared tier's answer, or its lease.
	c, f, sharedStale := p.claim(ctx, in)
	if f != nil {
		return f, nil
	}
	if sharedStale != nil {
		in.stale = sharedStale // the shared tier's stale copy: revalidate it
	}
	// Claim may have waited for another replica's fetch, which left
	// nothing to share (the answer may not be stored, say): the exchange
	// that follows gets an UpstreamTimeout of its own, or the wait
	// would turn a slow answer into a 504.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.upstreamTimeout)
	defer cancel()
	if c.Lease == nil {
		return p.exchange(ctx, in, nil) // on our own
	}
	defer func() { c.Lease.Release(context.WithoutCancel(ctx), p.localFor(f, err, in.stale != nil)) }()
	return p.exchange(ctx, in, c.Lease)
}

// exchange asks the origin for the resource of in, as fetchUpstream does,
// for every client that waits on the flight, with its leader's fields,
// which the origin may need. A failed validation backs off when the
// failure is not one client's own (see confirmedFailure).
func (p *Proxy) exchange(ctx context.Context, in flight, lease *fleet.Lease) (*fetched, error) {
	f, err := p.fetchUpstream(ctx, in, lease)
	if stale := in.stale; stale != nil && (err != nil || httprule.IsServerError(f.entry.Status)) && p.confirmedFailure(in, stale) {
		p.backOff(stale, f, err)
	}
	return f, err
}

// confirmedFailure reports whether a failed validation of stale by the
// flight in is the resource's rather than one client's, which must not
// make everyone's answer stale (issue 23): the flight carried nothing of
// one client's but the fields the URI varies on (a background refresh, or
// a request that sent no other field), or a request with other fields
// failed too within failureWindow. It records in's failure.
func (p *Proxy) confirmedFailure(in flight, stale *stored.Entry) bool {
	if in.neutral {
		return true
	}
	fp, now := httprule.Fingerprint(in.header), p.now().UnixNano()
	last := stale.LastFailure.Swap(&stored.Failure{FP: fp, At: now})
	return last != nil && last.FP != fp && now-last.At < int64(failureWindow)
}

// failureWindow is how long one client's failed validation waits for
// another's to confirm it.
const failureWindow = 10 * time.Second

// errPersonal ends an exchange whose answer may speak of its leader's
// request (see fetched.personal) and whose body could not be held: every
// client of the flight goes upstream on its own.
var errPersonal = errors.New("the answer to the leader's own request was too large to hold")

// streamed hands the body of resp, whose start bb holds and which could not
// be held whole (why: body.ErrTooLarge or body.ErrFull), and which e judges
// from its header, to the clients of in's flight as a stream, so that
// they share one upstream exchange rather than go upstream each on their
// own. The stream's window is bb's buffer,
// whose reservation it takes over, or when that is smaller, a buffer of
// body.StreamWindow bytes outside the budget: one per flight, as a
// passed-through answer is copied through one buffer per request. A body
// too large to store also passes its key, as a fetch of it would, so that
// later requests go upstream on their own.
func (p *Proxy) streamed(ctx context.Context, in flight, resp *http.Response, bb *body.Buffer, why error, e *stored.Entry, own http.Header) *fetched {
	win, release := bb.Take()
	if cap(win) < body.StreamWindow {
		win = append(make([]byte, 0, body.StreamWindow), win...)
		release() // the window is outside the budget
		release = func() {}
	}
	d := cachestatus.BuffersFull
	if errors.Is(why, body.ErrTooLarge) {
		d = cachestatus.TooLarge
		p.store.MarkPass(ctx, in.vkey, string(d))
	}
	return &fetched{entry: e, own: own, status: resp.StatusCode, stream: body.NewStream(win, resp.ContentLength, d, p.unstored.MinRate(), release)}
}

// exchangeContext is the context of one upstream exchange: ctx's values,
// and its deadline kept by a timer of the exchange's own rather than by
// ctx, so that lift can take it away when the body goes on streaming to
// the flight's clients past the flight (see stream): a streamed body is
// bounded, as a passed-through one is, until its header arrives, then by
// its readers' pace. end ends the exchange. timedOut returns err as
// context.DeadlineExceeded when the deadline is what ended it.
type exchangeContext struct {
	context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
}

func newExchangeContext(ctx context.Context) *exchangeContext {
	x := &exchangeContext{}
	x.Context, x.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	if d, ok := ctx.Deadline(); ok {
		x.timer = time.AfterFunc(time.Until(d), func() { x.cancel(context.DeadlineExceeded) })
	}
	return x
}

func (x *exchangeContext) lift() {
	if x.timer != nil {
		x.timer.Stop()
	}
}

func (x *exchangeContext) end() {
	x.lift()
	x.cancel(nil)
}

func (x *exchangeContext) timedOut(err error) error {
	if err != nil && errors.Is(context.Cause(x), context.DeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}

// fetchUpstream is the exchange with the origin of fetch: it revalidates
// in.stale when it has validators, and stores the answer when it may, in
// memory and, holding lease, in the tier the fleet shares.
func (p *Proxy) fetchUpstream(ctx context.Context, in flight, lease *fleet.Lease) (_ *fetched, err error) {
	key, stale := in.key, in.stale
	x := newExchangeContext(ctx)
	ctx = x
	streaming := false
	defer func() {
		if !streaming {
			x.end()
		}
	}()
	out, err := http.NewRequestWithContext(ctx, http.MethodGet, p.origin.URL(key).String(), nil)
	if err != nil {
		return nil, err
	}
	// The variant is keyed on what goes upstream, not on what the client
	// sent: a field it names in Connection, say, never reaches the origin.
	// in.header is sharedFetchHeader's: the policy for stored answers is
	// applied already, and corral adds its Via.
	reqHeader := in.header
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
	if len(in.header) == 0 {
		// No client field at all, not even one the response varies on
		// (a key the origin limits by): what the origin answers it may
		// pause the URL (see upstream.WithNeutral).
		out = out.WithContext(upstream.WithNeutral(ctx))
	}
	resp, sent, err := p.guard.Send(out)
	err = x.timedOut(err)
	var busy *upstream.BusyError
	if errors.As(err, &busy) {
		return nil, err // never sent: not an upstream exchange
	}
	if err != nil {
		p.stats.upstream(0, err)
		return nil, err
	}
	defer func() {
		if !streaming {
			resp.Body.Close()
		}
	}()
	respTime := p.now()
	if resp.StatusCode < 200 {
		// A 101 to a request that asked for no upgrade, or any other
		// interim status as the final answer (RFC 9110 section 15.2):
		// its body is the bare connection, which no timeout bounds.
		// Closing it ends the exchange now.
		p.stats.upstream(0, errInterim)
		return nil, fmt.Errorf("%w: %d", errInterim, resp.StatusCode)
	}

	if resp.StatusCode == http.StatusNotModified && stale != nil {
		p.stats.upstream(resp.StatusCode, nil)
		e, own := p.store.Revalidated(key, reqHeader, stale, resp.Header, sent, respTime)
		f := &fetched{entry: e, own: own, status: resp.StatusCode}
		f.stored, f.inShared = p.store.Put(ctx, key, e, sent, stale, p.sharer(ctx, lease))
		return f, nil
	}

	// The body is held against the buffer budget until it is stored
	// (and counted by the store) or dropped.
	budget := in.budget
	if budget == nil {
		budget = p.buffers
	}
	bb := body.NewBuffer(budget, p.maxObject)
	defer bb.Release()
	err = x.timedOut(bb.ReadAll(resp.Body, resp.ContentLength))
	if errors.Is(err, body.ErrTooLarge) || errors.Is(err, body.ErrFull) {
		p.stats.upstream(resp.StatusCode, nil)
		e, own := p.store.NewEntry(http.MethodGet, key, reqHeader, resp.StatusCode, resp.Header, nil, sent, respTime)
		switch {
		case !in.neutral && !in.credentialed && httprule.AboutTheRequest(resp.StatusCode) && !e.Decision.Storable:
			return nil, errPersonal
		case errors.Is(err, body.ErrFull) && stale != nil && stale.Decision.UsableDisconnected():
			return nil, err // the stale response stands in
		}
		rest := io.MultiReader(bytes.NewReader(bb.Over()), resp.Body)
		f := p.streamed(ctx, in, resp, bb, err, e, own)
		streaming = true
		x.lift()
		p.flights.Go(func() {
			defer x.end()
			defer resp.Body.Close()
			f.stream.Pump(rest)
		})
		return f, nil
	}
	p.stats.upstream(resp.StatusCode, err)
	if err != nil {
		return nil, fmt.Errorf("reading upstream body: %w", err)
	}
	e, own := p.store.NewEntry(http.MethodGet, key, reqHeader, resp.StatusCode, resp.Header, bb.Trimmed(), sent, respTime)
	if !in.neutral && !in.credentialed && httprule.AboutTheRequest(resp.StatusCode) && !e.Decision.Storable {
		// Perhaps one client's answer, which the origin did not let
		// caches keep: never shared, nor a pass mark. (One it gave
		// explicit freshness, the origin told every shared cache to
		// serve to everyone, RFC 9111 section 3.)
		return &fetched{entry: e, own: own, status: resp.StatusCode, personal: true, sent: reqHeader}, nil
	}
	if httprule.IsServerError(resp.StatusCode) && stale != nil && stale.Decision.UsableOnError(respTime) {
		// The stored response stands in for the error (RFC 5861
		// section 4), which must not replace it, however cacheable.
		return &fetched{entry: e, own: own, status: resp.StatusCode}, nil
	}
	f := &fetched{entry: e, own: own, status: resp.StatusCode}
	f.stored, f.inShared = p.store.Put(ctx, key, e, sent, nil, p.sharer(ctx, lease))
	if lease != nil && passes(e.Decision, stale) {
		// Hit-for-miss across the fleet: the other replicas' clients
		// go upstream each on their own too, rather than queue.
		f.inShared = p.sharePass(ctx, lease, in.vkey, e.Decision.Reason, sent)
	}
	return f, nil
}
