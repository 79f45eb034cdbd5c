// Package cache holds stored responses as values that any corral process
// can encode and decode, and the contract of a store that keeps them: a
// store may fail and says so, a conditional write lands only on the entry
// it names, and a purge holds against every write that began before it.
package cache

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Kind says what an Entry stands for.
type Kind uint8

const (
	// Response is a stored response, served to the requests its key
	// (and, for a variant, its VaryKey) matches.
	Response Kind = iota

	// VaryMarker, stored under a URI's key, says that the responses for
	// the URI vary on the request fields in Vary and live under the
	// variant keys of generation Gen (see VariantKey).
	VaryMarker

	// PassMark says that the last response for the key could not be
	// shared: until it expires, requests for the key go upstream each on
	// its own instead of queueing behind one fetch (Varnish's
	// hit-for-miss). Reason says why.
	PassMark

	maxKind = PassMark
)

var kindNames = [...]string{"response", "vary-marker", "pass-mark"}

func (k Kind) String() string {
	if k > maxKind {
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// Entry is one stored value. It holds only what any process can use, so
// that it can be encoded (MarshalBinary) and read back elsewhere: from a
// Response's times, status and header, a process recomputes freshness
// with its own policy. Per-process state (the decision computed from the
// entry, a memo of served fields, a refresh back-off) does not belong
// here: the Memory store keeps it beside the entry (Memory.SetLocal).
//
// Once stored, an Entry is never modified, by the store or by its
// callers: a change is a new Entry with a new ID.
type Entry struct {
	Kind Kind

	// ID names this write of the entry, for conditional writes
	// (Cond.IfID): make it with NewID. An entry with ID 0 cannot be
	// named by a condition.
	ID uint64

	// RequestTime is when the request that fetched the response was
	// sent, ResponseTime when its header arrived: request_time and
	// response_time of RFC 9111 section 4.2.3.
	RequestTime, ResponseTime time.Time

	Status int
	Header http.Header // as stored: hop-by-hop and unshareable fields removed
	Body   []byte

	// Vary holds the canonical names of the request fields the response
	// varies on; for a Response, VaryKey holds the normalised values of
	// them in the request that fetched it.
	Vary    []string
	VaryKey string

	// Gen and Until belong to a VaryMarker: the generation in its
	// variants' keys (NewID: unique across processes), and the moment
	// the marker, and so every variant it leads to, stops being of use.
	Gen   uint64
	Until time.Time

	// Reason belongs to a PassMark: why the response was not shared.
	Reason string
}

// NewID returns a random, nonzero 64-bit value, for Entry.ID and
// Entry.Gen. Two processes draw the same one with a probability of about
// 2^-64 per pair.
func NewID() uint64 {
	for {
		if id := rand.Uint64(); id != 0 {
			return id
		}
	}
}

// VariantKey is the key of the variant with varyKey of the responses
// under key whose Vary marker has generation gen. It starts with key and a
// NUL byte, which no request-target holds: a prefix purge of key reaches
// the variants, a purge record for key holds for them too, and a store
// that shards may keep them beside their marker by sharding on what
// precedes the first NUL.
func VariantKey(key string, gen uint64, varyKey string) string {
	return key + "\x00" + strconv.FormatUint(gen, 36) + "\x00" + varyKey
}

// baseKey is the key whose variant key is k, or k itself.
func baseKey(k string) string {
	for i := 0; i < len(k); i++ {
		if k[i] == 0 {
			return k[:i]
		}
	}
	return k
}

var (
	// ErrNotFound is returned by Get when nothing usable is stored under
	// the key: absent, expired or evicted.
	ErrNotFound = errors.New("cache: not found")

	// ErrConflict is returned by a conditional Set when the entry under
	// the key is not the one the condition names.
	ErrConflict = errors.New("cache: entry changed")

	// ErrPurged is returned by Set when a purge recorded for the key at
	// or after Cond.Since forbids the write, or when Since predates the
	// purge records the store still keeps.
	ErrPurged = errors.New("cache: purged since the fetch began")
)

// Cond is what must hold for Set to write. The zero Cond always holds.
type Cond struct {
	// Since, when not zero, is when the fetch that produced the entry
	// began: Set refuses with ErrPurged if a purge of the key, of the
	// key the variant key was made from, or of a prefix of the key was
	// recorded at or after Since.
	Since time.Time

	// IfID, when not zero, requires the entry under the key to have this
	// ID; IfAbsent requires the key to hold nothing. Set refuses with
	// ErrConflict otherwise. Set at most one of them.
	IfID     uint64
	IfAbsent bool
}

// Store holds entries by key. Implementations are safe for concurrent use
// and never modify an Entry; callers do not modify one either, neither
// after Set nor after Get.
//
// A failure (a store out of reach, a cancelled ctx) is an error other
// than ErrNotFound, ErrConflict and ErrPurged, and says nothing of what
// is stored.
type Store interface {
	// Get returns the entry under key, or ErrNotFound.
	Get(ctx context.Context, key string) (*Entry, error)

	// Set stores e under key for ttl if cond holds, and reports why not
	// with ErrPurged or ErrConflict. The check and the write are one
	// step with respect to other Sets and to Purge. A ttl of zero or less
	// stores nothing and returns nil.
	Set(ctx context.Context, key string, e *Entry, ttl time.Duration, cond Cond) error

	// Delete drops the entry under key, if any. It records no purge: a
	// write already under way may still land.
	Delete(ctx context.Context, key string) error

	// Purge drops the entry under key, or with prefix every entry whose
	// key starts with key ("" for all), and records the purge at at, so
	// that a later Set with an older Cond.Since is refused. It reports
	// how many entries it dropped.
	Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error)
}

// Sizer is implemented by stores that can tell their size cheaply, for
// gauges, readiness and warnings about a budget too small.
type Sizer interface {
	Bytes() int64     // what the store accounts for, keys included
	Len() int         // entries held
	Evictions() int64 // entries pushed out by the budget so far
}
