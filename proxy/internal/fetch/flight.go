package fetch

import (
	"net/http"
	"net/netip"
	"strconv"

	"corral/freshness"
	"corral/proxy/internal/body"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
)

// Flight is what a shared fetch starts from: a value built from the
// client request that starts or joins the flight, before it does, as
// ReverseProxy clones its outgoing request. A fetch may outlive the
// handler of the request that started it (the client left; a background
// refresh), so it reads this, never the client's request. Nothing in it
// is modified once the fetch starts.
type Flight struct {
	ID     string        // the coalescing key: the variant key, and the credentials of a request with Authorization
	Key    string        // the request target: path and query
	VKey   string        // the variant key lookup found; Key when the URI is not known to vary
	Header http.Header   // the request fields a shared fetch sends (httprule.SharedFetchHeader)
	Vary   []string      // the fields the URI is known to vary on
	Stale  *stored.Entry // the stored response to validate; nil when none

	// Client is the address of the client whose request leads it;
	// Budget is what its bodies are held against: its client's share of
	// the buffer budget, or when nil (a refresh, which no client leads)
	// the whole. The leader sets Budget when its fetch starts.
	Client netip.Addr
	Budget *body.Budget

	// Neutral says Header carries nothing of one client's but the
	// fields the URI is known to vary on, which every client of the
	// variant sends alike.
	Neutral bool

	// Shared says the fleet's tier may be read and written for it: there
	// is one, and the request carries no Authorization (an answer fetched
	// with credentials never reaches another replica).
	Shared bool

	// Credentialed says the request carries Authorization: its flight is
	// shared only by requests with the same credentials (ID), whose
	// answer is theirs as much as the leader's.
	Credentialed bool

	// Background says no client waits on it: a refresh.
	Background bool

	// Req holds the directives of the request that started it, by which
	// an answer from the shared tier is judged as one from memory is.
	Req freshness.RequestDirectives
}

// NewFlight builds the flight for r, a request from client for key with
// directives req, whose lookup found stale (or nil) under vkey, for a URI
// that varies on the fields vary. Only a request that starts or joins a
// flight builds one: a hit never does.
func (fc *Fetcher) NewFlight(r *http.Request, req freshness.RequestDirectives, key, vkey string, vary []string, stale *stored.Entry, client netip.Addr) Flight {
	h := httprule.SharedFetchHeader(r.Header)
	credentialed := httprule.Credentialed(r.Header)
	return Flight{
		ID:           FlightID(r, vkey),
		Key:          key,
		VKey:         vkey,
		Header:       h,
		Vary:         vary,
		Stale:        stale,
		Client:       client,
		Neutral:      httprule.OnlyFields(h, vary),
		Shared:       fc.Fleet != nil && !credentialed,
		Credentialed: credentialed,
		Req:          req,
	}
}

// FlightID is the coalescing key of r, whose lookup found vkey: the
// variant key, and for requests with credentials the credentials too, so
// that a request never waits on an answer fetched with someone else's.
func FlightID(r *http.Request, vkey string) string {
	if httprule.Credentialed(r.Header) {
		return vkey + "\x00" + r.Header.Get("Authorization")
	}
	return vkey
}

// Own returns in as the flight of the clients that send what in's leader
// sends, and no one else: its ID names the fields.
func (in Flight) Own() Flight {
	in.ID += "\x00fields " + strconv.FormatUint(httprule.Fingerprint(in.Header), 16)
	return in
}

// Neutralized returns in as a request that carries nothing of its client's:
// only the fields its URI varies on (RFC 9111 section 4.1), which every
// client of the variant sends alike.
func (in Flight) Neutralized() Flight {
	h := make(http.Header, len(in.Vary))
	for _, name := range in.Vary {
		if vs, ok := in.Header[name]; ok {
			h[name] = vs
		}
	}
	in.Header, in.Neutral = h, true
	return in
}

// Result is the outcome of one flight, shared by every client that waited
// on it.
type Result struct {
	Source Source
	Entry  *stored.Entry // nil for LookAgain
	Status int           // what the origin answered (Source Origin): 304 for a revalidation
	Stored bool          // Entry went into the store

	// Own is Entry's header before the fields named by a qualified
	// private or no-cache were removed: for the client whose request it
	// answers.
	Own http.Header

	// Stream, when not nil, is Entry's body, which the fetch could not
	// hold: each client reads it from there (see body.Stream), and Entry
	// is neither stored nor shared beyond the flight.
	Stream *body.Stream

	// Personal says the answer may speak of its leader's own request,
	// which carried fields beyond those the response varies on, rather
	// than of the resource (see personal: a spent quota, a refused
	// field, an error in place of a good answer): it is the leader's, and
	// of requests that sent the same fields (Sent), never stored or
	// shared with the others.
	Personal bool
	Sent     http.Header

	// Confirm says the answer may be its leader's own though it is
	// everyone's now, or may be everyone's though it is its leader's
	// (see personal, and Fetch's stored errors): a refresh, with nothing
	// of one client's, should ask again, and its answer is everyone's.
	Confirm bool

	// inShared says the fetch left its answer, a response or a pass
	// mark, in the tier the fleet shares, for the replicas that wait.
	inShared bool
}

// Failed reports whether the flight that brought f or err failed: an
// error, or a server error from the origin.
func Failed(f *Result, err error) bool {
	return err != nil || f.Entry != nil && httprule.IsServerError(f.Entry.Status)
}

// Source says where a flight's answer came from.
type Source uint8

const (
	// Origin: the flight's own exchange with the origin.
	Origin Source = iota
	// Memory: a flight that ran just before had stored a fresh answer
	// here; no upstream call.
	Memory
	// SharedTier: another replica had stored a fresh answer in the tier
	// the fleet shares; no upstream call.
	SharedTier
	// LookAgain: no answer. The URI turned out to vary while the flight
	// waited to start (or the shared tier held a Vary marker, a pass
	// mark or a stale answer another replica refreshes, now in memory):
	// the flight's clients look up again, and join their variant's
	// flight.
	LookAgain
)
