package acceptance

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"corral/proxy/cache"
)

// testConcurrentUse runs writers, readers and purgers at once: run it
// under -race. Every entry read is one written under its key.
func testConcurrentUse(t *testing.T, s cache.Store, c *clock) {
	const workers, ops = 8, 200
	keys := []string{"/c/0", "/c/1", "/c/2", "/c/3", "/d/0", "/d/1"}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, workers*ops)
	for w := range workers {
		wg.Go(func() {
			<-start
			for i := range ops {
				k := keys[(w+i)%len(keys)]
				var err error
				switch (w + i) % 7 {
				case 0, 1, 2:
					err = s.Set(bg, k, response(k+"#"+strconv.Itoa(w)), time.Hour, cache.Cond{Since: c.Now()})
				case 3:
					var cur *cache.Entry
					if cur, err = s.Get(bg, k); err == nil {
						err = s.Set(bg, k, response(k+"#"+strconv.Itoa(w)), time.Hour, cache.Cond{IfID: cur.ID})
					}
				case 4:
					_, err = s.Purge(bg, k, false, c.Advance(time.Microsecond))
				case 5:
					_, err = s.Purge(bg, "/d/", true, c.Advance(time.Microsecond))
				default:
					var e *cache.Entry
					if e, err = s.Get(bg, k); err == nil && !strings.HasPrefix(string(e.Body), k+"#") {
						err = fmt.Errorf("Get(%q) returned the entry %q", k, e.Body)
					}
				}
				if err != nil && !errors.Is(err, cache.ErrNotFound) && !errors.Is(err, cache.ErrConflict) && !errors.Is(err, cache.ErrPurged) {
					errs <- err
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// testConcurrentIfID: of writers that all name the same entry, one wins.
func testConcurrentIfID(t *testing.T, s cache.Store, c *clock) {
	for round := range 20 {
		key := "/race/" + strconv.Itoa(round)
		base := response("base")
		mustSet(t, s, key, base)
		const writers = 8
		entries := make([]*cache.Entry, writers)
		results := make([]error, writers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range writers {
			entries[i] = response(strconv.Itoa(i))
			wg.Go(func() {
				<-start
				results[i] = s.Set(bg, key, entries[i], time.Hour, cache.Cond{IfID: base.ID})
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range results {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: writers %d and %d both replaced the same entry", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, cache.ErrConflict):
				t.Fatalf("round %d: writer %d: %v, want nil or ErrConflict", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no writer replaced the entry", round)
		}
		want(t, s, key, entries[winner])
	}
}

// testPurgeRacesWrites: a purge that falls between a write's check and
// the write would let the old response back in. Writers whose fetch
// began before the purge write until refused; once all are done, the key
// must hold nothing. Run it under -race, or more than once, to widen the
// window.
func testPurgeRacesWrites(t *testing.T, s cache.Store, c *clock) {
	for round := range 20 {
		key := "/race/" + strconv.Itoa(round)
		purgeKey, prefix := key, round%2 == 1
		if prefix {
			purgeKey = "/race/"
		}
		began := c.Advance(time.Millisecond) // after the last round's purge
		at := c.Advance(time.Millisecond)
		// The purge waits for a first write, so that it falls among
		// writes rather than before them.
		wrote := make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for {
					err := s.Set(bg, key, response(strconv.Itoa(w)), time.Hour, cache.Cond{Since: began})
					once.Do(func() { close(wrote) })
					if errors.Is(err, cache.ErrPurged) {
						return
					}
					if err != nil {
						t.Errorf("round %d: Set: %v", round, err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			<-wrote
			if _, err := s.Purge(bg, purgeKey, prefix, at); err != nil {
				t.Errorf("round %d: Purge: %v", round, err)
			}
		})
		wg.Wait()
		want(t, s, key, nil)
	}
}
