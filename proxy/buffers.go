package proxy

import (
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
)

// errBuffersFull ends the buffering of a body that the buffer budget cannot
// hold now. It is memory pressure, not a property of the resource.
var errBuffersFull = errors.New("buffer budget spent")

// buffers is the one byte budget for bodies held in memory on their way
// through corral: a shared fetch's body until it is stored or dropped, the
// copy a passed-through answer keeps to store on the way, request bodies
// read before they go upstream, and the bodies being written to clients
// that the store does not hold (see bodyRef). Stored entries are counted
// by the store's own budget instead; together the two bound what bodies
// cost.
// A reservation that does not fit is refused at once, never waited for:
// whoever asked streams instead, or answers 503.
//
// Request bodies draw from a share of it, a buffers with the whole as its
// parent: clients choose how many uploads they hold open against a slow
// origin, and without a share of their own they could spend the budget
// that shared fetches need, turning every cache miss into one upstream
// request per waiting client.
type buffers struct {
	limit  int64
	parent *buffers // a reservation here is one there too; nil for the whole
	inUse  atomic.Int64
	peak   atomic.Int64
}

// InUse returns the bytes reserved now.
func (b *buffers) InUse() int64 { return b.inUse.Load() }

// Peak returns the most bytes ever reserved at once.
func (b *buffers) Peak() int64 { return b.peak.Load() }

// reserve takes n bytes of the budget, and of its parent's, if they fit.
func (b *buffers) reserve(n int64) bool {
	if !b.take(n) {
		return false
	}
	if b.parent != nil && !b.parent.reserve(n) {
		b.inUse.Add(-n)
		return false
	}
	return true
}

func (b *buffers) take(n int64) bool {
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

func (b *buffers) release(n int64) {
	b.inUse.Add(-n)
	if b.parent != nil {
		b.parent.release(n)
	}
}

// minBufferChunk is the first reservation of a body of unknown length: a
// client that sends one byte holds no more than this of the budget.
const minBufferChunk = 4 << 10

// upFront is the most of a body's declared length reserved before its
// bytes arrive.
const upFront = 64 << 10

// bodyBuffer is a body read into memory reserved from a budget. Its
// capacity is exactly what it holds of the budget; it grows by doubling,
// as its bytes arrive, so a body is copied about once in all.
type bodyBuffer struct {
	budget *buffers
	limit  int64 // the most bytes the body may have: past it, errTooLarge
	size   int64 // the length the body declared, where growth stops; 0 when unknown
	buf    []byte
	over   []byte // read past buf when it could not grow: the body's next bytes
}

// grow makes room for n more bytes.
func (bb *bodyBuffer) grow(n int) error {
	need := int64(len(bb.buf)) + int64(n)
	if need > bb.limit {
		return errTooLarge
	}
	old := int64(cap(bb.buf))
	if need <= old {
		return nil
	}
	size := min(max(need, 2*old, minBufferChunk), bb.limit)
	if need <= bb.size {
		size = min(size, bb.size) // a body that keeps its word ends exactly
	}
	return bb.resize(size)
}

// resize moves the body to a buffer of capacity size.
func (bb *bodyBuffer) resize(size int64) error {
	// The old buffer stays reserved while it is copied: both are live.
	if !bb.budget.reserve(size) {
		return errBuffersFull
	}
	nb := make([]byte, len(bb.buf), size)
	copy(nb, bb.buf)
	bb.budget.release(int64(cap(bb.buf)))
	bb.buf = nb
	return nil
}

// write appends p, or fails without appending any of it.
func (bb *bodyBuffer) write(p []byte) error {
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
func (bb *bodyBuffer) readFrom(r io.Reader, size int64) error {
	if size > bb.limit {
		return errTooLarge
	}
	bb.size = size
	if first := min(size, upFront); first > int64(cap(bb.buf)) {
		if err := bb.resize(first); err != nil {
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
func (bb *bodyBuffer) trimmed() []byte {
	n := len(bb.buf)
	if cap(bb.buf)-n <= n/8 || !bb.budget.reserve(int64(n)) {
		return bb.buf
	}
	b := make([]byte, n)
	copy(b, bb.buf)
	bb.budget.release(int64(cap(bb.buf)))
	bb.buf = b
	return b
}

// release gives the reservation back. The bytes may live on (in a stored
// entry, counted by the store, or in an answer being written), but the
// buffer no longer holds them.
func (bb *bodyBuffer) release() {
	if bb.budget != nil {
		bb.budget.release(int64(cap(bb.buf)))
	}
	bb.buf = nil
}

// shares hands each client a share of a budget for the bodies of the
// fetches its requests lead: a buffers whose parent is the budget, with a
// limit of its own. Clients choose how many slow answers they ask for at
// once, and without a cap one of them could hold the whole budget with
// exports that trickle, so that every other client's cold fetch found no
// room and went upstream on its own (issue 23). A client is its address,
// or for IPv6 its /64, which one host commonly holds whole. A share lives
// while a fetch uses it: the records are as many as fetches running.
type shares struct {
	parent *buffers
	limit  int64

	mu sync.Mutex
	m  map[netip.Prefix]*share
}

// share is one client's share, and how many fetches use it.
type share struct {
	buffers
	key   netip.Prefix
	users int // under shares.mu
}

// acquire returns client's share, which the caller gives back with
// release once no body of its holds any of it.
func (s *shares) acquire(client netip.Addr) *share {
	bits := 32
	if client.Is6() {
		bits = 64
	}
	key, _ := client.Prefix(bits) // the zero Prefix for an unknown address: one share
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.m[key]
	if sh == nil {
		if s.m == nil {
			s.m = make(map[netip.Prefix]*share)
		}
		sh = &share{buffers: buffers{limit: s.limit, parent: s.parent}, key: key}
		s.m[key] = sh
	}
	sh.users++
	return sh
}

func (s *shares) release(sh *share) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.users--; sh.users == 0 {
		delete(s.m, sh.key)
	}
}
