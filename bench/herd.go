package bench

import (
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Herd is a set of clients that each poll URL every Interval until Duration
// has passed. Each client starts at a random offset within the first
// Interval, as browser tabs opened over a second would.
type Herd struct {
	Clients  int
	Interval time.Duration
	Duration time.Duration
	URL      string
	// URLs, when set, spread the clients round-robin: client i polls
	// URLs[i%len(URLs)] instead of URL, as a load balancer in front of
	// replicas would.
	URLs   []string
	Client *http.Client
}

// Result is what a herd saw.
type Result struct {
	Requests int
	Errors   int // transport errors and non-200 answers
	P50, P99 time.Duration
}

// Run polls until Duration has passed or ctx ends, and reports.
func (h Herd) Run(ctx context.Context) Result {
	ctx, cancel := context.WithTimeout(ctx, h.Duration)
	defer cancel()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errs      int
		wg        sync.WaitGroup
	)
	for i := range h.Clients {
		wg.Add(1)
		url := h.URL
		if len(h.URLs) > 0 {
			url = h.URLs[i%len(h.URLs)]
		}
		go func() {
			defer wg.Done()
			offset := h.Interval * time.Duration(i) / time.Duration(h.Clients)
			tick := time.NewTimer(offset)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				start := time.Now()
				ok := h.poll(ctx, url)
				d := time.Since(start)
				if ctx.Err() != nil {
					return // cut off by the end of the run, not an answer
				}
				mu.Lock()
				latencies = append(latencies, d)
				if !ok {
					errs++
				}
				mu.Unlock()
				tick.Reset(max(h.Interval-d, 0))
			}
		}()
	}
	wg.Wait()
	slices.Sort(latencies)
	return Result{
		Requests: len(latencies),
		Errors:   errs,
		P50:      Percentile(latencies, 0.50),
		P99:      Percentile(latencies, 0.99),
	}
}

func (h Herd) poll(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := h.Client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK
}

// Percentile returns the q-th quantile of sorted latencies, or 0 for none.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(q*float64(len(sorted))), len(sorted)-1)]
}

// NewClient returns an HTTP client that keeps enough idle connections for
// n concurrent pollers, so that a load run measures servers, not dials.
func NewClient(n int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			MaxIdleConns:        n,
			MaxIdleConnsPerHost: n,
			IdleConnTimeout:     30 * time.Second,
		},
		Timeout: 30 * time.Second,
	}
}
