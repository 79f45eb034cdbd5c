package pass

import (
	"corral/proxy/internal/httprule"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// forward sets the forwarding fields of out, the header of an upstream
// request made for the client request in. It is the one forwarding policy
// of shared fetches and passed-through requests alike:
//
//   - A client's own forwarding fields (httprule.IsForwardingField) never go
//     upstream, nor any field with an underscore in its name
//     (httprule.NeverForwarded).
//   - Accept-Language and Accept-Encoding go in the one form variants
//     are keyed on (httprule.NormalizeLists): a passed-through answer may be
//     stored on the way, a POST's for later GETs.
//   - A request whose answer may be stored or shared (mayStore) carries
//     nothing that depends on which client asked, beyond the fields the
//     cache keys on: only corral's Via. An origin that built a link from a
//     client's Host would otherwise have it served to everyone.
//   - A request answered for its client alone (other methods, upgrades)
//     carries X-Forwarded-For with the client's address and
//     X-Forwarded-Proto. When the client is one of the trusted
//     proxies (Config.Trusted), the X-Forwarded-For chain, X-Forwarded-Host,
//     X-Forwarded-Proto and Forwarded it sent are kept, and its address
//     is appended to the chain.
func (ps *Passer) forward(out http.Header, in *http.Request, mayStore bool) {
	httprule.NormalizeLists(out)
	if mayStore {
		httprule.DropStoredForwarding(out)
		out.Add("Via", httprule.Via)
		return
	}
	httprule.DropFields(out, httprule.NeverForwarded)
	out.Add("Via", httprule.Via)
	peer := peerAddr(in.RemoteAddr)
	if peer.IsValid() && ps.isTrusted(peer) {
		for _, f := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
			if vs := in.Header.Values(f); len(vs) > 0 {
				out[f] = append([]string(nil), vs...)
			}
		}
	} else {
		// Not the client's Host as X-Forwarded-Host: it is text the
		// client chose, and an origin that builds links from it would
		// put them in an answer that may yet be stored (a POST that
		// names its own URL).
		proto := "http"
		if in.TLS != nil {
			proto = "https"
		}
		out.Set("X-Forwarded-Proto", proto)
	}
	if peer.IsValid() {
		out.Add("X-Forwarded-For", peer.String())
	}
}

func (ps *Passer) isTrusted(addr netip.Addr) bool {
	for _, pfx := range ps.trusted {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

// ClientAddr is the address of the client that sent r: its peer's, or,
// when the peer is one of Config.Trusted, the last address in the
// X-Forwarded-For chain that is not one of them (the chain's earlier
// entries are whatever the client wrote).
func (ps *Passer) ClientAddr(r *http.Request) netip.Addr {
	addr := peerAddr(r.RemoteAddr)
	if !addr.IsValid() || !ps.isTrusted(addr) {
		return addr
	}
	chain := r.Header.Values("X-Forwarded-For")
	for i := len(chain) - 1; i >= 0; i-- {
		hops := strings.Split(chain[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(hops[j]))
			if err != nil {
				return addr // a chain that does not parse: the proxy is the client
			}
			if hop = hop.Unmap(); !ps.isTrusted(hop) {
				return hop
			}
		}
	}
	return addr
}

// peerAddr is the IP address of a RemoteAddr, or the zero Addr.
func peerAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}
