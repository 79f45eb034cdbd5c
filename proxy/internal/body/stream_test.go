package body

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"corral/internal/testwait"
	"corral/proxy/internal/cachestatus"
	"corral/proxy/internal/fakeclock"
)

// streamOf returns a Stream of the body written to the returned pipe, with
// a window of win bytes, and a channel that is closed once the Stream has
// given its window back.
func streamOf(win int, stall time.Duration) (*Stream, *io.PipeWriter, <-chan struct{}) {
	freed := make(chan struct{})
	s := NewStream(make([]byte, 0, win), -1, cachestatus.BuffersFull, 0, func() { close(freed) })
	s.stall = stall
	return s, pump(s), freed
}

// pump starts s reading the body written to the returned pipe.
func pump(s *Stream) *io.PipeWriter {
	pr, pw := io.Pipe()
	go func() {
		s.Pump(pr)
		pr.Close() // as fetchUpstream closes the response body
	}()
	return pw
}

// newClock returns a clock for a Stream that moves only when told to.
func newClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
}

// TestStreamHandsEveryReaderTheWholeBody: readers that join at the start
// each get the whole body, longer than the window, whatever their pace.
func TestStreamHandsEveryReaderTheWholeBody(t *testing.T) {
	s, pw, freed := streamOf(1<<10, time.Minute)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<10) // 16 KiB through 1 KiB
	var readers []*StreamReader
	for range 3 {
		readers = append(readers, s.Join())
	}
	go func() {
		pw.Write(body)
		pw.Close()
	}()
	got := make(chan []byte, len(readers))
	for i, r := range readers {
		go func() {
			defer r.Close()
			var b bytes.Buffer
			chunk := make([]byte, 100*(i+1)) // each its own pace
			for {
				n, err := r.Read(chunk)
				b.Write(chunk[:n])
				if err != nil {
					break
				}
			}
			got <- b.Bytes()
		}()
	}
	for range readers {
		if b := testwait.Receive(t, got, "a reader"); !bytes.Equal(b, body) {
			t.Errorf("a reader got %d bytes, want the %d of the body", len(b), len(body))
		}
	}
	testwait.Receive(t, freed, "the window to be given back")
	if r := s.Join(); r != nil {
		t.Error("a reader joined a Stream whose window had moved on and been given back")
	}
}

// TestStreamCutsAReaderThatHoldsTheOthersBack: a reader that takes nothing
// while the window is full is cut off after the stall, and the others get
// the whole body.
func TestStreamCutsAReaderThatHoldsTheOthersBack(t *testing.T) {
	s, pw, _ := streamOf(1<<10, 50*time.Millisecond)
	body := bytes.Repeat([]byte("x"), 8<<10)
	fast, stalled := s.Join(), s.Join()
	go func() {
		pw.Write(body)
		pw.Close()
	}()
	b, err := io.ReadAll(fast)
	fast.Close()
	if err != nil || !bytes.Equal(b, body) {
		t.Errorf("the fast reader got %d bytes and %v, want the whole body", len(b), err)
	}
	if _, err := io.ReadAll(stalled); !errors.Is(err, ErrStreamCut) {
		t.Errorf("the stalled reader got %v, want errStreamCut", err)
	}
	stalled.Close()
}

// TestStreamEndsWithNoReader: a Stream nobody joins stops reading its body
// once no client can join any more.
func TestStreamEndsWithNoReader(t *testing.T) {
	s, pw, freed := streamOf(1<<10, time.Minute)
	s.mu.Lock()
	s.joinBy = time.Now() // past the join
	s.mu.Unlock()
	n, err := pw.Write(bytes.Repeat([]byte("x"), 4<<10))
	if !errors.Is(err, io.ErrClosedPipe) || n > 1<<10 {
		t.Errorf("the body's writer got %d bytes read and %v; want the pump to stop after one window", n, err)
	}
	testwait.Receive(t, freed, "the window to be given back")
}

// TestStreamCutsATrickleThatHoldsOthersBack is the second attack pass's
// third finding: a reader that takes a few bytes every second and a half
// was never still for the stall, and held the herd to its pace until the
// body was cut for everyone. A reader slower than the minimum rate while
// another waits for bytes is cut off.
func TestStreamCutsATrickleThatHoldsOthersBack(t *testing.T) {
	s, pw, _ := streamOf(1<<10, time.Minute)
	s.minRate = 64 << 10
	body := bytes.Repeat([]byte("x"), 64<<10)
	fast, trickle := s.Join(), s.Join()
	go func() {
		pw.Write(body)
		pw.Close()
	}()
	trickled := make(chan error, 1)
	go func() {
		defer trickle.Close()
		b := make([]byte, 16)
		for {
			if _, err := trickle.Read(b); err != nil {
				trickled <- err
				return
			}
			time.Sleep(20 * time.Millisecond) // a client on a thread of a link
		}
	}()
	b, err := io.ReadAll(fast)
	fast.Close()
	if err != nil || !bytes.Equal(b, body) {
		t.Errorf("the fast reader got %d bytes and %v, want the whole body", len(b), err)
	}
	if err := testwait.Receive(t, trickled, "the trickle to end"); !errors.Is(err, ErrStreamCut) {
		t.Errorf("the trickle got %v, want errStreamCut", err)
	}
}

// TestStreamCutsAStuckReaderOnlyWhenItHelps is the finding of a lone
// reader cut at 200 and 500 KiB/s: a reader's place moves only when a
// 32 KiB write to its connection completes, and the kernel wakes a writer
// only once much of a send buffer of megabytes has drained, so a reader
// well above -client-min-rate stood still for the stall, and was cut
// though no one waited for it. A reader at the full window's start is
// cut when it holds another back (for the stall, or at all when slower
// than minRate), or when it reads slower than minRate on its own, so
// that it cannot hold the upstream connection at a trickle. Its pace
// counts only the time it had bytes to take: a reader held back by the
// origin or by a slower reader is not slow itself.
func TestStreamCutsAStuckReaderOnlyWhenItHelps(t *testing.T) {
	const kib, s = 1 << 10, time.Second
	for _, tc := range []struct {
		name    string
		minRate int64         // bytes a second
		pos     int64         // where the reader stands: the full window's start
		waiting bool          // another reader waits at the window's end
		waited  time.Duration // how long the reader had waited at the window's end for bytes
		moved   time.Duration // when, since it joined, the pump found it there
		looked  time.Duration // when, since it joined, the pump looks again
		cut     bool
	}{
		{"a lone reader at 200 KiB/s, still for longer than the stall", 64 * kib, 3598 * kib, false, 0, 18 * s, 21 * s, false},
		{"a lone reader at 500 KiB/s, still for longer than the stall", 64 * kib, 3911 * kib, false, 0, 8 * s, 11 * s, false},
		{"a lone reader slower than the minimum rate", 64 * kib, 256 * kib, false, 0, 5 * s, 5*s + s/10, true},
		{"a lone reader that falls below the minimum rate while still", 64 * kib, 256 * kib, false, 0, 3 * s, 5 * s, true},
		{"a lone reader held back for most of its time, then still", 64 * kib, 256 * kib, false, 9 * s / 2, 5 * s, 7 * s, false},
		{"a lone reader held back, then slower than the minimum rate", 64 * kib, 256 * kib, false, 3 * s, 5 * s, 8 * s, true},
		{"a lone reader in its first second", 64 * kib, 0, false, 0, 0, s / 2, false},
		{"a lone reader with no minimum rate, still for an hour", 0, 32 * kib, false, 0, s, time.Hour, false},
		{"a reader at 200 KiB/s that holds another back for the stall", 64 * kib, 3598 * kib, true, 0, 18 * s, 20 * s, true},
		{"a reader at 200 KiB/s that holds another back for less", 64 * kib, 3598 * kib, true, 0, 18 * s, 19 * s, false},
		{"a reader slower than the minimum rate that holds another back", 64 * kib, 256 * kib, true, 0, 5 * s, 5*s + s/10, true},
		{"a reader that holds another back for the stall, with no minimum rate", 0, 32 * kib, true, 0, s, 3 * s, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			st := NewStream(make([]byte, StreamWindow), -1, cachestatus.BuffersFull, tc.minRate, func() {})
			st.now = c.Now
			r := st.Join()
			var other *StreamReader
			if tc.waiting {
				other = st.Join()
				other.pos = tc.pos + StreamWindow
			}
			st.mu.Lock()
			defer st.mu.Unlock()
			r.pos, r.waited, st.base = tc.pos, tc.waited, tc.pos
			c.Advance(tc.moved)
			st.cutStuck(tc.pos, c.Now()) // the pump finds the window full
			c.Advance(tc.looked - tc.moved)
			_, wait := st.cutStuck(tc.pos, c.Now())
			if r.cut != tc.cut {
				t.Errorf("the reader was cut: %v, want %v", r.cut, tc.cut)
			}
			if !r.cut && wait <= 0 {
				t.Errorf("the pump would look again after %v: a loop that never waits", wait)
			}
			if other != nil && other.cut {
				t.Error("the reader waiting at the window's end was cut")
			}
		})
	}
}

// TestStreamLooksAgainWhenALoneReaderFallsBelowTheRate: a pump held by a
// lone reader that is still, but above minRate on average, waits until
// that reader would fall below minRate, and then cuts it: it neither
// looks again and again meanwhile, nor waits forever. With no minimum
// rate it waits for the reader to move or leave (the client's write
// timeout bounds one that stops).
func TestStreamLooksAgainWhenALoneReaderFallsBelowTheRate(t *testing.T) {
	c := newClock()
	s := NewStream(make([]byte, StreamWindow), -1, cachestatus.BuffersFull, 64<<10, func() {})
	s.now = c.Now
	r := s.Join()
	s.mu.Lock()
	defer s.mu.Unlock()
	r.pos, s.base = 3584<<10, 3584<<10 // 3.5 MiB: below 64 KiB/s after 56 s
	c.Advance(20 * time.Second)
	cut, wait := s.cutStuck(r.pos, c.Now())
	if cut || wait != 36*time.Second {
		t.Fatalf("at 20 s the reader was cut: %v, and the pump would look again after %v; want no cut, and 36 s", cut, wait)
	}
	c.Advance(wait)
	if cut, _ := s.cutStuck(r.pos, c.Now()); !cut {
		t.Error("at 56 s the reader, below 64 KiB/s on average, was not cut")
	}

	s.minRate = 0
	r = &StreamReader{s: s, pos: s.base, joined: c.Now()}
	s.readers[r] = struct{}{}
	c.Advance(time.Hour)
	if cut, wait := s.cutStuck(r.pos, c.Now()); cut || wait < 24*time.Hour {
		t.Errorf("with no minimum rate, a lone reader still for an hour was cut: %v, and the pump would look again after %v; want no cut, and no look before it moves", cut, wait)
	}
}

// TestStreamCutsALoneTrickle: a lone reader that takes 16 bytes a second
// is never still for the stall, but far slower than minRate: it is cut,
// rather than hold the upstream connection open at its pace.
func TestStreamCutsALoneTrickle(t *testing.T) {
	c := newClock()
	s := NewStream(make([]byte, 0, 1<<10), -1, cachestatus.BuffersFull, 64<<10, func() {})
	s.now = c.Now
	s.joinBy = c.Now() // the herd has joined
	r := s.Join()
	pw := pump(s)
	go func() {
		pw.Write(bytes.Repeat([]byte("x"), 64<<10))
		pw.Close()
	}()
	defer r.Close()
	b := make([]byte, 16)
	var err error
	for err == nil {
		c.Advance(time.Second)
		_, err = r.Read(b)
	}
	if !errors.Is(err, ErrStreamCut) {
		t.Errorf("the trickle got %v, want errStreamCut", err)
	}
}

// TestStreamKeepsALoneReaderThatStalls: with a stall of nothing, a lone
// reader is still each time the pump fills the window, but holds no one
// back and is well above minRate: it gets the whole body.
func TestStreamKeepsALoneReaderThatStalls(t *testing.T) {
	s := NewStream(make([]byte, 0, 1<<10), -1, cachestatus.BuffersFull, 1<<10, func() {})
	s.stall = 0
	s.joinBy = time.Now() // the herd has joined
	r := s.Join()
	pw := pump(s)
	body := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB through 1 KiB
	go func() {
		pw.Write(body)
		pw.Close()
	}()
	defer r.Close()
	var got bytes.Buffer
	chunk := make([]byte, 100)
	var err error
	for err == nil {
		var n int
		n, err = r.Read(chunk)
		got.Write(chunk[:n])
	}
	// At 1 KiB/s, 64 KiB would take a minute: the test is done far sooner.
	if err != io.EOF || !bytes.Equal(got.Bytes(), body) {
		t.Errorf("the lone reader got %d bytes and %v, want the %d of the body", got.Len(), err, len(body))
	}
}
