package target

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRulePath(t *testing.T) {
	for in, want := range map[string]string{
		"/api/stats":     "/api/stats",
		"/admin%2Fme":    "/admin/me",
		"/ADMIN/me":      "/admin/me",
		"//admin/":       "/admin/",
		"/admin;x/me":    "/admin/me",
		"/a//b///c/":     "/a/b/c/",
		"/admin%5Cme":    "/admin/me",
		"/":              "/",
		"/%2Fadmin%2F":   "/admin/",
		"/caf%C3%A9/Bar": "/café/bar",
	} {
		if got := RulePath(in); got != want {
			t.Errorf("RulePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRulePathDropsTrailingDotsAndSpaces(t *testing.T) {
	got := map[string]string{}
	for _, in := range []string{"/admin.", "/admin%20/me", "/admin.;x/me", "/admin.%20./", "/a.b/c", "/v1.json", "/.well-known/x", "/a/..."} {
		got[in] = RulePath(in)
	}
	want := map[string]string{
		"/admin.":        "/admin",
		"/admin%20/me":   "/admin/me",
		"/admin.;x/me":   "/admin/me",
		"/admin.%20./":   "/admin/",
		"/a.b/c":         "/a.b/c",
		"/v1.json":       "/v1.json",
		"/.well-known/x": "/.well-known/x",
		"/a/...":         "/a/",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rulePath (-want +got):\n%s", diff)
	}
	if n := testing.AllocsPerRun(100, func() { RulePath("/api/stats/today") }); n != 0 {
		t.Errorf("rulePath of a clean path allocates %v times, want 0", n)
	}
}

// A prefix is compared in the form of the paths it covers, but its last
// segment may be the start of a longer one, and keeps its dots.
func TestRulePrefixKeepsItsLastSegmentOpen(t *testing.T) {
	got := map[string]string{}
	for _, in := range []string{"/Admin./", "/admin%20/x", "/v1.", "/api/v1.", "/a;x/b;"} {
		got[in] = RulePrefix(in)
	}
	want := map[string]string{
		"/Admin./":    "/admin/",
		"/admin%20/x": "/admin/x",
		"/v1.":        "/v1.",
		"/api/v1.":    "/api/v1.",
		"/a;x/b;":     "/a/b",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rulePrefix (-want +got):\n%s", diff)
	}
}
