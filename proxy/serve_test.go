package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Every client gets a header of its own: what one client's handler chain
// does to it, appending included, reaches neither the stored response nor
// another client, nor another field of the same response.
func TestServedHeaderIsTheClientsOwn(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("X-Origin", "1")
		w.Write([]byte("hello"))
	})
	p := newTestProxy(t, o, clk, Config{})
	serve := func() http.Header {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
		return rec.Header() // the map the proxy wrote into
	}
	serve() // miss, stored
	first := serve()
	want := first.Clone()

	fields := []string{"Age", "Via", "Cache-Status", "Content-Length", "X-Origin", "Date"}
	for _, f := range fields {
		first.Add(f, "added")
	}
	for _, f := range fields {
		if got := first.Values(f); len(got) != 2 || got[0] != want.Get(f) {
			t.Errorf("after adding to every field, %s is %q, want %q and the added value", f, got, want.Get(f))
		}
	}
	first["X-Origin"][0] = "changed in place"

	second := serve()
	if diff := cmp.Diff(want, second); diff != "" {
		t.Errorf("second client's header changed by the first client's edits (-want +got):\n%s", diff)
	}
}
