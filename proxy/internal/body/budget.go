// Package body holds what bodies cost in memory on their way through
// corral: one byte budget and the shares of it, a body read into memory as
// its bytes arrive, the copy a passed-through answer keeps, a large body
// written to clients a chunk at a time, and one body streamed to a herd.
package body

import (
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
)

// ErrTooLarge ends the buffering of a body longer than its limit.
var ErrTooLarge = errors.New("body larger than its limit")

// ErrFull ends the buffering of a body that the buffer budget cannot
// hold now. It is memory pressure, not a property of the resource.
var ErrFull = errors.New("buffer budget spent")

// Budget is the one byte budget for bodies held in memory on their way
// through corral: a shared fetch's body until it is stored or dropped, the
// copy a passed-through answer keeps to store on the way, request bodies
// read before they go upstream, and the bodies being written to clients
// that the store does not hold (see Ref). Stored entries are counted
// by the store's own budget instead; together the two bound what bodies
// cost.
// A reservation that does not fit is refused at once, never waited for:
// whoever asked streams instead, or answers 503.
//
// Request bodies draw from a Share of it, a Budget with the whole as its
// parent: clients choose how many uploads they hold open against a slow
// origin, and without a Share of their own they could spend the budget
// that shared fetches need, turning every cache miss into one upstream
// request per waiting client.
type Budget struct {
	limit  int64
	parent *Budget // a reservation here is one there too; nil for the whole
	inUse  atomic.Int64
	peak   atomic.Int64

	// makeRoom, when set, is asked for room for n bytes that do not
	// fit (by cutting what holds room without using it), and reports
	// whether the reservation should be tried again (SetMakeRoom).
	makeRoom func(n int64) bool
}

// SetMakeRoom makes b ask makeRoom for room when a reservation does not
// fit, and try once more when it reports there may be some. Set it before
// b is used.
func (b *Budget) SetMakeRoom(makeRoom func(n int64) bool) { b.makeRoom = makeRoom }

// InUse returns the bytes reserved now.
func (b *Budget) InUse() int64 { return b.inUse.Load() }

// Limit returns what the budget may hold.
func (b *Budget) Limit() int64 { return b.limit }

// NewBudget returns a budget of limit bytes, which are also reserved from
// parent, when it is not nil.
func NewBudget(limit int64, parent *Budget) *Budget {
	return &Budget{limit: limit, parent: parent}
}

// Peak returns the most bytes ever reserved at once.
func (b *Budget) Peak() int64 { return b.peak.Load() }

// reserve takes n bytes of the budget, and of its parent's, if they fit.
func (b *Budget) Reserve(n int64) bool {
	if !b.take(n) && (b.makeRoom == nil || !b.makeRoom(n) || !b.take(n)) {
		return false
	}
	if b.parent != nil && !b.parent.Reserve(n) {
		b.inUse.Add(-n)
		return false
	}
	return true
}

func (b *Budget) take(n int64) bool {
	for {
		cur := b.inUse.Load()
		if cur+n > b.limit {
			return false
		}
		if b.inUse.CompareAndSwap(cur, cur+n) {
			for peak := b.peak.Load(); cur+n > peak && !b.peak.CompareAndSwap(peak, cur+n); peak = b.peak.Load() {
			}
			return true
		}
	}
}

// Release gives n bytes back.
func (b *Budget) Release(n int64) {
	b.inUse.Add(-n)
	if b.parent != nil {
		b.parent.Release(n)
	}
}

// MinChunk is the first reservation of a body of unknown length: a
// client that sends one byte holds no more than this of the budget.
const MinChunk = 4 << 10

// upFront is the most of a body's declared length reserved before its
// bytes arrive.
const upFront = 64 << 10

// Buffer is a body read into memory reserved from a budget. Its
// capacity is exactly what it holds of the budget; it grows by doubling,
// as its bytes arrive, so a body is copied about once in all.
type Buffer struct {
	budget *Budget
	limit  int64 // the most bytes the body may have: past it, ErrTooLarge
	size   int64 // the length the body declared, where growth stops; 0 when unknown
	buf    []byte
	over   []byte // read past buf when it could not grow: the body's next bytes
}

// NewBuffer returns an empty buffer for a body of at most limit bytes,
// held against budget.
func NewBuffer(budget *Budget, limit int64) *Buffer {
	return &Buffer{budget: budget, limit: limit}
}

// Bytes returns what the buffer holds.
func (bb *Buffer) Bytes() []byte { return bb.buf }

// Over returns what ReadAll read past what the buffer could hold, when
// it could not grow: the body's next bytes.
func (bb *Buffer) Over() []byte { return bb.over }

// Take returns what the buffer holds and the function that gives its
// reservation back, and leaves the buffer empty: for a stream that goes
// on with it (see Stream).
func (bb *Buffer) Take() (buf []byte, release func()) {
	kept := *bb
	*bb = Buffer{}
	return kept.buf, kept.Release
}

// grow makes room for n more bytes.
func (bb *Buffer) grow(n int) error {
	need := int64(len(bb.buf)) + int64(n)
	if need > bb.limit {
		return ErrTooLarge
	}
	old := int64(cap(bb.buf))
	if need <= old {
		return nil
	}
	size := min(max(need, 2*old, MinChunk), bb.limit)
	if need <= bb.size {
		size = min(size, bb.size) // a body that keeps its word ends exactly
	}
	return bb.Resize(size)
}

// resize moves the body to a buffer of capacity size.
func (bb *Buffer) Resize(size int64) error {
	// The old buffer stays reserved while it is copied: both are live.
	if !bb.budget.Reserve(size) {
		return ErrFull
	}
	nb := make([]byte, len(bb.buf), size)
	copy(nb, bb.buf)
	bb.budget.Release(int64(cap(bb.buf)))
	bb.buf = nb
	return nil
}

// write appends p, or fails without appending any of it.
func (bb *Buffer) write(p []byte) error {
	if err := bb.grow(len(p)); err != nil {
		return err
	}
	bb.buf = append(bb.buf, p...)
	return nil
}

// readFrom reads r to its end. A size above zero is the length r says it
// has: a larger one than the limit fails at once, and the buffer grows to
// it and no further unless more arrives. Of it, only upFront bytes are
// reserved before they arrive, so that a small body is read into one
// buffer of its length, never copied; past that, the buffer grows as its
// bytes arrive: an answer that declares 8 MiB and trickles holds only what
// came, and a client asking for slow exports cannot spend the budget the
// others' fetches need on bytes that may never come (issue 23). Reading
// goes on past size, to the limit.
func (bb *Buffer) ReadAll(r io.Reader, size int64) error {
	if size > bb.limit {
		return ErrTooLarge
	}
	bb.size = size
	if first := min(size, upFront); first > int64(cap(bb.buf)) {
		if err := bb.Resize(first); err != nil {
			return err
		}
	}
	var probe []byte
	for {
		if len(bb.buf) == cap(bb.buf) {
			// Full: a body that ends here must not need a larger
			// reservation to find out, so read a little aside first.
			if probe == nil {
				probe = make([]byte, 512)
			}
			n, err := r.Read(probe)
			if n > 0 {
				if werr := bb.write(probe[:n]); werr != nil {
					bb.over = probe[:n]
					return werr
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			continue
		}
		n, err := r.Read(bb.buf[len(bb.buf):cap(bb.buf)])
		bb.buf = bb.buf[:len(bb.buf)+n]
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// trimmed returns the body in a buffer of its own length when doubling has
// left much spare room, so that an entry stored from it holds no more
// memory than the store counts. The copy is reserved too; without room
// for it the body is returned as it is.
func (bb *Buffer) Trimmed() []byte {
	n := len(bb.buf)
	if cap(bb.buf)-n <= n/8 || !bb.budget.Reserve(int64(n)) {
		return bb.buf
	}
	b := make([]byte, n)
	copy(b, bb.buf)
	bb.budget.Release(int64(cap(bb.buf)))
	bb.buf = b
	return b
}

// release gives the reservation back. The bytes may live on (in a stored
// entry, counted by the store, or in an answer being written), but the
// buffer no longer holds them.
func (bb *Buffer) Release() {
	if bb.budget != nil {
		bb.budget.Release(int64(cap(bb.buf)))
	}
	bb.buf = nil
}

// NewShares returns shares of limit bytes each, for each client, of
// parent.
func NewShares(parent *Budget, limit int64) *Shares {
	return &Shares{parent: parent, limit: limit}
}

// Shares hands each client a Share of a budget for the bodies of the
// fetches its requests lead: a Budget whose parent is the budget, with a
// limit of its own. Clients choose how many slow answers they ask for at
// once, and without a cap one of them could hold the whole budget with
// exports that trickle, so that every other client's cold fetch found no
// room and went upstream on its own (issue 23). A client is its address,
// or for IPv6 its /64, which one host commonly holds whole. A Share lives
// while a fetch uses it: the records are as many as fetches running.
type Shares struct {
	parent *Budget
	limit  int64

	mu sync.Mutex
	m  map[netip.Prefix]*Share
}

// Share is one client's Share, and how many fetches use it.
type Share struct {
	Budget
	key   netip.Prefix
	users int // under Shares.mu
}

// acquire returns client's Share, which the caller gives back with
// release once no body of its holds any of it.
func (s *Shares) Acquire(client netip.Addr) *Share {
	bits := 32
	if client.Is6() {
		bits = 64
	}
	key, _ := client.Prefix(bits) // the zero Prefix for an unknown address: one Share
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.m[key]
	if sh == nil {
		if s.m == nil {
			s.m = make(map[netip.Prefix]*Share)
		}
		sh = &Share{Budget: Budget{limit: s.limit, parent: s.parent}, key: key}
		s.m[key] = sh
	}
	sh.users++
	return sh
}

// Parent returns the budget the shares are of.
func (s *Shares) Parent() *Budget { return s.parent }

// Release gives back sh, which Acquire returned.
func (s *Shares) Release(sh *Share) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.users--; sh.users == 0 {
		delete(s.m, sh.key)
	}
}
