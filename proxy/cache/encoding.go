package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Version is the first byte of an encoded Entry. A decoder that meets
// another one refuses the value rather than guess at it.
const Version = 1

// The encoding of an Entry, all of it always present, in this order:
//
//	version      1 byte (Version)
//	kind         1 byte
//	ID           8 bytes, big-endian
//	RequestTime  time
//	ResponseTime time
//	Status       uvarint
//	Header       uvarint count of names, then per name (sorted):
//	             string name, uvarint count of values, each a string
//	Body         bytes
//	Vary         uvarint count, each a string
//	VaryKey      string
//	Gen          8 bytes, big-endian
//	Until        time
//	Reason       string
//
// where a string or bytes is a uvarint length and that many bytes, and a
// time is a varint of Unix seconds and a uvarint of nanoseconds (the zero
// Time is second -62135596800). The version, kind and ID sit at fixed
// offsets (0, 1 and IDOffset), so that a script in another store can
// compare IDs without decoding the rest.
const (
	IDOffset = 2 // where an encoded entry's ID starts
	IDSize   = 8 // its bytes, big-endian
	idEnd    = IDOffset + IDSize
)

// errEncode is returned by MarshalBinary for an Entry it cannot encode.
var errEncode = errors.New("cache: cannot encode entry")

// MarshalBinary encodes e (encoding.BinaryMarshaler).
func (e *Entry) MarshalBinary() ([]byte, error) {
	return e.AppendBinary(make([]byte, 0, e.encodedSizeHint()))
}

// AppendBinary appends the encoding of e to b (encoding.BinaryAppender).
func (e *Entry) AppendBinary(b []byte) ([]byte, error) {
	if e.Kind > maxKind {
		return b, fmt.Errorf("%w: unknown kind %d", errEncode, e.Kind)
	}
	if !validStatus(e.Kind, e.Status) {
		return b, fmt.Errorf("%w: status %d for a %s", errEncode, e.Status, e.Kind)
	}
	b = append(b, Version, byte(e.Kind))
	b = binary.BigEndian.AppendUint64(b, e.ID)
	b = appendTime(b, e.RequestTime)
	b = appendTime(b, e.ResponseTime)
	b = binary.AppendUvarint(b, uint64(e.Status))
	names := make([]string, 0, len(e.Header))
	for k := range e.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, k := range names {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(e.Header[k])))
		for _, v := range e.Header[k] {
			b = appendString(b, v)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(e.Body)))
	b = append(b, e.Body...)
	b = binary.AppendUvarint(b, uint64(len(e.Vary)))
	for _, v := range e.Vary {
		b = appendString(b, v)
	}
	b = appendString(b, e.VaryKey)
	b = binary.BigEndian.AppendUint64(b, e.Gen)
	b = appendTime(b, e.Until)
	b = appendString(b, e.Reason)
	return b, nil
}

// encodedSizeHint is about the length of e's encoding.
func (e *Entry) encodedSizeHint() int {
	n := 64 + len(e.Body) + len(e.VaryKey) + len(e.Reason)
	for k, vs := range e.Header {
		n += len(k) + 2
		for _, v := range vs {
			n += len(v) + 2
		}
	}
	for _, v := range e.Vary {
		n += len(v) + 2
	}
	return n
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// UnmarshalBinary decodes data, as MarshalBinary encodes it, into e
// (encoding.BinaryUnmarshaler). Anything else, another version included,
// is an error, and leaves e as it was. No length read from data makes it
// allocate more than data could hold.
func (e *Entry) UnmarshalBinary(data []byte) error { return e.unmarshal(data, false) }

// UnmarshalOwned is UnmarshalBinary for data that the caller hands over and
// that nothing changes afterwards (a reply read from Redis, say): e's Body
// keeps data's bytes instead of a copy of them, so that a large body is
// not copied once more on its way in.
func (e *Entry) UnmarshalOwned(data []byte) error { return e.unmarshal(data, true) }

func (e *Entry) unmarshal(data []byte, owned bool) error {
	d := decoder{b: data}
	if len(data) == 0 {
		return errors.New("cache: decoding entry: empty")
	}
	if v := data[0]; v != Version {
		return fmt.Errorf("cache: decoding entry: version %d, want %d", v, Version)
	}
	d.b = data[1:]
	var x Entry
	x.Kind = Kind(d.byte())
	if x.Kind > maxKind && d.err == nil {
		d.fail("unknown kind")
	}
	x.ID = d.uint64()
	x.RequestTime = d.time()
	x.ResponseTime = d.time()
	if s := d.uvarint(); s < 1000 {
		x.Status = int(s)
	} else {
		d.fail("status out of range")
	}
	if n := d.count(); n > 0 {
		x.Header = make(http.Header, n)
		for range n {
			k := d.string()
			vs := make([]string, d.count())
			for i := range vs {
				vs[i] = d.string()
			}
			if _, dup := x.Header[k]; dup {
				d.fail("repeated header field")
			}
			if d.err != nil {
				break
			}
			x.Header[k] = vs
		}
	}
	if body := d.bytes(); len(body) > 0 {
		x.Body = body
		if !owned {
			x.Body = slices.Clone(body)
		}
	}
	if n := d.count(); n > 0 {
		x.Vary = make([]string, n)
		for i := range x.Vary {
			x.Vary[i] = d.string()
		}
	}
	x.VaryKey = d.string()
	x.Gen = d.uint64()
	x.Until = d.time()
	x.Reason = d.string()
	if d.err == nil && len(d.b) > 0 {
		d.fail("trailing bytes")
	}
	if d.err == nil && !validStatus(x.Kind, x.Status) {
		// Such a status was never stored, and a final answer must be
		// 200 to 599 to be served at all: net/http panics on less.
		d.fail("status " + strconv.Itoa(x.Status) + " for a " + x.Kind.String())
	}
	if d.err != nil {
		return d.err
	}
	*e = x
	return nil
}

// decoder reads from b until the first error, after which every read
// returns a zero value.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("cache: decoding entry: %s", what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uint64() uint64 {
	if len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) uvarint() uint64 { return number(d, binary.Uvarint) }
func (d *decoder) varint() int64   { return number(d, binary.Varint) }

// number reads one variable-length number with read.
func number[T uint64 | int64](d *decoder, read func([]byte) (T, int)) T {
	v, n := read(d.b)
	if n <= 0 {
		d.fail("truncated or overlong number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads the length of a list whose every element takes at least one
// byte: no more than the bytes left.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("count past the end")
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("length past the end")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	if nsec >= 1e9 {
		d.fail("nanoseconds out of range")
		return time.Time{}
	}
	if d.err != nil {
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// validStatus reports whether a decoded entry of kind k may have status:
// a Response's is a final status other than 206 (a part is never
// stored), a marker's is 0.
func validStatus(k Kind, status int) bool {
	if k != Response {
		return status == 0
	}
	return status >= 200 && status <= 599 && status != 206
}
