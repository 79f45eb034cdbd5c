package fetch

import (
	"context"
	"errors"
	"time"

	"corral/coalesce"
	"corral/freshness"
	"corral/proxy/internal/httprule"
	"corral/proxy/internal/stored"
	"corral/proxy/upstream"
)

// Refresh returns the fetch of a background refresh that starts from in,
// which carries nothing of one client's (Flight.Neutralized): a refresh
// serves everyone. A failure keeps the stale entry served, and the next
// refresh waits as long as the origin asked (backOff); an answer that may
// no longer be shared passes the key.
func (fc *Fetcher) Refresh(in Flight) coalesce.Fetch[*Result] {
	in.Background = true
	key, stale := in.Key, in.Stale
	return func(ctx context.Context) (*Result, error) {
		f, err := fc.Fetch(ctx, in)
		switch {
		case err == nil && f.Source == LookAgain:
			// The URI varies now; its variants refresh on their own. (Or
			// the shared tier held a marker or a pass mark, now here.)
		case Failed(f, err):
			// Keep serving the stale entry; ask again after the pause
			// that exchange set (a refresh carries nothing of one
			// client's: its failure is the resource's).
			retry := time.Duration(max(stale.RefreshAt.Load()-fc.Now().UnixNano(), 0))
			fc.Log.Warn("background refresh failed", "key", key, "status", statusOf(f), "err", err, "retry_in", retry)
		case f.Source == Origin && httprule.AboutTheRequest(f.Entry.Status):
			// The origin refuses a request with nothing of one client's
			// (one user may have spent its anonymous tier): clients that
			// send their own fields fetch in the foreground from now on,
			// rather than be served this stale copy (issue 23).
			stale.Refused.Store(true)
			stale.RefreshAt.Store(fc.Now().Add(RefreshBackoff).UnixNano())
		case Passes(f.Entry.Decision, stale):
			// The origin no longer lets this be shared: stop serving
			// the stale copy.
			fc.Store.MarkPass(ctx, in.VKey, f.Entry.Decision.Reason)
		case !f.Stored && f.Source == Origin:
			// Nothing worth keeping came back (max-age=0 without
			// validators, say): do not ask again on every stale hit.
			stale.RefreshAt.Store(fc.Now().Add(RefreshBackoff).UnixNano())
		}
		return f, err
	}
}

// backOff records a failed validation of stale: for RefreshBackoff
// (stored.Entry.FailedRecently), requests that stale may answer are
// answered by it without asking the origin again, and start a background
// refresh instead. When the failed request carried nothing of one
// client's (neutral: a refresh), background refreshes also wait for a
// pause, at least RefreshBackoff, longer if the origin, or the guard, said
// how long. A failure that carried a client's fields, even confirmed by
// another's, pauses no refresh: one user with two User-Agents the origin
// refuses would otherwise stop them for everyone, for as long as the
// origin's Retry-After (issue 23). It returns the refresh pause.
func (fc *Fetcher) backOff(stale *stored.Entry, f *Result, err error, neutral bool) time.Duration {
	now := fc.Now()
	stale.FailedAt.Store(now.UnixNano())
	if !neutral {
		return 0
	}
	pause := RefreshBackoff
	var busy *upstream.BusyError
	if errors.As(err, &busy) {
		pause = max(pause, busy.RetryAfter)
	} else if err == nil {
		pause = max(pause, min(upstream.ParseRetryAfter(f.Entry.Header.Get("Retry-After"), now), maxRetryAfter))
	}
	stale.RefreshAt.Store(now.Add(pause).UnixNano())
	return pause
}

// RefreshBackoff is the shortest pause after a failed background refresh,
// and how long a failed validation lets the stale entry answer without
// asking the origin again (stored.Entry.FailedRecently); maxRetryAfter the
// longest an origin's Retry-After can make the pause. A background refresh
// has no client waiting on it, so it may honour the origin longer than the
// pauses of client requests, which the upstream guard's MaxPause caps.
const (
	RefreshBackoff = time.Second
	maxRetryAfter  = 5 * time.Minute
)

func statusOf(f *Result) int {
	if f == nil {
		return 0
	}
	return f.Entry.Status
}

// Passes reports whether an answer judged d, to a fetch that validated
// stale (nil when nothing was stored), passes its key for PassTTL
// (hit-for-miss). With nothing stored, any answer that cannot be shared
// does. With a stored copy, only one whose origin said so (private,
// no-store, Set-Cookie, Vary: *): an answer that merely has no freshness
// or an error status (a 400 to a field the origin refused, say) may be the
// doing of the one client whose request led the fetch, with no-cache to
// get past the copy, and must not take the shield away from everyone.
func Passes(d freshness.Decision, stale *stored.Entry) bool {
	if !d.PassesKey() {
		return false
	}
	switch d.Reason {
	case freshness.ReasonNoFreshness, freshness.ReasonStatus, freshness.ReasonErrorStatus:
		return stale == nil
	}
	return true
}
