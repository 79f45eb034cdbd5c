package freshness

import (
	"strings"
)

// A targeted Cache-Control field is a Structured Field Dictionary
// (RFC 9213 section 2.1, RFC 8941 section 3.2). The parser below follows
// RFC 8941 section 4.2 and keeps only what a cache directive needs: each
// member's key, and the type and value of its item. Parameters are parsed,
// so that a malformed one fails the field, and then dropped, as RFC 9213
// section 2.1 says.

// sfKind is the type of a Structured Field item.
type sfKind uint8

const (
	sfBoolean sfKind = iota
	sfInteger
	sfDecimal
	sfString
	sfToken
	sfBytes
	sfInnerList
)

// sfMember is one Dictionary member.
type sfMember struct {
	key     string
	kind    sfKind
	boolean bool   // sfBoolean
	integer int64  // sfInteger
	str     string // sfString, unescaped
}

// parseDictionary parses the field lines of one Dictionary field, combined
// as RFC 8941 section 4.2 says. A key given twice keeps its last value
// (section 3.2). ok is false when the value is not a valid Dictionary.
func parseDictionary(lines []string) (members []sfMember, ok bool) {
	var nonEmpty []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			nonEmpty = append(nonEmpty, l)
		}
	}
	s := &sfParser{in: strings.Join(nonEmpty, ",")}
	for i := 0; i < len(s.in); i++ {
		if s.in[i] > 0x7e || (s.in[i] < 0x20 && s.in[i] != '\t') {
			return nil, false
		}
	}
	s.skipSP()
	for s.more() {
		m, ok := s.member()
		if !ok {
			return nil, false
		}
		members = appendMember(members, m)
		s.skipOWS()
		if !s.more() {
			break
		}
		if s.in[s.i] != ',' {
			return nil, false
		}
		s.i++
		s.skipOWS()
		if !s.more() {
			return nil, false // a trailing comma
		}
	}
	return members, true
}

func appendMember(members []sfMember, m sfMember) []sfMember {
	for i := range members {
		if members[i].key == m.key {
			members[i] = m
			return members
		}
	}
	return append(members, m)
}

type sfParser struct {
	in string
	i  int
}

func (s *sfParser) more() bool { return s.i < len(s.in) }

func (s *sfParser) skipSP() {
	for s.more() && s.in[s.i] == ' ' {
		s.i++
	}
}

func (s *sfParser) skipOWS() {
	for s.more() && (s.in[s.i] == ' ' || s.in[s.i] == '\t') {
		s.i++
	}
}

// member parses a Dictionary member (RFC 8941 section 4.2.2).
func (s *sfParser) member() (m sfMember, ok bool) {
	if m.key, ok = s.key(); !ok {
		return m, false
	}
	if !s.more() || s.in[s.i] != '=' {
		m.kind, m.boolean = sfBoolean, true
		return m, s.params()
	}
	s.i++
	if s.more() && s.in[s.i] == '(' {
		m.kind = sfInnerList
		return m, s.innerList()
	}
	if !s.bareItem(&m) {
		return m, false
	}
	return m, s.params()
}

// key parses a key (section 4.2.3.3).
func (s *sfParser) key() (string, bool) {
	start := s.i
	if !s.more() || !(isLCAlpha(s.in[s.i]) || s.in[s.i] == '*') {
		return "", false
	}
	for s.i++; s.more(); s.i++ {
		c := s.in[s.i]
		if !isLCAlpha(c) && !isDigit(c) && c != '_' && c != '-' && c != '.' && c != '*' {
			break
		}
	}
	return s.in[start:s.i], true
}

// params parses and drops parameters (section 4.2.3.2).
func (s *sfParser) params() bool {
	for s.more() && s.in[s.i] == ';' {
		s.i++
		s.skipSP()
		if _, ok := s.key(); !ok {
			return false
		}
		if s.more() && s.in[s.i] == '=' {
			s.i++
			var m sfMember
			if !s.bareItem(&m) {
				return false
			}
		}
	}
	return true
}

// innerList parses and drops an Inner List (section 4.2.1.2): no cache
// directive takes one.
func (s *sfParser) innerList() bool {
	s.i++ // (
	for s.more() {
		s.skipSP()
		if s.more() && s.in[s.i] == ')' {
			s.i++
			return s.params()
		}
		var m sfMember
		if !s.bareItem(&m) || !s.params() {
			return false
		}
		if !s.more() || (s.in[s.i] != ' ' && s.in[s.i] != ')') {
			return false
		}
	}
	return false
}

// bareItem parses a Bare Item (section 4.2.3.1) into m.
func (s *sfParser) bareItem(m *sfMember) bool {
	if !s.more() {
		return false
	}
	switch c := s.in[s.i]; {
	case c == '-' || isDigit(c):
		return s.number(m)
	case c == '"':
		m.kind = sfString
		return s.string(m)
	case isAlpha(c) || c == '*':
		m.kind = sfToken
		for s.i++; s.more() && (isTChar(s.in[s.i]) || s.in[s.i] == ':' || s.in[s.i] == '/'); s.i++ {
		}
		return true
	case c == ':':
		m.kind = sfBytes
		for s.i++; s.more() && s.in[s.i] != ':'; s.i++ {
			if c := s.in[s.i]; !isAlpha(c) && !isDigit(c) && c != '+' && c != '/' && c != '=' {
				return false
			}
		}
		if !s.more() {
			return false
		}
		s.i++
		return true
	case c == '?':
		m.kind = sfBoolean
		if s.i+1 >= len(s.in) || (s.in[s.i+1] != '0' && s.in[s.i+1] != '1') {
			return false
		}
		m.boolean = s.in[s.i+1] == '1'
		s.i += 2
		return true
	}
	return false
}

// number parses an Integer or a Decimal (section 4.2.4).
func (s *sfParser) number(m *sfMember) bool {
	neg := s.in[s.i] == '-'
	if neg {
		s.i++
	}
	if !s.more() || !isDigit(s.in[s.i]) {
		return false
	}
	var n int64
	digits, point := 0, -1
digits:
	for ; s.more(); s.i++ {
		switch c := s.in[s.i]; {
		case isDigit(c):
			digits++
			n = n*10 + int64(c-'0')
		case c == '.' && point < 0:
			if digits > 12 {
				return false
			}
			point = digits
			continue
		default:
			break digits
		}
		if point < 0 && digits > 15 || point >= 0 && digits-point > 3 {
			return false
		}
	}
	if point >= 0 {
		if digits == point {
			return false // "1." has no fraction
		}
		m.kind = sfDecimal
		return true
	}
	m.kind = sfInteger
	if neg {
		n = -n
	}
	m.integer = n
	return true
}

// string parses a String (section 4.2.5).
func (s *sfParser) string(m *sfMember) bool {
	var b strings.Builder
	for s.i++; s.more(); s.i++ {
		switch c := s.in[s.i]; {
		case c == '\\':
			s.i++
			if !s.more() || (s.in[s.i] != '"' && s.in[s.i] != '\\') {
				return false
			}
			b.WriteByte(s.in[s.i])
		case c == '"':
			s.i++
			m.str = b.String()
			return true
		case c < 0x20 || c > 0x7e:
			return false
		default:
			b.WriteByte(c)
		}
	}
	return false
}

func isLCAlpha(c byte) bool { return c >= 'a' && c <= 'z' }
func isAlpha(c byte) bool   { return isLCAlpha(c) || (c >= 'A' && c <= 'Z') }
func isDigit(c byte) bool   { return c >= '0' && c <= '9' }

// isTChar reports whether c is a tchar (RFC 9110 section 5.6.2).
func isTChar(c byte) bool {
	return isAlpha(c) || isDigit(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
