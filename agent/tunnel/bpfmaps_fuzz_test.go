package tunnel

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/agent/desired"
)

// fuzzConfig reads peers and node addresses out of fuzz bytes: IPv4 most
// of the time, and now and then an IPv6, IPv4-in-IPv6, zero address or a
// prefix length past 32, which validation must stop.
func fuzzConfig(data []byte) desired.TunnelConfig {
	cfg := desired.TunnelConfig{MTU: 1480, UnderlayIface: "ens160", UnderlayIP: netip.MustParseAddr("10.10.100.208")}
	take := func(n int) []byte {
		if len(data) < n {
			return nil
		}
		b := data[:n]
		data = data[n:]
		return b
	}
	v4 := func() (netip.Addr, bool) {
		b := take(4)
		if b == nil {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(b)), true
	}
	odd := func(tag byte) (netip.Addr, bool) {
		switch tag % 3 {
		case 0:
			b := take(16)
			if b == nil {
				return netip.Addr{}, false
			}
			return netip.AddrFrom16([16]byte(b)), true
		case 1:
			a, ok := v4()
			return netip.AddrFrom16(a.As16()), ok // ::ffff:a.b.c.d
		}
		return netip.Addr{}, true
	}
	for len(data) > 0 && len(cfg.Peers)+len(cfg.NodeIPs) < 64 {
		tag := take(1)[0]
		switch tag % 8 {
		case 0, 1, 2, 3: // an IPv4 peer
			a, ok := v4()
			bits := take(1)
			n, ok2 := v4()
			if !ok || bits == nil || !ok2 {
				return cfg
			}
			cfg.Peers = append(cfg.Peers, desired.Peer{CIDR: netip.PrefixFrom(a, int(bits[0])%40), NodeIP: n})
		case 4, 5: // an IPv4 node
			a, ok := v4()
			if !ok {
				return cfg
			}
			cfg.NodeIPs = append(cfg.NodeIPs, a)
		case 6: // a peer with an odd block or node address
			a, ok := odd(tag >> 3)
			n, ok2 := v4()
			if !ok || !ok2 {
				return cfg
			}
			if tag&0x80 != 0 {
				a, n = n, a
			}
			cfg.Peers = append(cfg.Peers, desired.Peer{CIDR: netip.PrefixFrom(a, 24), NodeIP: n})
		case 7: // an odd node address
			a, ok := odd(tag >> 3)
			if !ok {
				return cfg
			}
			cfg.NodeIPs = append(cfg.NodeIPs, a)
		}
	}
	return cfg
}

// The map encoding of the eBPF datapath, for any set of peers and nodes:
// what validation accepts encodes without a panic; every remote_blocks key
// is the block's masked prefix with the address bytes in network order
// (what the kernel's LPM trie compares with the packet), and decodes back
// to the peer; a longest-prefix lookup in the encoded map picks the node
// the peers say; node_ips decodes back to the set of node addresses; and
// what validation refuses, it refuses naming the peer or address.
func FuzzBPFMapEncoding(f *testing.F) {
	peer := func(a string, bits byte, n string) []byte {
		b := []byte{0}
		b = append(b, netip.MustParseAddr(a).AsSlice()...)
		b = append(b, bits)
		return append(b, netip.MustParseAddr(n).AsSlice()...)
	}
	node := func(a string) []byte { return append([]byte{4}, netip.MustParseAddr(a).AsSlice()...) }
	// The article's two nodes and their blocks.
	f.Add(append(append(peer("192.168.29.64", 26, "10.10.100.208"), peer("192.168.154.192", 26, "10.10.100.209")...),
		append(node("10.10.100.208"), node("10.10.100.209")...)...), uint32(0xc0a81d43))
	f.Add(append(peer("192.168.29.67", 26, "10.0.0.1"), peer("192.168.29.64", 32, "10.0.0.2")...), uint32(0xc0a81d40))
	f.Add(peer("0.0.0.0", 0, "10.0.0.1"), uint32(0xffffffff))
	f.Add(peer("255.255.255.255", 39, "10.0.0.1"), uint32(1))
	f.Add(append(peer("10.1.0.0", 16, "10.0.0.1"), peer("10.1.0.0", 16, "10.0.0.2")...), uint32(0x0a010203))
	f.Add([]byte{6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 10, 0, 0, 1}, uint32(0))
	f.Add([]byte{7 | 1<<3, 10, 0, 0, 1}, uint32(0))
	f.Fuzz(func(t *testing.T, data []byte, probe uint32) {
		cfg := fuzzConfig(data)
		if err := validateEBPF(cfg); err != nil {
			msg := err.Error()
			if !strings.Contains(msg, "peer") && !strings.Contains(msg, "node address") && !strings.Contains(msg, "block") {
				t.Fatalf("refusal %q names neither the peer, the block nor the node address", msg)
			}
			return
		}

		// What the peers say, per masked block.
		want := map[netip.Prefix]netip.Addr{}
		for _, p := range cfg.Peers {
			want[p.CIDR.Masked()] = p.NodeIP
		}
		got := map[netip.Prefix]netip.Addr{}
		for k, v := range desiredPeers(cfg.Peers) {
			p := peerFromMap(k, v)
			var mem [4]byte
			binary.NativeEndian.PutUint32(mem[:], k.Addr)
			if mem != p.CIDR.Addr().As4() || int(k.Prefixlen) != p.CIDR.Bits() {
				t.Fatalf("key %+v is not %v in network byte order", k, p.CIDR)
			}
			if p.CIDR != p.CIDR.Masked() {
				t.Fatalf("key %+v has host bits set: %v", k, p.CIDR)
			}
			got[p.CIDR] = p.NodeIP
		}
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
			cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Fatalf("remote_blocks decodes to other peers (-want +got):\n%s", diff)
		}

		// The lookup the kernel makes, on the key bytes, against the one
		// the peers describe.
		var pb [4]byte
		binary.BigEndian.PutUint32(pb[:], probe)
		dst := netip.AddrFrom4(pb)
		if addrFromBE32(be32(dst)) != dst {
			t.Fatalf("%v does not survive be32 and back", dst)
		}
		if lpm, ref := lookupKeys(desiredPeers(cfg.Peers), pb), lookupPeers(cfg.Peers, dst); lpm != ref {
			t.Fatalf("a packet to %v goes to %v by the map, to %v by the peers", dst, lpm, ref)
		}

		wantNodes := map[netip.Addr]bool{}
		for _, a := range cfg.NodeIPs {
			wantNodes[a] = true
		}
		gotNodes := map[netip.Addr]bool{}
		for k, v := range desiredNodes(cfg.NodeIPs) {
			if v != 1 {
				t.Fatalf("node_ips value %d, want 1", v)
			}
			gotNodes[addrFromBE32(k)] = true
		}
		if diff := cmp.Diff(wantNodes, gotNodes, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Fatalf("node_ips decodes to other addresses (-want +got):\n%s", diff)
		}
	})
}

// lookupKeys is BPF_MAP_TYPE_LPM_TRIE's lookup: the key whose first
// prefixlen bits of data equal the address's, longest first.
func lookupKeys(m map[calyxLpmKey]uint32, dst [4]byte) netip.Addr {
	best, found := -1, netip.Addr{}
	for k, v := range m {
		var data [4]byte
		binary.NativeEndian.PutUint32(data[:], k.Addr)
		n := int(k.Prefixlen)
		if n <= best || !bitsEqual(data, dst, n) {
			continue
		}
		best, found = n, addrFromBE32(v)
	}
	return found
}

func bitsEqual(a, b [4]byte, n int) bool {
	for i := range n {
		if a[i/8]>>(7-i%8)&1 != b[i/8]>>(7-i%8)&1 {
			return false
		}
	}
	return true
}

func lookupPeers(peers []desired.Peer, dst netip.Addr) netip.Addr {
	best, found := -1, netip.Addr{}
	for _, p := range peers {
		if p.CIDR.Contains(dst) && p.CIDR.Bits() > best {
			best, found = p.CIDR.Bits(), p.NodeIP
		}
	}
	return found
}
