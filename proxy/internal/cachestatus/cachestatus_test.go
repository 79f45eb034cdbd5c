package cachestatus

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral/freshness"
)

// TestString pins the field values README shows (RFC 9211 section 2):
// parameters in one order, ttl in whole seconds, corral's own parameters
// last.
func TestString(t *testing.T) {
	tests := []struct {
		s    Status
		want string
	}{
		{Status{Hit: true, TTL: 53 * time.Second, HasTTL: true}, "corral; hit; ttl=53"},
		{Status{Hit: true, TTL: -2500 * time.Millisecond, HasTTL: true, Detail: StaleWhileRevalidate}, "corral; hit; ttl=-2; detail=stale-while-revalidate"},
		{Status{Fwd: FwdURIMiss, FwdStatus: 200, Stored: true, Collapsed: true, TTL: time.Minute, HasTTL: true}, "corral; fwd=uri-miss; fwd-status=200; stored; collapsed; ttl=60"},
		{Status{Fwd: FwdStale, FwdStatus: 503, TTL: -4 * time.Second, HasTTL: true, Detail: StaleIfError}, "corral; fwd=stale; fwd-status=503; ttl=-4; detail=stale-if-error"},
		{Status{Detail: BadRequestTarget}, "corral; detail=bad-request-target"},
		{Status{Hit: true, TTL: time.Second, HasTTL: true, Rule: "/api/stats/"}, `corral; hit; ttl=1; corral-rule="/api/stats/"`},
		{Status{Hit: true, TTL: 29 * time.Second, HasTTL: true, Field: freshness.FromCDN}, "corral; hit; ttl=29; corral-field=CDN-Cache-Control"},
		{Status{Hit: true, Field: freshness.FromCacheControl}, "corral; hit"},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.s.String()); diff != "" {
			t.Errorf("%+v (-want +got):\n%s", tt.s, diff)
		}
	}
	s := Status{Hit: true, TTL: time.Minute, HasTTL: true}
	if n := testing.AllocsPerRun(100, func() { _ = s.String() }); n != 1 {
		t.Errorf("String allocated %v times, want 1", n)
	}
}
