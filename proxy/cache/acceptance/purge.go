package acceptance

import (
	"strconv"
	"testing"
	"time"

	"corral/proxy/cache"
)

func testPurgeKey(t *testing.T, s cache.Store, c *clock) {
	a, ab := response("a"), response("ab")
	mustSet(t, s, "/a", a)
	mustSet(t, s, "/ab", ab)
	n, err := s.Purge(bg, "/a", false, c.Now())
	if err != nil || n != 1 {
		t.Errorf("Purge(/a) = %d, %v; want 1, nil", n, err)
	}
	want(t, s, "/a", nil)
	want(t, s, "/ab", ab)
	n, err = s.Purge(bg, "/a", false, c.Now())
	if err != nil || n != 0 {
		t.Errorf("Purge(/a) again = %d, %v; want 0, nil", n, err)
	}
}

func testPurgePrefix(t *testing.T, s cache.Store, c *clock) {
	keep := response("keep")
	for _, k := range []string{"/api", "/api/1", "/api/2?x=1", cache.VariantKey("/api/3", 7, "gzip")} {
		mustSet(t, s, k, response(k))
	}
	mustSet(t, s, "/ap", keep)
	mustSet(t, s, "/other/api", keep)
	n, err := s.Purge(bg, "/api", true, c.Now())
	if err != nil || n != 4 {
		t.Errorf("Purge(/api, prefix) = %d, %v; want 4, nil", n, err)
	}
	for _, k := range []string{"/api", "/api/1", "/api/2?x=1", cache.VariantKey("/api/3", 7, "gzip")} {
		want(t, s, k, nil)
	}
	want(t, s, "/ap", keep)
	want(t, s, "/other/api", keep)
}

func testPurgeAll(t *testing.T, s cache.Store, c *clock) {
	keys := []string{"/", "/a", "/b/c", cache.VariantKey("/v", 1, "")}
	for _, k := range keys {
		mustSet(t, s, k, response(k))
	}
	n, err := s.Purge(bg, "", true, c.Now())
	if err != nil || n != len(keys) {
		t.Errorf("Purge of everything = %d, %v; want %d, nil", n, err, len(keys))
	}
	for _, k := range keys {
		want(t, s, k, nil)
	}
}

func testPurgeRefusesLateWrite(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/a", false, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	wantErr(t, "Set of a fetch begun before the purge", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	wantErr(t, "Set of a fetch begun as the purge", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: at}), cache.ErrPurged)
	want(t, s, "/a", nil)
	wantErr(t, "Set of a fetch begun before the purge, of another key", s.Set(bg, "/b", e, time.Hour, cache.Cond{Since: began}), nil)

	// The purge record is checked before the entry: a refused write
	// says it was the purge.
	wantErr(t, "Set with IfAbsent too", s.Set(bg, "/a", e, time.Hour, cache.Cond{Since: began, IfAbsent: true}), cache.ErrPurged)

	after := c.Advance(time.Millisecond)
	fresh := response("new")
	wantErr(t, "Set of a fetch begun after the purge", s.Set(bg, "/a", fresh, time.Hour, cache.Cond{Since: after}), nil)
	want(t, s, "/a", fresh)
	// A zero Since asks for no check.
	wantErr(t, "Set with no Since", s.Set(bg, "/a", e, time.Hour, cache.Cond{}), nil)
	want(t, s, "/a", e)
}

func testPurgeRecordPrefix(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/api/", true, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	for _, k := range []string{"/api/", "/api/1", cache.VariantKey("/api/2", 3, "br")} {
		wantErr(t, "Set under the purged prefix of "+strconv.Quote(k), s.Set(bg, k, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
		want(t, s, k, nil)
	}
	wantErr(t, "Set outside the prefix", s.Set(bg, "/api", e, time.Hour, cache.Cond{Since: began}), nil)
	wantErr(t, "Set under the prefix, begun later", s.Set(bg, "/api/1", e, time.Hour, cache.Cond{Since: c.Advance(time.Millisecond)}), nil)
}

// testPurgeRecordVariants: the purge of a URI's key holds for the variant
// keys made from it, whatever their generation.
func testPurgeRecordVariants(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	at := c.Advance(time.Second)
	if _, err := s.Purge(bg, "/v", false, at); err != nil {
		t.Fatal(err)
	}
	e := response("old")
	vk := cache.VariantKey("/v", cache.NewID(), "gzip")
	wantErr(t, "Set of a variant of the purged key", s.Set(bg, vk, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	want(t, s, vk, nil)
	other := cache.VariantKey("/vw", cache.NewID(), "gzip")
	wantErr(t, "Set of a variant of another key", s.Set(bg, other, e, time.Hour, cache.Cond{Since: began}), nil)
}

// testPurgeRecordsPastBound: however many purges, every purged key still
// refuses writes begun before its purge (a store may refuse more).
func testPurgeRecordsPastBound(t *testing.T, s cache.Store, c *clock) {
	began := c.Now()
	const n = cache.MaxPurgeRecords + 10
	for i := range n {
		if _, err := s.Purge(bg, "/p/"+strconv.Itoa(i), false, c.Advance(time.Microsecond)); err != nil {
			t.Fatal(err)
		}
	}
	e := response("old")
	for _, i := range []int{0, 1, n / 2, n - 2, n - 1} {
		k := "/p/" + strconv.Itoa(i)
		wantErr(t, "Set of "+k, s.Set(bg, k, e, time.Hour, cache.Cond{Since: began}), cache.ErrPurged)
	}
	wantErr(t, "Set of a fetch begun after every purge", s.Set(bg, "/p/0", e, time.Hour, cache.Cond{Since: c.Advance(time.Millisecond)}), nil)
}
