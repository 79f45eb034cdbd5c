package body

import (
	"bytes"
	"corral/proxy/internal/cachestatus"
	"errors"
	"io"
	"testing"
	"time"
)

// streamOf returns a Stream of the body written to the returned pipe, with
// a window of win bytes, and a channel that is closed once the Stream has
// given its window back.
func streamOf(win int, stall time.Duration) (*Stream, *io.PipeWriter, <-chan struct{}) {
	pr, pw := io.Pipe()
	freed := make(chan struct{})
	s := NewStream(make([]byte, 0, win), -1, cachestatus.BuffersFull, 0, func() { close(freed) })
	s.stall = stall
	go func() {
		s.Pump(pr)
		pr.Close() // as fetchUpstream closes the response body
	}()
	return s, pw, freed
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
		if b := wait(t, got, "a reader"); !bytes.Equal(b, body) {
			t.Errorf("a reader got %d bytes, want the %d of the body", len(b), len(body))
		}
	}
	wait(t, freed, "the window to be given back")
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
	wait(t, freed, "the window to be given back")
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
	if err := wait(t, trickled, "the trickle to end"); !errors.Is(err, ErrStreamCut) {
		t.Errorf("the trickle got %v, want errStreamCut", err)
	}
}

// wait receives from ch or fails the test after a generous deadline.
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}
