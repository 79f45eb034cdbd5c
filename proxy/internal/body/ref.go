package body

import (
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// LargeBody is the size from which a body is written to clients from a
// Ref, a chunk at a time. A smaller one is written whole from the
// entry, at no cost on the hit path: a connection that stalls holds at
// most this much of a body the store let go of.
const LargeBody = 64 << 10

// ErrCut ends the writing of a body that was let go of: the store no
// longer holds it and the buffer budget has no room for it.
var ErrCut = errors.New("body no longer held: the buffer budget has no room for it")

// Ref is a large body as clients are written from it. Each writer
// copies it a chunk at a time into net/http's copy buffer, and holds that
// chunk, not the body, while a slow client takes it: only the ref, and
// the store's entries, hold the body.
//
// While the store holds an entry with the body, its budget counts it; while
// clients are written a body it does not hold (evicted, replaced or purged
// meanwhile, or an answer that was never stored), the body takes room in
// their Share of the buffer budget, once however many read it. A body
// that finds no room is cut: the ref lets go of it, so that once the store
// has too the memory is free, and its writers stop at their next chunk.
type Ref struct {
	body      atomic.Pointer[[]byte] // nil once cut
	size      int64
	sent      atomic.Int64 // the most bytes any writer has taken
	steppedAt atomic.Int64 // when, in Unix nanoseconds, sent last passed a multiple of paceStep
	owner     *Unstored

	// Guarded by owner.mu.
	kept    int       // store entries holding the body
	writers int       // clients being written the body
	heldAt  time.Time // when it took room in the budget; zero when it holds none
}

// newRef returns the ref that body is written from, or nil for a body
// below LargeBody.
func (u *Unstored) NewRef(body []byte) *Ref {
	if len(body) < LargeBody {
		return nil
	}
	r := &Ref{size: int64(len(body)), owner: u}
	r.body.Store(&body)
	return r
}

// advance records that a client has taken r's body up to off.
func (r *Ref) advance(off int64) {
	for {
		sent := r.sent.Load()
		if off <= sent {
			return
		}
		if r.sent.CompareAndSwap(sent, off) {
			if off/paceStep > sent/paceStep {
				r.steppedAt.Store(r.owner.now().UnixNano())
			}
			return
		}
	}
}

// Unstored keeps the bodies being written to clients that the store
// does not hold within their Share of the buffer budget. When a body needs
// room and there is none, it takes the room of bodies whose clients read
// slower than minRate, oldest first: a client that reads at a trickle
// cannot keep a body from those who read it. Otherwise the body is cut.
//
// The pace is the time the clients took for their last paceStep bytes, not
// their bytes over all the time they held room: the socket Budget of a
// client that reads nothing take megabytes at first, which would make it
// look fast for minutes.
type Unstored struct {
	budget  *Budget
	minRate int64 // bytes a second; 0: no client gives up room for its pace
	now     func() time.Time

	mu   sync.Mutex
	held []*Ref // holding room, in the order they took it
}

// kept records that the store took an entry whose body r is written from.
// A body that was cut is held again: body is it, counted by the store.
func (u *Unstored) Kept(r *Ref, body []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r.kept++
	if r.body.Load() == nil {
		r.body.Store(&body)
	}
	u.settle(r)
}

// dropped records that the store let go of an entry whose body r is.
func (u *Unstored) Dropped(r *Ref) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r.kept--
	u.settle(r)
}

// enter counts a client about to be written r's body, and reports whether
// the body is held for it: stored, or given room in the budget. A client
// it is not held for is not counted.
func (u *Unstored) Enter(r *Ref) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	r.writers++
	u.settle(r)
	if r.body.Load() == nil {
		r.writers--
		return false
	}
	return true
}

// leave counts a client written r's body, whole or not.
func (u *Unstored) Leave(r *Ref) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r.writers--
	u.settle(r)
}

// settle makes r hold room in the budget exactly while clients are written
// it and the store does not hold it, or cuts it. The caller holds mu.
func (u *Unstored) settle(r *Ref) {
	needs := r.kept == 0 && r.writers > 0 && r.body.Load() != nil
	holds := !r.heldAt.IsZero()
	switch {
	case needs && !holds:
		if !u.take(r) {
			r.body.Store(nil)
		}
	case !needs && holds:
		u.release(r)
	}
}

// take gives r room in the budget, from bodies read too slowly if it must,
// and reports whether it did. The caller holds mu.
func (u *Unstored) take(r *Ref) bool {
	now := u.now()
	for !u.budget.Reserve(r.size) {
		i := slices.IndexFunc(u.held, func(h *Ref) bool { return u.tooSlow(h, now) })
		if i < 0 {
			return false
		}
		victim := u.held[i]
		u.release(victim)
		victim.body.Store(nil)
	}
	r.heldAt = now
	u.held = append(u.held, r)
	return true
}

// paceStep is what clients must take of a body every paceStep/minRate to
// keep its room: eight chunks of net/http's copy buffer.
const paceStep = 256 << 10

// tooSlow reports whether the clients of h, which holds room, have taken
// less of it lately than minRate allows: no paceStep bytes since it took
// its room or last passed a step.
func (u *Unstored) tooSlow(h *Ref, now time.Time) bool {
	if u.minRate == 0 {
		return false
	}
	last := max(h.heldAt.UnixNano(), h.steppedAt.Load())
	return now.UnixNano()-last > paceStep*int64(time.Second)/u.minRate
}

// release gives back the room r holds. The caller holds mu.
func (u *Unstored) release(r *Ref) {
	u.budget.Release(r.size)
	r.heldAt = time.Time{}
	u.held = slices.DeleteFunc(u.held, func(h *Ref) bool { return h == r })
}

// InUse returns the bytes of the budget that unstored bodies hold now.
func (u *Unstored) InUse() int64 { return u.budget.InUse() }

// MinRate is the slowest, in bytes a second, that clients may read and
// keep their room when another needs it; 0 for none.
func (u *Unstored) MinRate() int64 { return u.minRate }

// NewUnstored returns the keeper of bodies the store does not hold, with
// budget as their share of the buffer budget (see Unstored).
func NewUnstored(budget *Budget, minRate int64, now func() time.Time) *Unstored {
	return &Unstored{budget: budget, minRate: minRate, now: now}
}

// NewRefReader returns a reader of r's body for one client.
func NewRefReader(r *Ref) *RefReader { return &RefReader{ref: r} }

// Cut reports whether a Read found the body cut.
func (b *RefReader) Cut() bool { return b.cut }

// Held reports whether the body was not cut.
func (r *Ref) Held() bool { return r.body.Load() != nil }

// Owner is the keeper the ref's body answers to.
func (r *Ref) Owner() *Unstored { return r.owner }

// RefReader reads a Ref's body for one client, as an io.ReadSeeker
// for http.ServeContent. It does not implement io.WriterTo: io.Copy, and
// net/http's ReadFrom, read it a chunk at a time.
type RefReader struct {
	ref *Ref
	off int64
	cut bool // a Read found the body cut
}

func (b *RefReader) Read(p []byte) (int, error) {
	if b.off >= b.ref.size {
		return 0, io.EOF
	}
	body := b.ref.body.Load()
	if body == nil {
		b.cut = true
		return 0, ErrCut
	}
	n := copy(p, (*body)[b.off:])
	b.off += int64(n)
	b.ref.advance(b.off)
	return n, nil
}

func (b *RefReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.ref.size
	}
	if offset < 0 {
		return 0, errors.New("seek before the start of the body")
	}
	b.off = offset
	return offset, nil
}
