package cache_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"corral/proxy/cache"
)

// refreshState is what a process might keep beside an entry: here, when
// a background refresh may next start. A freshness decision computed
// from the entry, or a memo of the fields served from it, would go here
// too.
type refreshState struct {
	refreshAt atomic.Int64
}

// A proxy keeps what it derives from an entry beside it in memory, and
// reads both on the hit path without allocating.
func ExampleMemory_GetLocal() {
	m := cache.NewMemory(cache.Config{MaxBytes: 64 << 20, Keep: time.Minute})
	defer m.Close()

	e := &cache.Entry{Kind: cache.Response, ID: cache.NewID(), Status: 200, Header: http.Header{}, Body: []byte("hi")}
	began := time.Now()
	if err := m.SetLocal(context.Background(), "/a", e, new(refreshState), time.Minute, cache.Cond{Since: began}); err != nil {
		fmt.Println(err)
	}

	got, l := m.GetLocal("/a")
	st := l.(*refreshState)
	st.refreshAt.Store(time.Now().Add(time.Second).UnixNano())
	fmt.Println(got.Status, string(got.Body), st.refreshAt.Load() > 0)
	// Output: 200 hi true
}
