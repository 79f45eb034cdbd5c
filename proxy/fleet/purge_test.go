package fleet

import (
	"testing"
	"time"
)

func TestPurgeMessage(t *testing.T) {
	for _, m := range []purgeMessage{
		{from: "a1", key: "/k", at: time.UnixMicro(1)},
		{from: "a1", key: "", prefix: true, at: time.UnixMicro(1700000000123456)},
		{from: "a1", key: "/a b\x00c", at: time.Unix(-5, 0)},
	} {
		got, ok := parsePurge(m.String())
		if !ok || got != m {
			t.Errorf("parsePurge(%q) = %+v, %v; want %+v", m.String(), got, ok, m)
		}
	}
	// Rounded up to the microsecond, as the store rounds a purge.
	m := purgeMessage{from: "a", key: "/k", at: time.Unix(0, 1001)}
	if got, _ := parsePurge(m.String()); !got.at.Equal(time.UnixMicro(2)) {
		t.Errorf("at %v sent as %v, want 2µs", m.at, got.at)
	}
}

// FuzzParsePurge: what arrives on the purge channel is anyone's bytes.
func FuzzParsePurge(f *testing.F) {
	for _, s := range []string{"", "1 a k 1 /k", "1 a p -1 ", "1 a k 99999999999999999999 /k", "2 a k 1 /k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := parsePurge(s)
		if !ok {
			return
		}
		if again, ok := parsePurge(m.String()); !ok || again != m {
			t.Errorf("%q parsed as %+v, which sends as %q, parsed as %+v", s, m, m.String(), again)
		}
	})
}
