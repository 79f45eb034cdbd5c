package cache

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 11, 26, 7, 30, 0, 123456789, time.UTC)

// examples are entries of every kind, as the proxy makes them.
func examples() map[string]*Entry {
	return map[string]*Entry{
		"response": {
			Kind: Response, ID: 0xfeedfacecafebeef,
			RequestTime: t0, ResponseTime: t0.Add(20 * time.Millisecond),
			Status: 200,
			Header: http.Header{
				"Content-Type":  {"application/json"},
				"Cache-Control": {"max-age=60", "stale-while-revalidate=30"},
				"Date":          {"Thu, 26 Nov 2026 07:30:00 GMT"},
				"Etag":          {`"v1"`},
				"X-Empty":       {""},
			},
			Body: []byte(`{"visits":42}`),
		},
		"variant": {
			Kind: Response, ID: 7,
			RequestTime: t0, ResponseTime: t0.Add(time.Second),
			Status:  404,
			Header:  http.Header{"Vary": {"Accept-Encoding, Accept-Language"}},
			Body:    []byte("not here"),
			Vary:    []string{"Accept-Encoding", "Accept-Language"},
			VaryKey: "gzip\x00de",
		},
		"no body": {
			Kind: Response, ID: 8, RequestTime: t0, ResponseTime: t0,
			Status: 204, Header: http.Header{"Date": {"x"}},
		},
		"vary marker": {
			Kind: VaryMarker, ID: 9,
			Vary:  []string{"Accept-Encoding"},
			Gen:   0x8000000000000001,
			Until: t0.Add(time.Hour),
		},
		"pass mark":   {Kind: PassMark, ID: 10, Reason: "set-cookie"},
		"zero marker": {Kind: VaryMarker},
		"before 1970 and far ahead": {
			Kind: Response, ID: 11, Status: 200,
			RequestTime:  time.Date(1900, 1, 1, 0, 0, 0, 1, time.UTC),
			ResponseTime: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, want := range examples() {
		t.Run(name, func(t *testing.T) {
			b, err := want.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if b[0] != Version {
				t.Errorf("first byte %d, want the version %d", b[0], Version)
			}
			got := new(Entry)
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			again, _ := got.MarshalBinary()
			if !bytes.Equal(b, again) {
				t.Errorf("encoding the decoded entry gives other bytes")
			}
		})
	}
}

func TestRoundTripLargeBody(t *testing.T) {
	want := &Entry{Kind: Response, ID: 1, Status: 200, Body: bytes.Repeat([]byte("corral-"), 600_000)}
	b, err := want.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got := new(Entry)
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	// bytes.Equal: cmp compares 4 MiB byte by byte slowly.
	if diff := cmp.Diff(want, got, cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// TestIDAtFixedOffset: a script in another store compares IDs by slicing
// the encoding, without decoding it.
func TestIDAtFixedOffset(t *testing.T) {
	e := examples()["response"]
	b, _ := e.MarshalBinary()
	if diff := cmp.Diff([]byte{0xfe, 0xed, 0xfa, 0xce, 0xca, 0xfe, 0xbe, 0xef}, b[IDOffset:idEnd]); diff != "" {
		t.Errorf("bytes %d-%d (-want +got):\n%s", IDOffset, idEnd-1, diff)
	}
}

func TestAppendBinaryAppends(t *testing.T) {
	e := examples()["pass mark"]
	want, _ := e.MarshalBinary()
	got, err := e.AppendBinary([]byte("prefix"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(append([]byte("prefix"), want...), got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestMarshalRefuses(t *testing.T) {
	for _, e := range []*Entry{{Kind: maxKind + 1}, {Kind: Response, Status: 101}, {Kind: PassMark, Status: 200}} {
		if _, err := e.MarshalBinary(); err == nil {
			t.Errorf("no error for %+v", e)
		}
	}
}

func TestUnmarshalRefuses(t *testing.T) {
	valid, _ := examples()["response"].MarshalBinary()
	other := bytes.Clone(valid)
	other[0] = Version + 1
	kind := bytes.Clone(valid)
	kind[1] = byte(maxKind + 1)
	// head is an encoding up to and including Status 200.
	head := []byte{Version, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc8, 0x01}
	tail := make([]byte, 1+1+1+8+2+1) // Body to Reason, empty
	// A header count of 2^40: more than the input holds.
	forged := binary.AppendUvarint(bytes.Clone(head), 1<<40)
	// One header field named twice.
	dup := append(bytes.Clone(head), 2, 1, 'A', 1, 1, 'x', 1, 'A', 1, 1, 'y')
	dup = append(dup, tail...)
	ok := append(append(bytes.Clone(head), 0), tail...)
	if err := new(Entry).UnmarshalBinary(ok); err != nil {
		t.Fatalf("the cases below are built wrong: %v", err)
	}
	nanos := binary.AppendUvarint([]byte{Version, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 1e9)
	cases := map[string][]byte{
		"nothing":         nil,
		"another version": other,
		"unknown kind":    kind,
		"truncated":       valid[:len(valid)-1],
		"trailing bytes":  append(bytes.Clone(valid), 0),
		"forged count":    forged,
		"repeated field":  dup,
		"bad nanoseconds": nanos,
		"status 1000":     append(append(binary.AppendUvarint(bytes.Clone(head[:14]), 1000), 0), tail...),
		// Served, a status under 200 would panic net/http; 206 and 999
		// were never stored.
		"status 99":  append(append(binary.AppendUvarint(bytes.Clone(head[:14]), 99), 0), tail...),
		"status 206": append(append(binary.AppendUvarint(bytes.Clone(head[:14]), 206), 0), tail...),
		"status 999": append(append(binary.AppendUvarint(bytes.Clone(head[:14]), 999), 0), tail...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			e := &Entry{Reason: "untouched"}
			if err := e.UnmarshalBinary(b); err == nil {
				t.Fatalf("decoded %x without error", b)
			}
			if diff := cmp.Diff(&Entry{Reason: "untouched"}, e); diff != "" {
				t.Errorf("a failed decode changed the entry (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzUnmarshal(f *testing.F) {
	for _, e := range examples() {
		b, _ := e.MarshalBinary()
		f.Add(b)
		for _, n := range []int{1, 2, idEnd, len(b) / 2, len(b) - 1} {
			f.Add(b[:n])
		}
	}
	f.Add([]byte(strings.Repeat("\xff", 64)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Entry
		if err := e.UnmarshalBinary(b); err != nil {
			return
		}
		// What decodes encodes again, and to what decodes to the same.
		again, err := e.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %x into an entry that does not encode: %v", b, err)
		}
		var e2 Entry
		if err := e2.UnmarshalBinary(again); err != nil {
			t.Fatalf("re-encoding of %x does not decode: %v", b, err)
		}
		if diff := cmp.Diff(e, e2); diff != "" {
			t.Fatalf("decode, encode, decode of %x differs (-first +second):\n%s", b, diff)
		}
	})
}

func TestUnmarshalOwned(t *testing.T) {
	for name, want := range examples() {
		b, _ := want.MarshalBinary()
		got := new(Entry)
		if err := got.UnmarshalOwned(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	b, _ := examples()["response"].MarshalBinary()
	if n := testing.AllocsPerRun(10, func() { new(Entry).UnmarshalBinary(b) }) - testing.AllocsPerRun(10, func() { new(Entry).UnmarshalOwned(b) }); n != 1 {
		t.Errorf("UnmarshalOwned saves %v allocations, want 1: the body's copy", n)
	}
}
