package httprule

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"
)

// Accept-Language and Accept-Encoding go upstream in one form, the one
// their variants are keyed on: members by q-value (RFC 9110 section
// 12.4.2), then in byte order, lower-cased, without white space, on one
// line. Putting that form in order again changes nothing.
func TestNormalList(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"by q-value", []string{"en;q=0.7, fr"}, "fr,en;q=0.7"},
		{"equal q-values in byte order", []string{"it, de"}, "de,it"},
		{"an absent q is 1, as 1.000 is", []string{"en;q=1.000, de"}, "de,en;q=1.000"},
		{"lines combined (RFC 9110 section 5.3)", []string{"en;q=0.5", "DE"}, "de,en;q=0.5"},
		{"case and white space", []string{" EN ; Q=0.5 ,\tfr-CH "}, "fr-ch,en;q=0.5"},
		{"duplicates", []string{"fr, FR", "fr"}, "fr"},
		{"empty members", []string{",, en ,,"}, "en"},
		{"empty", []string{""}, ""},
		{"q=0 after the others", []string{"y;q=0, z;q=0.001"}, "z;q=0.001,y;q=0"},
		{"malformed q-values last", []string{"a;q=abc, b;q=1.5, c;q=0.50000, d;q=, e;q=0.1, f;q=-1"}, "e;q=0.1,a;q=abc,b;q=1.5,c;q=0.50000,d;q=,f;q=-1"},
		{"the first q of a member", []string{"a;x=1;q=0.2;q=0.9, b;q=0.5"}, "b;q=0.5,a;x=1;q=0.2;q=0.9"},
		{"codings", []string{"gzip;q=0.5, BR, identity;q=0"}, "br,gzip;q=0.5,identity;q=0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := normalList(tt.lines)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("normalList(%q) (-want +got):\n%s", tt.lines, diff)
			}
			if again := normalList([]string{got}); again != got {
				t.Errorf("normalList(%q) = %q, but %q again", got, again, got)
			}
		})
	}
}

// A hostile list costs work in proportion to the field, and at most
// maxListMembers members are put in order, kept and sent: the first the
// client listed.
func TestLongAcceptListsAreCut(t *testing.T) {
	var long []string
	for i := range 10000 {
		long = append(long, fmt.Sprintf("l%05d;q=0.%s", i, strings.Repeat("9", 1000)))
	}
	got := strings.Split(normalList([]string{strings.Join(long, ", ")}), ",")
	sort.Strings(got)
	want := long[:maxListMembers]
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("members kept of %d (-want +got):\n%s", len(long), diff)
	}
}

// FuzzAcceptListNormalForm checks that normalList's form is one: the same
// for its own result, and for the members of its input in another order.
func FuzzAcceptListNormalForm(f *testing.F) {
	for _, seed := range [][2]string{
		{"en;q=0.7, fr", ""}, {"en;q=0.5", "DE"}, {"a;q=abc, b;q=1.5", "c;q=0.50000"},
		{"gzip;q=0.5, BR, identity;q=0", "*;q=0"}, {",, ;q=1 ,", "Q=0.5"}, {"fr;q=0.8;q=0.1", "fr;q=0.8"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		got := normalList([]string{a, b})
		if again := normalList([]string{got}); again != got {
			t.Fatalf("normalList(%q, %q) = %q, but %q again", a, b, got, again)
		}
		members := strings.Split(a+","+b, ",")
		if len(members) > maxListMembers {
			return // cut to the first: another order keeps others
		}
		slices.Reverse(members)
		if other := normalList([]string{strings.Join(members, ",")}); other != got {
			t.Fatalf("normalList(%q, %q) = %q, but %q for its members reversed", a, b, got, other)
		}
		last := 1000
		for m := range strings.SplitSeq(got, ",") {
			if q := qValue(m); q > last || strings.ContainsFunc(m, unicode.IsSpace) {
				t.Fatalf("normalList(%q, %q) = %q: member %q out of order or spaced", a, b, got, m)
			} else {
				last = q
			}
		}
	})
}
