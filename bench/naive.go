package bench

import (
	"io"
	"net/http"
	"net/url"
	"sync"
)

// Naive is the caching proxy of many a blog post, kept as the baseline
// corral is measured against: a sync.Map from request URI to the first
// 200 answer to a GET, served from then on. It has no notion of
// freshness, so it never asks the origin again and serves the first
// answer forever, and no coalescing, so every request that misses goes
// upstream, however many arrive together.
type Naive struct {
	// Upstream is the origin every request goes to.
	Upstream *url.URL

	// Client makes upstream requests. Nil means http.DefaultClient.
	Client *http.Client

	cache sync.Map // request URI -> *naiveEntry
}

// naiveEntry is one stored answer. Its header is handed to every client
// as it is, as the classic version does: net/http only reads it.
type naiveEntry struct {
	status int
	header http.Header
	body   []byte
}

func (n *Naive) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.URL.RequestURI()
	if r.Method == http.MethodGet {
		if v, ok := n.cache.Load(key); ok {
			v.(*naiveEntry).write(w)
			return
		}
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, n.Upstream.String()+key, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	client := n.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	e := &naiveEntry{status: resp.StatusCode, header: resp.Header, body: body}
	if r.Method == http.MethodGet && resp.StatusCode == http.StatusOK {
		n.cache.Store(key, e)
	}
	e.write(w)
}

func (e *naiveEntry) write(w http.ResponseWriter) {
	h := w.Header()
	for k, vs := range e.header {
		h[k] = vs
	}
	w.WriteHeader(e.status)
	w.Write(e.body) //nolint:errcheck
}
