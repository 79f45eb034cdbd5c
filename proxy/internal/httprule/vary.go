package httprule

import (
	"net/http"
	"net/textproto"
	"slices"
	"sort"
	"strings"
)

// VaryNames returns the canonical field names of h's Vary, sorted.
func VaryNames(h http.Header) []string {
	var names []string
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				names = append(names, http.CanonicalHeaderKey(f))
			}
		}
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// VaryKey returns the variant key of a client request with header h for a
// response that varies on names: the values a shared fetch for it sends
// upstream (SentValues), never fields that do not reach the origin, such
// as those the client names in Connection.
func VaryKey(names []string, h http.Header) string {
	return joinVary(names, func(name string) []string { return SentValues(h, name) })
}

// SentVaryKey returns the variant key of a request sent upstream with
// header h: its values as they went. An Accept-Language that went in
// another form than normalList's keys a variant that no lookup finds,
// rather than one an origin answered to another order than its key says.
func SentVaryKey(names []string, h http.Header) string {
	return joinVary(names, func(name string) []string { return h[name] })
}

// joinVary joins the values of names, each normalised as RFC 9111
// section 4.1 allows: field lines combined, white space around list
// separators dropped. A field that is absent can only match one that is
// absent too, not one sent empty (an empty Accept-Encoding asks for no
// content coding, RFC 9110 section 12.5.3; an absent one accepts any).
func joinVary(names []string, values func(string) []string) string {
	var b strings.Builder
	for _, name := range names {
		b.WriteString(name)
		vs := values(name)
		if vs == nil {
			b.WriteByte('\n')
			continue
		}
		b.WriteByte(':')
		for i, v := range vs {
			if i > 0 {
				b.WriteByte(',')
			}
			for j, part := range strings.Split(v, ",") {
				if j > 0 {
					b.WriteByte(',')
				}
				b.WriteString(textproto.TrimString(part))
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// unordered are the request fields whose members mean the same in any
// order, letter case or spacing (RFC 9110 sections 12.5.3 and 12.5.4: a
// member's preference is its q-value, and codings and language tags are
// case-insensitive). Every request corral sends upstream carries them in
// normalList's one form (NormalizeLists), and variants are keyed on that
// form, as RFC 9111 section 4.1 allows: "en, de" and "DE,en" select one
// response, and the origin got the same for both.
var unordered = []string{"Accept-Encoding", "Accept-Language"}

// NormalizeLists puts the unordered fields of h, a header to be sent
// upstream, in normalList's form.
func NormalizeLists(h http.Header) {
	for _, name := range unordered {
		if vs := h[name]; vs != nil && (len(vs) != 1 || !oneNormalToken(vs[0])) {
			h[name] = []string{normalList(vs)}
		}
	}
}

// maxListMembers bounds the members of an unordered field that corral
// reads, and so the work a client's field costs to put in order: a list
// longer than any browser sends is cut to its first members, as the
// client listed them, and the origin gets the cut list the key holds.
const maxListMembers = 64

// normalList returns the one line in which the members of the unordered
// field with values go upstream: lower-cased, without white space, most
// preferred first (by q-value), those of equal preference in byte order,
// duplicates dropped. An origin that reads the first member and one that
// reads q-values then agree on what the request prefers, whatever order
// and lines the client chose. A member whose q-value is malformed goes
// last. normalList of its own result returns it unchanged.
func normalList(values []string) string {
	if len(values) == 1 && oneNormalToken(values[0]) {
		return values[0] // "gzip", "en": the common case, as it is
	}
	type member struct {
		text string
		q    int // thousandths; -1 when malformed
	}
	var ms []member
lines:
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			if len(ms) == maxListMembers {
				break lines
			}
			if m = strings.ToLower(strings.Join(strings.Fields(m), "")); m != "" {
				ms = append(ms, member{m, qValue(m)})
			}
		}
	}
	slices.SortFunc(ms, func(a, b member) int {
		if a.q != b.q {
			return b.q - a.q
		}
		return strings.Compare(a.text, b.text)
	})
	ms = slices.Compact(ms)
	var b strings.Builder
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(m.text)
	}
	return b.String()
}

// oneNormalToken reports whether v is one member in normalList's form
// already: lower-case letters, digits and '-' alone, no list, no weight.
func oneNormalToken(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return v != ""
}

// qValue returns the weight of a member of an unordered field, lower-cased
// and without white space, in thousandths: 1000 when it has none, -1 when
// it is not a qvalue (RFC 9110 section 12.4.2: "0" or "1" and at most
// three decimals, none above 1).
func qValue(member string) int {
	_, params, _ := strings.Cut(member, ";")
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		v, ok := strings.CutPrefix(p, "q=")
		if !ok {
			continue
		}
		if len(v) == 0 || len(v) > len("0.000") || v[0] != '0' && v[0] != '1' || len(v) > 1 && v[1] != '.' {
			return -1
		}
		q, scale := int(v[0]-'0')*1000, 100
		for _, c := range []byte(v[min(2, len(v)):]) {
			if c < '0' || c > '9' {
				return -1
			}
			q += int(c-'0') * scale
			scale /= 10
		}
		if q > 1000 {
			return -1
		}
		return q
	}
	return 1000
}

// FirstLanguage returns the language tag an Accept-Language prefers above
// every other (the highest q-value, RFC 9110 section 12.5.4), lower-cased;
// "" when none does: several share the highest, it is "*", or a q-value
// is malformed.
func FirstLanguage(values []string) string {
	best, bestQ, tie := "", 0, false
	for _, v := range values {
		for m := range strings.SplitSeq(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			tag, _, _ := strings.Cut(m, ";")
			q := qValue(m)
			switch {
			case q < 0:
				return "" // malformed: select nothing
			case tag == "" || q == 0:
			case q > bestQ:
				best, bestQ, tie = tag, q, false
			case q == bestQ && tag != best:
				tie = true
			}
		}
	}
	if tie || best == "*" {
		return ""
	}
	return best
}
