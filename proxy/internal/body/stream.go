package body

import (
	"corral/proxy/internal/cachestatus"
	"errors"
	"io"
	"math"
	"sync"
	"time"
)

// A Stream hands one upstream body to every client of a flight that could
// not hold it (the buffer budget spent, or a body over MaxObjectBytes), so
// that a herd still costs one upstream exchange rather than one each
// (issue 23): one client who spends the budget must not switch coalescing
// off for everyone else.
//
// The body passes through a window of memory: what the pump read from the
// origin and not every reader has taken yet. The window is what the fetch
// had buffered when it ran out of room, still reserved from the budget, or
// when that is less, StreamWindow bytes; it never grows. The pump reads on only
// while the window has room, so the herd moves at the pace of its slowest
// reader. A reader that holds the window full is cut off when the cut
// helps: when it reads slower than minRate, for it would set the herd's
// pace to a trickle, or, alone, hold the upstream connection open at one;
// and when another reader waits for bytes and it has not moved for
// streamStall, so that one client cannot hold the others back for longer
// than that. A reader's pace is its bytes over the time it had bytes to
// take: waiting for the origin or for slower readers is not slowness of
// its own. Standing still alone is no reason: a reader's place moves only
// when a write to its connection completes, which the kernel allows in
// bursts a send buffer apart, so a reader well above minRate can stand
// still for longer than streamStall. With no minRate, a lone reader is
// never cut here; the client's write timeout still disconnects one that
// takes nothing.
// Readers join while the window still holds the body's first byte, which
// it keeps for streamJoin, and for a body that fits, to its end.
type Stream struct {
	Length int64              // the body's declared length; -1 when unknown
	Detail cachestatus.Detail // why it streams, for Cache-Status

	mu      sync.Mutex
	wake    chan struct{} // closed and replaced when bytes come or go, or the body ends
	win     []byte        // body bytes [base, base+len(win)); cap(win) is reserved
	base    int64
	err     error // why the pump stopped: io.EOF once the body is whole
	readers map[*StreamReader]struct{}
	users   int              // readers and the pump: the window goes when none is left
	stall   time.Duration    // streamStall, but in tests
	now     func() time.Time // time.Now, but in tests
	minRate int64            // bytes a second: a reader slower is cut when it holds the window full; 0 for none

	// stuckAt is where the slowest readers were when the pump last
	// found the window full and could not move it, since stuckSince.
	stuckAt    int64
	stuckSince time.Time

	joinBy  time.Time // the window keeps the first byte until then
	release func()    // gives the window's reservation back
	freed   bool      // release was called: no one may join
}

// StreamReader is one client's place in a Stream.
type StreamReader struct {
	s      *Stream
	pos    int64
	joined time.Time
	cut    bool

	// waited is how long it has waited at the window's end for the pump
	// (for the origin, or for slower readers), since waitingSince while
	// it waits: time that says nothing of its own pace.
	waited       time.Duration
	waitingSince time.Time
}

// busy is how long r has had bytes to take since it joined.
func (r *StreamReader) busy(now time.Time) time.Duration {
	d := now.Sub(r.joined) - r.waited
	if !r.waitingSince.IsZero() {
		d -= now.Sub(r.waitingSince)
	}
	return d
}

// never is a wait with no end: the pump waits for a reader to move or
// leave.
const never = time.Duration(math.MaxInt64)

const (
	// StreamWindow is a Stream's window when its fetch had buffered
	// less: httputil.ReverseProxy's copy buffer.
	StreamWindow = 32 << 10

	// streamStall is how long the slowest readers may hold a full
	// window, while another reader waits for bytes, before they are cut
	// off.
	streamStall = 2 * time.Second

	// streamJoin is how long the window keeps the body's first byte for
	// the flight's clients to join: they are handed the Stream at once,
	// and join within microseconds, but a straggler that comes too late
	// goes upstream on its own.
	streamJoin = 100 * time.Millisecond
)

var (
	ErrStreamCut       = errors.New("stream: reader held the others back or read too slowly, and was cut off")
	errStreamNoReaders = errors.New("stream: no client reads it")
)

// NewStream returns a Stream of a body of the declared length (-1 when
// unknown) whose first bytes are in win; release gives back what win
// holds of the budget, once no one reads it.
func NewStream(win []byte, length int64, d cachestatus.Detail, minRate int64, release func()) *Stream {
	return &Stream{
		Length:  length,
		Detail:  d,
		wake:    make(chan struct{}),
		win:     win,
		readers: make(map[*StreamReader]struct{}),
		users:   1, // the pump
		stall:   streamStall,
		now:     time.Now,
		minRate: minRate,
		stuckAt: -1,
		joinBy:  time.Now().Add(streamJoin),
		release: release,
	}
}

// join returns a reader at the body's first byte, or nil when the window
// has moved past it, or the Stream failed.
func (s *Stream) Join() *StreamReader {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.freed || s.base > 0 || s.err != nil && s.err != io.EOF {
		return nil
	}
	r := &StreamReader{s: s, joined: s.now()}
	s.readers[r] = struct{}{}
	s.users++
	return r
}

// notify wakes whoever waits on the Stream, with s.mu held.
func (s *Stream) notify() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// done drops one user, with s.mu held, and gives the window back after
// the last: once no client of the flight can join any more.
func (s *Stream) done() {
	if s.users--; s.users > 0 {
		return
	}
	if wait := s.joinBy.Sub(s.now()); wait > 0 && s.base == 0 {
		// The pump may finish before the flight's clients have joined.
		time.AfterFunc(wait, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.users == 0 {
				s.free()
			}
		})
		return
	}
	s.free()
}

// free gives the window back, once, with s.mu held.
func (s *Stream) free() {
	if !s.freed {
		s.freed, s.win = true, nil
		s.release()
	}
}

// pump reads body into the Stream until it ends, fails, or nobody reads
// it.
func (s *Stream) Pump(body io.Reader) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.done()
	for {
		for len(s.win) == cap(s.win) {
			if err := s.makeRoom(); err != nil {
				s.err = err
				s.notify()
				return
			}
		}
		room := s.win[len(s.win):cap(s.win)]
		s.mu.Unlock()
		// Readers copy out of the bytes before room, under the lock:
		// the read fills memory no one else touches.
		n, err := body.Read(room)
		s.mu.Lock()
		s.win = s.win[:len(s.win)+n]
		if err != nil {
			s.err = err
			s.notify()
			return
		}
		if n > 0 {
			s.notify()
		}
	}
}

// makeRoom, with s.mu held and the window full, drops from the window
// what every reader has taken, or waits until it can: for a reader to
// take more, for streamJoin to pass, or until cutStuck cuts the readers
// that hold the window full. It fails when no reader is left.
func (s *Stream) makeRoom() error {
	now := s.now()
	joining := s.base == 0 && now.Before(s.joinBy)
	if !joining && len(s.readers) == 0 {
		return errStreamNoReaders
	}
	taken := s.base + int64(len(s.win)) // what every reader has taken
	for r := range s.readers {
		taken = min(taken, r.pos)
	}
	if n := taken - s.base; n > 0 && !joining {
		copy(s.win, s.win[n:])
		s.win = s.win[:int64(len(s.win))-n]
		s.base = taken
		return nil
	}
	wait := s.joinBy.Sub(now)
	if !joining {
		var cut bool
		if cut, wait = s.cutStuck(taken, now); cut {
			s.notify()
			return nil
		}
	}
	wake := s.wake
	s.mu.Unlock()
	var timeout <-chan time.Time
	if wait < never {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-wake:
	case <-timeout:
	}
	s.mu.Lock()
	return nil
}

// cutStuck, with s.mu held and the window full, cuts off the slowest
// readers, at taken, that are due to be (see untilCut), and reports
// whether it cut any; otherwise it says how long until the first of them
// is due, never when none can be without moving.
func (s *Stream) cutStuck(taken int64, now time.Time) (cut bool, wait time.Duration) {
	if taken != s.stuckAt {
		s.stuckAt, s.stuckSince = taken, now
	}
	end := s.base + int64(len(s.win))
	waiting := false
	for r := range s.readers {
		waiting = waiting || r.pos == end
	}
	wait = never
	for r := range s.readers {
		if r.pos != taken {
			continue
		}
		if due := s.untilCut(r, waiting, now); due <= 0 {
			r.cut, cut = true, true
			delete(s.readers, r)
		} else {
			wait = min(wait, due)
		}
	}
	if cut {
		return true, 0
	}
	return false, wait
}

// untilCut is how long from now until r, holding the window full and
// taking nothing more, is cut off (see Stream); 0 or less when it is
// due. While another reader waits for bytes, r is due once it has not
// moved for s.stall. Waiting or not, it is due once it has read slower
// than s.minRate over the time it had bytes to take, a second of it at
// least: a trickle that moves more often than the stall would otherwise
// set the herd's pace, or hold the upstream connection open on its own.
// Still but above s.minRate, a lone reader is never due: cutting it
// helps no one.
func (s *Stream) untilCut(r *StreamReader, waiting bool, now time.Time) time.Duration {
	due := never
	if waiting {
		due = s.stuckSince.Add(s.stall).Sub(now)
	}
	if s.minRate > 0 {
		// r's pace falls to minRate once it has had bytes to take for
		// pos/minRate seconds (at most a billion of them, so as not to
		// overflow a Duration).
		pace := time.Duration(min(float64(r.pos)/float64(s.minRate), 1e9) * float64(time.Second))
		due = min(due, max(pace, time.Second)-r.busy(now))
	}
	return due
}

// Read reads the next bytes of the body, waiting for the pump.
func (r *StreamReader) Read(p []byte) (int, error) {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if r.cut {
			return 0, ErrStreamCut
		}
		if end := s.base + int64(len(s.win)); r.pos < end {
			n := copy(p, s.win[r.pos-s.base:])
			r.pos += int64(n)
			s.notify()
			return n, nil
		}
		if s.err != nil {
			return 0, s.err
		}
		wake := s.wake
		r.waitingSince = s.now()
		s.mu.Unlock()
		<-wake
		s.mu.Lock()
		r.waited += s.now().Sub(r.waitingSince)
		r.waitingSince = time.Time{}
	}
}

// close leaves the Stream.
// Close leaves the stream.
func (r *StreamReader) Close() {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.readers[r]; ok {
		delete(s.readers, r)
		s.notify()
	}
	s.done()
}
