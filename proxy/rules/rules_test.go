package rules

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Rule
		wantErr string
	}{
		{in: "/api/stats/ max-age=1, stale-while-revalidate=10", want: Rule{"/api/stats/", "max-age=1, stale-while-revalidate=10"}},
		{in: "  /\tno-cache ", want: Rule{"/", "no-cache"}},
		{in: "/a%20b/ s-maxage=60", want: Rule{"/a%20b/", "s-maxage=60"}},
		{in: "/api/", wantErr: "want PATH-PREFIX DIRECTIVES, e.g. /api/stats/ max-age=1, stale-while-revalidate=10"},
		{in: "", wantErr: "want PATH-PREFIX DIRECTIVES, e.g. /api/stats/ max-age=1, stale-while-revalidate=10"},
		{in: "api/ max-age=1", wantErr: `prefix "api/" must be a path starting with /`},
		{in: "/api?x max-age=1", wantErr: `prefix "/api?x": '?' cannot stand in a path; percent-encode it`},
		{in: "/a%zz max-age=1", wantErr: `prefix "/a%zz": % must start an escape such as %20`},
		{in: "/api/ maxage=1", wantErr: `directives "maxage=1": unknown directive maxage`},
		{in: "/api/ max-age=soon", wantErr: `directives "max-age=soon": bad value for max-age`},
		{in: "/api/ Max-Age=1", wantErr: `directives "Max-Age=1": not a list of cache directives such as max-age=60, stale-while-revalidate=30 (a Structured Field Dictionary: lower-case names, no quotes around numbers)`},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if diff := cmp.Diff(tt.wantErr, gotErr); diff != "" {
			t.Errorf("Parse(%q) error (-want +got):\n%s", tt.in, diff)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Parse(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestMatchLongestPrefix(t *testing.T) {
	rs := []Rule{
		{"/", "max-age=60"},
		{"/api/stats/", "max-age=1"},
		{"/api/", "max-age=5"},
		{"/admin", "max-age=1"},
		{"/admin/", "no-store"},
	}
	tests := []struct {
		path string
		want string // the prefix that matches, "" for none
	}{
		{"/api/stats/today", "/api/stats/"},
		{"/api/stats/", "/api/stats/"},
		{"/api/stats", "/api/stats/"}, // a prefix ending in "/" covers the path without it
		{"/api/statsx", "/api/"},
		{"/api/users", "/api/"},
		{"/api", "/api/"},
		{"/apis", "/"},
		{"/index.html", "/"},
		{"/admin", "/admin/"}, // both cover it; the longer prefix wins
		{"/admin/x", "/admin/"},
		{"/administrator", "/admin"},
	}
	for _, tt := range tests {
		got, ok := Match(rs, tt.path)
		if !ok || got.Prefix != tt.want {
			t.Errorf("Match(%q) = %v, %v; want the rule for %q", tt.path, got, ok, tt.want)
		}
	}
	if got, ok := Match(rs[1:], "/about"); ok {
		t.Errorf("Match(/about) = %v; want none", got)
	}
	if _, ok := Match(nil, "/"); ok {
		t.Error("no rules matched /")
	}
}
