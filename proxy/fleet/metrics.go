package fleet

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// counters are a Fleet's counts, kept as plain data and exported by
// Stats and Collect.
type counters struct {
	ops [numOps]struct{ ok, failed atomic.Int64 }

	rejected       atomic.Int64
	unavailable    atomic.Int64
	localMarks     atomic.Int64
	abandoned      atomic.Int64
	hits           atomic.Int64
	decodeErrors   atomic.Int64
	taken          atomic.Int64
	waited         atomic.Int64
	takeovers      atomic.Int64
	renewed        atomic.Int64
	lost           atomic.Int64
	wokenByMessage atomic.Int64
	wokenByRecheck atomic.Int64
	purgesReceived atomic.Int64
	purgesDropped  atomic.Int64
	announced      [numAnnounced]atomic.Int64 // by result
}

// Stats are a Fleet's counts since New.
type Stats struct {
	Commands      int64 // Redis calls made
	CommandErrors int64 // of them, failed (an ErrPurged or ErrConflict is an answer)
	Rejected      int64 // calls the open breaker skipped

	SharedHits   int64 // Claims that returned an entry and no lease
	Unavailable  int64 // zero Claims: Redis failed, or the breaker was open
	LocalMarks   int64 // zero Claims: the holder left a local-only mark
	Abandoned    int64 // zero Claims: ctx ended while waiting
	DecodeErrors int64 // entries that did not decode, taken as misses

	LeasesTaken    int64 // Claims that returned a lease
	Waited         int64 // Claims that waited for another replica's fetch
	Takeovers      int64 // leases taken after waiting, never woken: the holder's expired
	Renewed        int64 // lease renewals
	Lost           int64 // renewals that found the lease gone before its Release
	WokenByMessage int64 // waits ended by a wake-up
	WokenByRecheck int64 // waits ended by the Recheck timer

	PurgesReceived       int64 // other replicas' purges handed to OnPurge
	PurgeMessagesDropped int64 // messages on the purge channel that did not parse

	// Announce's purges, by what became of them: made (in Redis, and
	// announced), failed (Redis failed some of it), dropped (the queue
	// was full, or the Fleet closed first).
	AnnouncedPurges, AnnounceFailed, AnnounceDropped int64

	BreakerOpen bool // the breaker is open or half-open: the replica is local-only
}

// Stats returns the Fleet's counts.
func (f *Fleet) Stats() Stats {
	c := &f.stats
	s := Stats{
		Rejected:             c.rejected.Load(),
		SharedHits:           c.hits.Load(),
		Unavailable:          c.unavailable.Load(),
		LocalMarks:           c.localMarks.Load(),
		Abandoned:            c.abandoned.Load(),
		DecodeErrors:         c.decodeErrors.Load(),
		LeasesTaken:          c.taken.Load(),
		Waited:               c.waited.Load(),
		Takeovers:            c.takeovers.Load(),
		Renewed:              c.renewed.Load(),
		Lost:                 c.lost.Load(),
		WokenByMessage:       c.wokenByMessage.Load(),
		WokenByRecheck:       c.wokenByRecheck.Load(),
		PurgesReceived:       c.purgesReceived.Load(),
		PurgeMessagesDropped: c.purgesDropped.Load(),
		AnnouncedPurges:      c.announced[announceMade].Load(),
		AnnounceFailed:       c.announced[announceFailed].Load(),
		AnnounceDropped:      c.announced[announceDropped].Load(),
		BreakerOpen:          f.breaker.State() != gobreaker.StateClosed,
	}
	for i := range c.ops {
		ok, failed := c.ops[i].ok.Load(), c.ops[i].failed.Load()
		s.Commands += ok + failed
		s.CommandErrors += failed
	}
	return s
}

var (
	descCommands  = prometheus.NewDesc("corral_redis_commands_total", "Calls to Redis by operation and result; a refused conditional write is ok.", []string{"op", "result"}, nil)
	descOpen      = prometheus.NewDesc("corral_redis_breaker_open", "1 while the breaker keeps the replica local-only (open or probing), else 0.", nil, nil)
	descHits      = prometheus.NewDesc("corral_shared_hits_total", "Claims answered by an entry of the shared tier.", nil, nil)
	descDecode    = prometheus.NewDesc("corral_shared_decode_errors_total", "Entries of the shared tier that did not decode, taken as misses.", nil, nil)
	descLeases    = prometheus.NewDesc("corral_leases_total", "Lease events: taken, waited (for another's), takeover (of an expired one), renewed, lost (gone at renewal).", []string{"event"}, nil)
	descWakeups   = prometheus.NewDesc("corral_lease_wakeups_total", "Waits for another replica's fetch ended, by what ended them.", []string{"via"}, nil)
	descPurgesIn  = prometheus.NewDesc("corral_purges_received_total", "Purges announced by other replicas.", nil, nil)
	descPurgesBad = prometheus.NewDesc("corral_purge_messages_dropped_total", "Messages on the purge channel that did not parse.", nil, nil)
	descAnnounced = prometheus.NewDesc("corral_purge_announcements_total", "Purges of unsafe requests sent to the fleet in the background, by result: made, failed (Redis failed), dropped (the queue was full).", []string{"result"}, nil)
)

// Describe implements prometheus.Collector.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCommands, descOpen, descHits, descDecode, descLeases, descWakeups, descPurgesIn, descPurgesBad, descAnnounced} {
		ch <- d
	}
	f.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for i := range f.stats.ops {
		counter(descCommands, f.stats.ops[i].ok.Load(), opNames[i], "ok")
		counter(descCommands, f.stats.ops[i].failed.Load(), opNames[i], "error")
	}
	s := f.Stats()
	open := 0.0
	if s.BreakerOpen {
		open = 1
	}
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, open)
	counter(descHits, s.SharedHits)
	counter(descDecode, s.DecodeErrors)
	for event, v := range map[string]int64{
		"taken": s.LeasesTaken, "waited": s.Waited, "takeover": s.Takeovers, "renewed": s.Renewed, "lost": s.Lost,
	} {
		counter(descLeases, v, event)
	}
	counter(descWakeups, s.WokenByMessage, "message")
	counter(descWakeups, s.WokenByRecheck, "recheck")
	counter(descPurgesIn, s.PurgesReceived)
	counter(descPurgesBad, s.PurgeMessagesDropped)
	counter(descAnnounced, s.AnnouncedPurges, "made")
	counter(descAnnounced, s.AnnounceFailed, "failed")
	counter(descAnnounced, s.AnnounceDropped, "dropped")
	f.latency.Collect(ch)
}

var _ prometheus.Collector = (*Fleet)(nil)
