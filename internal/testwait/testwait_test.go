package testwait_test

import (
	"errors"
	"testing"

	"corral/internal/testwait"
)

func TestReceiveReturnsWhatWasSent(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 42
	if got := testwait.Receive(t, ch, "the value"); got != 42 {
		t.Errorf("Receive = %d, want 42", got)
	}
}

// Until and UntilNil return as soon as the condition holds, having asked
// it once per poll, on the caller's goroutine.
func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	testwait.Until(t, "the third call", func() bool { calls++; return calls == 3 })
	if calls != 3 {
		t.Errorf("Until called cond %d times, want 3", calls)
	}
	calls = 0
	testwait.UntilNil(t, "the third call", func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("UntilNil called check %d times, want 3", calls)
	}
}
