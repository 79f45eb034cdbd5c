package proxy

import (
	"context"
	"corral/coalesce"
	"corral/freshness"
	"corral/proxy/cache"
	"corral/proxy/internal/body"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/fetch"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/respond"
	"corral/proxy/internal/stored"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"time"
)

// herds is how the clients of one key share fetches: one flight at a time
// per key (flights), what each flight's leader sends (leading), how long
// a client waits on a flight another's fields lead (hedgeAfter), and each
// leader's share of the buffer budget (shares). See join.
type herds struct {
	flights    flights
	leading    sync.Map     // a flight's ID: its *leading, while it runs
	hedgeAfter atomic.Int64 // Config.HedgeAfter, a time.Duration; 0 for never
	shares     *body.Shares // each client's share of the buffer budget, for the fetches it leads

	mu    sync.Mutex
	owned map[string]int // a first flight's ID: how many own flights run beside it
}

// leading is what herds know of a running flight's leader.
type leading struct {
	sent http.Header // the fields its fetch sends
	held atomic.Bool // its request took hedgeAfter (see hold)
}

// flights runs at most one fetch per key at a time, and hands its result
// to every request that asked for the key while it ran. coalesce.Group is
// one, within this process. It is an interface, as groupcache's
// flightGroup is, so that another can stand in. Across a fleet of
// replicas, the fetch itself takes the fleet's lease (see claim): the
// local flight makes one replica's clients one caller of the fleet.
type flights interface {
	// Start returns the caller's wait for the fetch for key (see
	// coalesce.Call), running fetch unless one for key runs already.
	Start(ctx context.Context, key string, fetch coalesce.Fetch[*fetch.Result]) *coalesce.Call[*fetch.Result]

	// Refresh starts, in the background, the fetch that start makes,
	// unless a refresh of key runs already; it calls start only when it
	// starts one, and reports whether it did.
	Refresh(ctx context.Context, key string, start func() coalesce.Fetch[*fetch.Result]) bool

	// Go runs fn, work a fetch hands on past its return (a stream's
	// pump), on a goroutine of its own that Wait waits for too.
	Go(fn func())

	// Wait blocks until the fetches started so far have finished, or
	// ctx ends.
	Wait(ctx context.Context) error
}

// fetchAndServe starts or joins the flight in, built from r, and serves
// what it brought, or returns outOtherVariant, with nothing written to w,
// when the fetch answered another variant than r's.
func (p *Proxy) fetchAndServe(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd) requestOutcome {
	f, leader, err := p.join(w, r, in)
	if leader && err == nil && f.Confirm {
		p.confirm(r, in, f)
	}
	now := p.now()
	if in.Stale == nil && in.Shared && fetch.Failed(f, err) {
		// The fetch may have found a stale copy in the shared tier,
		// now in memory, that can stand in for the failure.
		if e, _, _ := p.store.Lookup(r.Context(), in.Key, r.Header); e != nil && e.Kind == cache.Response && !httprule.IsServerError(e.Status) {
			in.Stale = e
		}
	}
	if err != nil {
		if r.Context().Err() != nil {
			return outAbandoned // the client left; the flight goes on without it
		}
		return p.serveError(w, r, req, in, fwd, err, now)
	}
	if otherVariant(f, r) {
		return outOtherVariant
	}
	return p.serveFetched(w, r, req, in, fwd, f, leader, now)
}

// join starts or joins in's flight and waits for its answer.
//
// A flight carries its leader's fields, which the origin may need, and its
// answer is everyone's, unless it may speak of the leader's own request
// (fetch.Result.Personal: a spent quota, a refused field): then a waiter
// that sent other fields flies again, in its own flight (fetch.Flight.Own):
// with the clients that send what it sends, and no one else. So does a
// waiter that sent other fields than the leader and waited hedgeAfter
// for it, while it still waits for the first: it takes whichever answer
// comes first. A client whose requests the origin holds (a tarpit, a rate
// limiter's queue) would otherwise hold the herd for UpstreamTimeout; on
// an origin slower than hedgeAfter for everyone, that costs one request
// more per distinct set of fields among the clients still waiting. No one
// else's fields ever lead a client's own flight: one user cannot hand its
// 429 to the clients coalesced with it, or make them wait on its own
// trouble, with however many keys or addresses (issue 23).
func (p *Proxy) join(w http.ResponseWriter, r *http.Request, in fetch.Flight) (f *fetch.Result, leader bool, err error) {
	interim := respond.NewInterim(w)
	defer interim.Close() // the client left: the fetch may go on
	var first, own *coalesce.Call[*fetch.Result]
	flyOwn := func() {
		mine := in.Own()
		own = p.herds.flights.Start(r.Context(), mine.ID, p.lead(mine, in.ID, interim))
	}
	if p.herds.flyingOwn(in.ID) && !p.herds.ledBySame(in.ID, in.Header) {
		// Clients of the key fly on their own (the first flight's answer
		// was another's, or its leader's request is held): join those
		// that send what this one sends, if they do, rather than start
		// another first flight beside theirs, or wait on the held one.
		flyOwn()
	} else {
		first = p.herds.flights.Start(r.Context(), in.ID, p.lead(in, "", interim))
	}
	var hedge <-chan time.Time
	// No timer for the leader, for a client that flies on its own already,
	// nor for one that sends what the leader sends (most of a herd): it
	// would wait on (see below).
	if d := time.Duration(p.herds.hedgeAfter.Load()); d > 0 && first != nil && !first.Led() && !p.herds.ledBySame(in.ID, in.Header) {
		t := time.NewTimer(d)
		defer t.Stop()
		hedge = t.C
	}
	for {
		var firstDone, ownDone <-chan coalesce.Result
		if first != nil {
			firstDone = first.Done()
		}
		if own != nil {
			ownDone = own.Done()
		}
		select {
		case res := <-firstDone:
			f, leader, err = first.Take(res)
			first = nil
			switch {
			case leader || err == nil && !(f.Personal && !httprule.SameFields(f.Sent, in.Header)):
				// Its own answer, or everyone's.
				if own != nil {
					own.Leave()
				}
			case own != nil:
				continue // another's trouble: wait for our own
			case err == nil:
				// The leader's own answer: fly with our fields.
				flyOwn()
				continue
			}
		case res := <-ownDone:
			if first != nil {
				first.Leave()
			}
			f, leader, err = own.Take(res)
		case <-hedge:
			hedge = nil
			if first == nil || own != nil {
				continue // flying on our own already
			}
			// Another's request leads the first flight. If it sent what
			// this one sends, this one's would take as long: wait on.
			if first.Led() || p.herds.ledBySame(in.ID, in.Header) {
				continue
			}
			// The origin holds it: the clients that come while it does
			// fly on their own at once (flyingOwn), rather than each
			// wait hedgeAfter for it again.
			p.herds.hold(in.ID)
			flyOwn()
			continue
		case <-r.Context().Done():
			for _, c := range []*coalesce.Call[*fetch.Result]{first, own} {
				if c != nil {
					c.Leave()
				}
			}
			f, leader, err = nil, false, r.Context().Err()
		}
		break
	}
	// net/http's transport may still deliver interim responses it had
	// read when the fetch ended: none may reach w once this handler
	// writes to it.
	interim.Close()
	return f, leader, err
}

// lead returns the fetch of the flight in, which only the caller that
// starts the flight runs: its leader. It may run on after the leader's
// handler returned, and reads in, never the client's request. Its bodies
// count against its leader's share of the buffer budget, and the interim
// answers it gets go to the leader. For a client's own flight (Own), base
// is the ID of the first flight it flies beside.
func (p *Proxy) lead(in fetch.Flight, base string, interim *respond.Interim) coalesce.Fetch[*fetch.Result] {
	return func(ctx context.Context) (*fetch.Result, error) {
		p.herds.leading.Store(in.ID, &leading{sent: in.Header})
		defer p.herds.leading.Delete(in.ID)
		if base != "" {
			p.herds.own(base, 1)
			defer p.herds.own(base, -1)
		}
		share := p.herds.shares.Acquire(in.Client)
		defer p.herds.shares.Release(share)
		in.Budget = &share.Budget
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: interim.Write})
		return p.fetcher.Fetch(ctx, in)
	}
}

// own counts n more own flights (fetch.Flight.Own) running beside the
// first flight base.
func (h *herds) own(base string, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.owned[base] += n; h.owned[base] <= 0 {
		delete(h.owned, base)
	}
}

// hold records that the first flight base, if it still runs, is held:
// its leader's request took hedgeAfter, and its waiters fly on their own.
// Until it ends, the clients that come fly on their own too (flyingOwn).
func (h *herds) hold(base string) {
	if l, ok := h.leading.Load(base); ok {
		l.(*leading).held.Store(true)
	}
}

// ledBySame reports whether the leader of the flight id sent what a
// request with header h sends: h's own request would fare as the leader's.
func (h *herds) ledBySame(id string, header http.Header) bool {
	l, ok := h.leading.Load(id)
	return ok && httprule.SameFields(l.(*leading).sent, header)
}

// flyingOwn reports whether own flights run beside the first flight base,
// or it is held.
func (h *herds) flyingOwn(base string) bool {
	if l, ok := h.leading.Load(base); ok && l.(*leading).held.Load() {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.owned[base] > 0
}

// otherVariant reports whether what a flight fetched answers another
// variant than r's: the URI turned out to vary while the flight waited to
// start, or its shareable answer varies on fields that r sent otherwise.
func otherVariant(f *fetch.Result, r *http.Request) bool {
	if f.Source == fetch.LookAgain {
		return true
	}
	e := f.Entry
	return e.Decision.Shareable && len(e.Vary) > 0 && e.VaryKey != httprule.VaryKey(e.Vary, r.Header)
}

// serveFetched serves f, what the flight in fetched for r; leader says
// r's request started it.
func (p *Proxy) serveFetched(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd, f *fetch.Result, leader bool, now time.Time) requestOutcome {
	if f.Stream != nil {
		return p.serveStream(w, r, in, fwd, f, leader)
	}
	stale, e := in.Stale, f.Entry
	st := cachestatus.Status{Fwd: fwd, FwdStatus: f.Status, Stored: f.Stored, Collapsed: !leader}
	if f.Stored {
		st.TTL, st.HasTTL = e.Decision.TTL(now), true
	}
	switch {
	case f.Personal && !leader && !httprule.SameFields(f.Sent, in.Header):
		// The last round's leader's own answer: each its own.
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, cachestatus.Detail(e.Decision.Reason))
	case leader && !e.Decision.Shareable:
		st.Detail = cachestatus.Detail(e.Decision.Reason)
		if !f.Personal && fetch.Passes(e.Decision, stale) {
			// Everyone's: the key goes upstream per client for a while.
			// (A personal answer's pass mark is the confirmation's to
			// make.)
			p.store.MarkPass(r.Context(), in.VKey, e.Decision.Reason)
		}
		return p.serve(w, r, e, f.Own, st, now, outMiss)
	case !e.Decision.Shareable:
		// Meant for the leader's request alone: fetch our own.
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, cachestatus.Detail(e.Decision.Reason))
	case httprule.IsServerError(e.Status) && stale != nil && stale.Decision.UsableOnErrorFor(now, req):
		return p.serveStaleOnError(w, r, stale, f.Status, now)
	}
	if !f.Stored {
		st.Detail = cachestatus.Detail(e.Decision.Reason)
	}
	h := e.Header
	if leader {
		h = f.Own
	}
	o := outMiss
	switch {
	case f.Source == fetch.Memory:
		o, st = outHit, hitStatus(e, "", now)
		st.Collapsed = true
	case f.Source == fetch.SharedTier:
		o, st = outHit, hitStatus(e, cachestatus.SharedTier, now)
		st.Collapsed = true
	case !leader:
		o = outCoalesced
	case f.Status == http.StatusNotModified:
		o = outRevalidated
	}
	return p.serve(w, r, e, h, st, now, o)
}

// serveStream serves f, whose body the flight in could not hold, from its
// stream (see stream): one upstream exchange for the whole herd. A client
// that cannot read it as it comes (a range or a precondition to answer
// from the whole body, an answer that is the leader's alone, or a join
// too late for the body's first byte) goes upstream on its own.
func (p *Proxy) serveStream(w http.ResponseWriter, r *http.Request, in fetch.Flight, fwd cachestatus.Fwd, f *fetch.Result, leader bool) requestOutcome {
	e, s := f.Entry, f.Stream
	if !leader && !e.Decision.Shareable || httprule.ConditionalOrRange(r.Header) {
		return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, s.Detail)
	}
	var rd *body.StreamReader
	if r.Method != http.MethodHead && httprule.BodyAllowed(e.Status) {
		if rd = s.Join(); rd == nil {
			return p.passThrough(w, r, in.Key, cachestatus.FwdMiss, s.Detail)
		}
		defer rd.Close()
	}
	h := e.Header
	if leader {
		h = f.Own
	}
	st := cachestatus.Status{Fwd: fwd, FwdStatus: f.Status, Collapsed: !leader, Detail: s.Detail}
	var from io.Reader
	if rd != nil {
		from = rd
	}
	if err := respond.Streamed(w, e.Status, h, st, s.Length, from); err != nil {
		p.log.Warn("streamed answer cut short", "path", r.URL.Path, "err", err)
		return outCut
	}
	if leader {
		return outMiss
	}
	return outCoalesced
}

// refresh revalidates stale, which r's lookup found under vkey, in the
// background, once per key at a time, and not again before a failed
// refresh's back-off has passed. The refresh outlives r's handler: it
// starts from a flight built from r, only when it starts.
//
// A refresh serves everyone, so it carries nothing of r's client but the
// fields the response varies on (neutralized), credentials included: a
// client whose field the origin refuses must not fail the refreshes that
// its stale hits start, and push the next one back for everyone (issue
// 23).
func (p *Proxy) refresh(r *http.Request, key, vkey string, stale *stored.Entry) {
	now := p.now()
	if now.UnixNano() < stale.RefreshAt.Load() {
		return
	}
	started := p.herds.flights.Refresh(r.Context(), fetch.FlightID(r, vkey), func() coalesce.Fetch[*fetch.Result] {
		return p.fetcher.Refresh(p.fetcher.NewFlight(r, noDirectives, key, vkey, stale.Vary, stale, p.passer.ClientAddr(r)).Neutralized())
	})
	if started {
		p.stats.Refreshes.Add(1)
	}
}

// confirm refreshes, in the background, what the flight in leaves
// stored when its answer f was perhaps its leader's own
// (fetch.Result.Confirm): in's stale entry, a good answer that f, an error
// or one it may not share, did not replace; or f itself, an error stored
// in place of another that one client's fields got. The refresh carries
// nothing of one client's, so that what it gets is everyone's, and
// replaces the entry, or makes a pass mark, for everyone. Not once the
// store holds something else (the answer of a refresh that ran already,
// or of another client's flight).
func (p *Proxy) confirm(r *http.Request, in fetch.Flight, f *fetch.Result) {
	want := in.Stale
	if f.Stored {
		want = f.Entry
	}
	if cur, _, _ := p.store.Lookup(r.Context(), in.Key, r.Header); cur != nil && want != nil && cur.ID == want.ID {
		p.refresh(r, in.Key, in.VKey, cur)
	}
}

// serveStaleOnError serves stale in place of an origin failure
// (RFC 5861 section 4).
func (p *Proxy) serveStaleOnError(w http.ResponseWriter, r *http.Request, stale *stored.Entry, fwdStatus int, now time.Time) requestOutcome {
	return p.serve(w, r, stale, stale.Header, cachestatus.Status{Fwd: cachestatus.FwdStale, FwdStatus: fwdStatus, TTL: stale.Decision.TTL(now), HasTTL: true, Detail: cachestatus.StaleIfError}, now, outStaleOnError)
}

// serveError answers a failed fetch of the flight in: with its stale
// entry where it may stand in, upstream on r's own when the answer was
// too large to share, and otherwise as upstreamFailure says.
func (p *Proxy) serveError(w http.ResponseWriter, r *http.Request, req freshness.RequestDirectives, in fetch.Flight, fwd cachestatus.Fwd, err error, now time.Time) requestOutcome {
	key, stale := in.Key, in.Stale
	if errors.Is(err, fetch.ErrPersonal) {
		return p.passThrough(w, r, key, fwd, "")
	}
	if errors.Is(err, body.ErrTooLarge) {
		p.store.MarkPass(r.Context(), in.VKey, string(cachestatus.TooLarge))
		return p.passThrough(w, r, key, cachestatus.FwdMiss, cachestatus.TooLarge)
	}
	status, d, busy := respond.Failure(err)
	if full := errors.Is(err, body.ErrFull); full || busy != nil {
		// Too large for the buffer budget left now, for this fetch only
		// (the key is not marked; the next fetch may fit), or held back
		// by corral to spare the origin: as good as disconnected from
		// it. A stale response that may be served then stands in;
		// otherwise a body too large goes upstream on r's own,
		// streamed, and a request held back gets 503.
		if full {
			d = cachestatus.BuffersFull
		}
		if stale != nil && stale.Decision.UsableDisconnected() {
			return p.serveStored(w, r, stale, d, now, outStaleOnBusy)
		}
		if full {
			return p.passThrough(w, r, key, cachestatus.FwdMiss, d)
		}
		return p.serveBusy(w, busy, cachestatus.Status{Fwd: fwd, Detail: d})
	}
	if stale != nil && stale.Decision.UsableOnErrorFor(now, req) {
		return p.serveStaleOnError(w, r, stale, 0, now)
	}
	p.log.Warn("upstream fetch failed", "path", r.URL.Path, "err", err)
	respond.Status(w, status, cachestatus.Status{Fwd: fwd, Detail: d})
	return outError
}
