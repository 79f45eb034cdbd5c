package fleet

import (
	"cmp"
	"context"
	"strconv"
	"strings"
	"time"
)

// Purge drops key (with prefix, every key it starts) from the shared tier,
// records the purge at at so that no fetch begun before it writes the key
// back, and tells every other replica to drop its own copy. It returns how
// many entries Redis dropped.
//
// It announces the purge even when Redis's part of it failed: the other
// replicas' memory is then at least purged. It returns the first error.
func (f *Fleet) Purge(ctx context.Context, key string, prefix bool, at time.Time) (int, error) {
	var n int
	err := f.call(ctx, opPurge, func(ctx context.Context) (err error) {
		n, err = f.store.Purge(ctx, key, prefix, at)
		return err
	})
	msg := purgeMessage{from: f.id, key: key, prefix: prefix, at: at}
	perr := f.call(ctx, opPublish, func(ctx context.Context) error {
		return f.store.Publish(ctx, f.purgeCh, msg.String())
	})
	return n, cmp.Or(err, perr)
}

// announceQueue bounds the purges that Announce holds for Redis: any
// client can send unsafe requests, and their purges must not grow it.
const announceQueue = 1024

// Announce purges key, or every key under it with prefix, across the fleet
// as Purge does, at a time recorded now, but in the background: the
// caller, the answer to a client's unsafe request, does not wait on Redis
// (issue 17). Past announceQueue purges waiting, one is dropped, and
// counted: it then holds on this replica only (the caller purged its
// memory), until the entries expire elsewhere.
func (f *Fleet) Announce(key string, prefix bool, at time.Time) {
	select {
	case f.announcements <- purgeMessage{from: f.id, key: key, prefix: prefix, at: at}:
	default:
		f.stats.announced[announceDropped].Add(1)
	}
}

// announcer makes Announce's purges, one after another, until Close.
func (f *Fleet) announcer() {
	defer f.renewals.Done()
	for {
		select {
		case m := <-f.announcements:
			_, err := f.Purge(f.closing, m.key, m.prefix, m.at)
			switch {
			case err == nil:
				f.stats.announced[announceMade].Add(1)
			case f.closing.Err() != nil:
				f.stats.announced[announceDropped].Add(1)
			default:
				f.stats.announced[announceFailed].Add(1)
				f.log.Warn("purge of the shared tier failed; other replicas may serve the purged response until it expires", "uri", m.key, "prefix", m.prefix, "err", err)
			}
		case <-f.closing.Done():
			f.stats.announced[announceDropped].Add(int64(len(f.announcements)))
			return
		}
	}
}

// What became of an announced purge.
const (
	announceMade = iota
	announceFailed
	announceDropped
	numAnnounced
)

// OnPurge adds fn to the functions called, on the subscription's
// goroutine, for each purge another replica announces, and returns the
// function that removes it again: every proxy on the Fleet hears every
// purge, and one that is shut down, none.
func (f *Fleet) OnPurge(fn func(key string, prefix bool, at time.Time)) (stop func()) {
	f.subMu.Lock()
	defer f.subMu.Unlock()
	f.lastSub++
	id := f.lastSub
	f.setSubscribers(func(m map[int64]func(string, bool, time.Time)) { m[id] = fn })
	return func() {
		f.subMu.Lock()
		defer f.subMu.Unlock()
		f.setSubscribers(func(m map[int64]func(string, bool, time.Time)) { delete(m, id) })
	}
}

// setSubscribers replaces the subscribers by a copy that change made,
// with subMu held, so that purged reads them without a lock.
func (f *Fleet) setSubscribers(change func(map[int64]func(string, bool, time.Time))) {
	m := make(map[int64]func(string, bool, time.Time))
	if old := f.subscribers.Load(); old != nil {
		for id, fn := range *old {
			m[id] = fn
		}
	}
	change(m)
	f.subscribers.Store(&m)
}

// purged handles a message on the purge channel.
func (f *Fleet) purged(payload string) {
	m, ok := parsePurge(payload)
	if !ok {
		f.stats.purgesDropped.Add(1)
		return
	}
	if m.from == f.id {
		return // this replica's own: its caller purged its memory already
	}
	f.stats.purgesReceived.Add(1)
	if subs := f.subscribers.Load(); subs != nil {
		for _, fn := range *subs {
			fn(m.key, m.prefix, m.at)
		}
	}
}

// purgeMessage is what a replica publishes on the purge channel:
//
//	1 <from> <k|p> <at, Unix µs rounded up> <key>
//
// space-separated, with the key last, as it may hold spaces. The version
// comes first, so that a replica can drop what a later one sends instead
// of misreading it.
type purgeMessage struct {
	from   string // the sender's replica ID
	key    string
	prefix bool
	at     time.Time
}

func (m purgeMessage) String() string {
	flag := "k"
	if m.prefix {
		flag = "p"
	}
	// Rounded up, as the store rounds purge times: a replica may drop
	// an entry it could have kept, never keep one the purge covers.
	us := m.at.UnixMicro()
	if m.at.Nanosecond()%1000 != 0 {
		us++
	}
	return "1 " + m.from + " " + flag + " " + strconv.FormatInt(us, 10) + " " + m.key
}

// parsePurge parses a purge message, and reports whether it is one.
func parsePurge(s string) (purgeMessage, bool) {
	parts := strings.SplitN(s, " ", 5)
	if len(parts) != 5 || parts[0] != "1" || parts[1] == "" {
		return purgeMessage{}, false
	}
	m := purgeMessage{from: parts[1], key: parts[4]}
	switch parts[2] {
	case "k":
	case "p":
		m.prefix = true
	default:
		return purgeMessage{}, false
	}
	us, err := strconv.ParseInt(parts[3], 10, 64)
	if err != nil {
		return purgeMessage{}, false
	}
	m.at = time.UnixMicro(us)
	return m, true
}
