package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/proxy/cache"
	"corral/proxy/internal/httprule"
	"corral/proxy/rules"
)

// decodingStore stands for a store shared with other processes: what is
// written is encoded, and what is read back is a decoded copy, with
// nothing kept beside it. A proxy behind it recomputes everything it
// derives from an entry on every read.
type decodingStore struct{ cache.Store }

func (s decodingStore) Set(ctx context.Context, key string, e *cache.Entry, ttl time.Duration, cond cache.Cond) error {
	b, err := e.MarshalBinary()
	if err != nil {
		return err
	}
	var c cache.Entry
	if err := c.UnmarshalBinary(b); err != nil {
		return err
	}
	return s.Store.Set(ctx, key, &c, ttl, cond)
}

// TestDecodedEntriesServeAlike: a hit on an entry decoded from what
// another process stored answers as a hit on the entry this process
// keeps: the same Age (the origin's included), Cache-Status (with the
// targeted field or the rule that decided) and header, and never the
// Corral-Cache-Control that is for corral alone.
func TestDecodedEntriesServeAlike(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "max-age=600")
		switch r.URL.Path {
		case "/aged":
			h.Set("Age", "100")
		case "/targeted":
			h.Set("Cache-Control", "max-age=10")
			h.Set(httprule.CorralOnly, "max-age=900, stale-while-revalidate=30")
		case "/ruled/x", "/RULED/x": // a rule matches every spelling of its path
			h.Set("Cache-Control", "max-age=10")
		case "/vary":
			h.Set("Vary", "Accept-Language")
			h.Set("Content-Language", "fr")
		case "/private-field":
			h.Set("Cache-Control", `max-age=600, private="X-Secret"`)
			h.Set("X-Secret", "mine")
		}
		io.WriteString(w, "body of "+r.URL.Path)
	})
	rule, err := rules.Parse("/ruled/ max-age=300")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Rules: []rules.Rule{rule}}
	here := newTestProxy(t, o, clk, cfg)
	shared := cache.NewMemory(cache.Config{MaxBytes: 1 << 20})
	t.Cleanup(shared.Close)
	cfg.Store = decodingStore{shared}
	elsewhere := newTestProxy(t, o, clk, cfg)

	type answer struct {
		Response response
		Header   http.Header
	}
	hit := func(p *Proxy, path string) answer {
		res, h := get(p, path, "Accept-Language", "fr")
		h.Del("Date")
		return answer{res, h}
	}
	for _, path := range []string{"/plain", "/aged", "/targeted", "/ruled/x", "/RULED/x", "/vary", "/private-field"} {
		t.Run(path, func(t *testing.T) {
			hit(here, path)
			hit(elsewhere, path)
			clk.Advance(5 * time.Second)
			want, got := hit(here, path), hit(elsewhere, path)
			if want.Response.Status != http.StatusOK || want.Response.Age == "" || !strings.Contains(want.Response.CacheStatus, "hit") || want.Header.Get(httprule.CorralOnly) != "" {
				t.Fatalf("this process served %+v, want a hit without %s", want, httprule.CorralOnly)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("hit on a decoded entry differs (-this process +decoded):\n%s", diff)
			}
		})
	}
}

// downStore fails every call, as a shared store out of reach does.
type downStore struct{}

var errDown = errors.New("store out of reach")

func (downStore) Get(context.Context, string) (*cache.Entry, error) { return nil, errDown }
func (downStore) Set(context.Context, string, *cache.Entry, time.Duration, cache.Cond) error {
	return errDown
}
func (downStore) Delete(context.Context, string) error { return errDown }
func (downStore) Purge(context.Context, string, bool, time.Time) (int, error) {
	return 0, errDown
}

// TestFailingStoreIsAMiss: a store that fails costs the origin a request
// per client request, and the log a line, but never a client an error: a
// failed read is a miss, a failed write is not stored.
func TestFailingStoreIsAMiss(t *testing.T) {
	clk := newClock()
	o := newOrigin(t, clk, answer("max-age=60", "hello"))
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
	p := newTestProxy(t, o, clk, Config{Store: downStore{}, Logger: log})
	var got []response
	for range 2 {
		res, _ := get(p, "/a")
		got = append(got, res)
	}
	if n, _ := p.Purge("/a", false); n != 0 {
		t.Errorf("Purge reported %d entries dropped from a store that is down", n)
	}
	want := []response{ // never "stored"
		{Status: 200, Body: "hello", CacheStatus: "corral; fwd=uri-miss; fwd-status=200"},
		{Status: 200, Body: "hello", CacheStatus: "corral; fwd=uri-miss; fwd-status=200"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers behind a failing store (-want +got):\n%s", diff)
	}
	if n := o.count(); n != 2 {
		t.Errorf("origin saw %d requests, want 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, msg := range []string{"cache read failed", "cache write failed", "cache purge failed"} {
		if !strings.Contains(buf.String(), msg) {
			t.Errorf("no %q in the log:\n%s", msg, buf.String())
		}
	}
}
