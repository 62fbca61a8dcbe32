package desired

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// annotationInput is a two-node cluster whose node annotations are the
// fuzzer's: node-a (this node) and node-b, each with a block. The
// annotations are always there, if empty: a missing one is another case.
func annotationInput(selfAddr, selfTunnel, peerAddr string) Input {
	self := node("node-a", "", "")
	self.Annotations[v1alpha1.AnnotationIPv4Address] = selfAddr
	self.Annotations[v1alpha1.AnnotationTunnelAddress] = selfTunnel
	peer := node("node-b", "", "")
	peer.Annotations[v1alpha1.AnnotationIPv4Address] = peerAddr
	return Input{
		Pools: []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, true, false)},
		Blocks: []*v1alpha1.IPAMBlock{
			block("192.168.1.0/26", "node-b", "default"),
			block("192.168.2.0/26", "node-a", "default"),
		},
		Nodes: []*corev1.Node{self, peer},
		Node:  "node-a",
		Local: Local{Iface: "ens160", MTU: 1500},
	}
}

// The node annotations calyx.dev/ipv4-address and
// calyx.dev/ipv4-tunnel-address, whatever another node (or anyone who
// can patch Nodes) writes there: Compute never panics; what it takes from
// them is IPv4, so the tunnel datapath can be programmed with it (an
// IPv6 or zero address would make Set refuse the whole state); what it
// refuses it says in a note naming the annotation and the node; and what
// it accepts means the same written canonically.
func FuzzNodeAnnotations(f *testing.F) {
	f.Add("10.10.100.209/24", "192.168.154.192", "10.10.100.208/24")
	f.Add("10.10.100.209/24", "192.168.154.192/32", "10.10.100.208/32")
	f.Add("10.0.0.1/33", "::/32", "::ffff:10.0.0.2/120")
	f.Add("", "", "")
	f.Add(" 10.0.0.1/24", " 192.168.2.1 ", "10.0.0.2/24 ")
	f.Add("fe80::1%eth0/64", "192.168.2.1/31", "0.0.0.0/0")
	f.Add("1.2.3.4", "1.2.3.4/24", "10.0.0.2/8")
	f.Fuzz(func(t *testing.T, selfAddr, selfTunnel, peerAddr string) {
		st := Compute(annotationInput(selfAddr, selfTunnel, peerAddr))

		tc := st.Tunnel
		if tc.Address.IsValid() && !tc.Address.Is4() {
			t.Fatalf("%s %q gives tunl0 the non-IPv4 address %v", v1alpha1.AnnotationTunnelAddress, selfTunnel, tc.Address)
		}
		if tc.UnderlayIP.IsValid() && !tc.UnderlayIP.Is4() {
			t.Fatalf("%s %q gives the non-IPv4 underlay address %v", v1alpha1.AnnotationIPv4Address, selfAddr, tc.UnderlayIP)
		}
		for _, a := range append(tc.NodeIPs, st.Firewall.NodeIPs...) {
			if !a.Is4() {
				t.Fatalf("node address %v is not IPv4 (annotations %q, %q)", a, selfAddr, peerAddr)
			}
		}
		for _, p := range tc.Peers {
			if !p.CIDR.IsValid() || !p.CIDR.Addr().Is4() || !p.NodeIP.Is4() {
				t.Fatalf("peer %v via %v is not IPv4", p.CIDR, p.NodeIP)
			}
		}

		notes := strings.Join(st.Notes, "\n")
		refused := func(node, key string) bool {
			return strings.Contains(notes, "node "+node+" has an invalid "+key)
		}
		if tc.Address.IsValid() == refused("node-a", v1alpha1.AnnotationTunnelAddress) {
			t.Fatalf("%s %q: address %v, notes %q: exactly one of the two expected", v1alpha1.AnnotationTunnelAddress, selfTunnel, tc.Address, st.Notes)
		}
		if tc.UnderlayIP.IsValid() == refused("node-a", v1alpha1.AnnotationIPv4Address) {
			t.Fatalf("%s %q: underlay %v, notes %q: exactly one of the two expected", v1alpha1.AnnotationIPv4Address, selfAddr, tc.UnderlayIP, st.Notes)
		}
		peerRouted := len(tc.Peers) == 1
		if peerRouted == refused("node-b", v1alpha1.AnnotationIPv4Address) {
			t.Fatalf("%s %q on node-b: peers %v, notes %q: exactly one of the two expected", v1alpha1.AnnotationIPv4Address, peerAddr, tc.Peers, st.Notes)
		}

		// Accepted values, written canonically, give the same state.
		canon := func(v string, ok bool, prefixed bool) string {
			if !ok {
				return v
			}
			if prefixed {
				return netip.MustParsePrefix(v).String()
			}
			return tc.Address.String()
		}
		again := Compute(annotationInput(
			canon(selfAddr, tc.UnderlayIP.IsValid(), true),
			canon(selfTunnel, tc.Address.IsValid(), false),
			canon(peerAddr, peerRouted, true)))
		if diff := cmp.Diff(viewOf(st), viewOf(again), netipEqual); diff != "" {
			t.Fatalf("annotations %q %q %q and their canonical form give different states (-raw +canonical):\n%s",
				selfAddr, selfTunnel, peerAddr, diff)
		}
	})
}
