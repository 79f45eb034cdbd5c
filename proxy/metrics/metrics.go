// Package metrics counts what a proxy does, in plain atomic counters
// (Stats) read where they are kept, and exports them to Prometheus, with
// the proxy's gauges and latency histograms, when scraped. It decides the
// exported names and labels: outcomes, result classes and the prefixes of
// the operator's rules, never a URL or a key.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"corral/proxy/cache"
	"corral/proxy/upstream"
)

// Metrics exports a proxy's Stats, its store's size and its latency
// histograms to Prometheus.
type Metrics struct {
	src Source

	// Client and Upstream are the latency histograms the proxy
	// observes: a client's answer, body included; an upstream exchange,
	// body included.
	Client   prometheus.Histogram
	Upstream prometheus.Histogram
}

// Source is what Metrics reads, when scraped, of the proxy it exports:
// counters as plain data, and gauges read where they are kept.
type Source struct {
	Stats    *Stats
	Guard    func() upstream.Stats // what the upstream guard counts now
	Buffered func() int64          // the buffer budget in use
	Unstored func() int64          // what of it bodies being written that the store does not hold take
	Sizer    func() cache.Sizer    // the store's gauges, or nil when it keeps none
}

// LatencyBuckets are the bounds, in seconds, of corral's latency
// histograms: from a hit in memory to an upstream timeout.
var LatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns the Metrics of src.
func New(src Source) *Metrics {
	return &Metrics{
		src: src,
		Client: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "corral_request_duration_seconds", Help: "Time to answer a client, body included.", Buckets: LatencyBuckets,
		}),
		Upstream: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "corral_upstream_duration_seconds", Help: "Time of an upstream exchange, body included.", Buckets: LatencyBuckets,
		}),
	}
}

var (
	descRequests  = prometheus.NewDesc("corral_requests_total", "Client requests by cache outcome.", []string{"outcome"}, nil)
	descUpstream  = prometheus.NewDesc("corral_upstream_requests_total", "Upstream exchanges by result.", []string{"result"}, nil)
	descRefreshes = prometheus.NewDesc("corral_background_refreshes_total", "Background revalidations started.", nil, nil)
	descEvictions = prometheus.NewDesc("corral_evictions_total", "Entries the memory budget pushed out.", nil, nil)
	descBytes     = prometheus.NewDesc("corral_stored_bytes", "Bytes the store accounts for, keys and headers included.", nil, nil)
	descEntries   = prometheus.NewDesc("corral_stored_entries", "Entries in the store.", nil, nil)
	descThrottled = prometheus.NewDesc("corral_upstream_throttled_total", "Upstream requests the guard turned away: caps full or the origin's Retry-After running.", nil, nil)
	descInflight  = prometheus.NewDesc("corral_upstream_inflight", "Upstream requests in flight.", nil, nil)
	descQueued    = prometheus.NewDesc("corral_upstream_queued", "Upstream requests waiting for the rate or in-flight cap.", nil, nil)
	descPaused    = prometheus.NewDesc("corral_upstream_paused", "1 while the origin's Retry-After holds back the upstream requests of the scope; origin: every URL's.", []string{"scope"}, nil)
	descPausedKey = prometheus.NewDesc("corral_upstream_paused_keys", "URLs whose upstream requests their own Retry-After holds back now.", nil, nil)
	descPurged    = prometheus.NewDesc("corral_purged_entries_total", "Entries dropped by purges and by unsafe requests.", nil, nil)
	descBuffered  = prometheus.NewDesc("corral_buffered_bytes", "Bytes of bodies held in memory on their way through (shared fetches until stored, copies of passed-through answers, request bodies, bodies being written that the store does not hold), against -buffer-bytes.", nil, nil)
	descUnstored  = prometheus.NewDesc("corral_unstored_bytes", "Bytes of bodies being written to clients that the store does not hold (evicted, replaced or purged meanwhile, or never stored), against their quarter of -buffer-bytes.", nil, nil)
	descCut       = prometheus.NewDesc("corral_cut_answers_total", "Answers cut short because the store let go of their body and the buffer budget had no room for it.", nil, nil)
	descRules     = prometheus.NewDesc("corral_rule_decisions_total", "Upstream responses whose freshness an operator's -rule decided, by the rule's path prefix.", []string{"rule"}, nil)
)

func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descUpstream, descRefreshes, descEvictions, descBytes, descEntries, descThrottled, descInflight, descQueued, descPaused, descPausedKey, descPurged, descBuffered, descUnstored, descCut, descRules} {
		ch <- d
	}
	m.Client.Describe(ch)
	m.Upstream.Describe(ch)
}

func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.src.Stats
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for outcome, v := range map[string]int64{
		"hit": s.Hits.Load(), "stale": s.StaleHits.Load(), "miss": s.Misses.Load(),
		"revalidated": s.Revalidated.Load(), "coalesced": s.Coalesced.Load(),
		"stale_if_error": s.StaleOnError.Load(), "stale_busy": s.StaleOnBusy.Load(),
		"bypass": s.Passed.Load(), "error": s.Errors.Load(), "busy": s.Busy.Load(),
		"abandoned": s.Abandoned.Load(), "rejected": s.Rejected.Load(),
	} {
		counter(descRequests, v, outcome)
	}
	for result, v := range map[string]int64{
		"2xx": s.Upstream2xx.Load(), "3xx": s.Upstream3xx.Load(), "4xx": s.Upstream4xx.Load(), "5xx": s.Upstream5xx.Load(),
		"timeout": s.UpstreamTimeouts.Load(), "error": s.UpstreamErrors.Load(),
	} {
		counter(descUpstream, v, result)
	}
	counter(descRefreshes, s.Refreshes.Load())
	counter(descPurged, s.Purged.Load())
	counter(descCut, s.Cut.Load())
	for prefix, n := range s.RuleDecisions {
		counter(descRules, n.Load(), prefix)
	}
	g := m.src.Guard()
	counter(descThrottled, g.Throttled)
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(g.Inflight))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(g.Queued))
	paused := 0.0
	if g.OriginPaused {
		paused = 1
	}
	ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, paused, "origin")
	ch <- prometheus.MustNewConstMetric(descPausedKey, prometheus.GaugeValue, float64(g.PausedKeys))
	ch <- prometheus.MustNewConstMetric(descBuffered, prometheus.GaugeValue, float64(m.src.Buffered()))
	ch <- prometheus.MustNewConstMetric(descUnstored, prometheus.GaugeValue, float64(m.src.Unstored()))
	if mem := m.src.Sizer(); mem != nil {
		counter(descEvictions, mem.Evictions())
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(mem.Bytes()))
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(mem.Len()))
	}
	m.Client.Collect(ch)
	m.Upstream.Collect(ch)
}
