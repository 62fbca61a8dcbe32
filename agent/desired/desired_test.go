package desired

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func node(name, addr, tunnelAddr string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
	if addr != "" {
		n.Annotations[v1alpha1.AnnotationIPv4Address] = addr
	}
	if tunnelAddr != "" {
		n.Annotations[v1alpha1.AnnotationTunnelAddress] = tunnelAddr
	}
	return n
}

func pool(name, cidr string, mode v1alpha1.IPIPMode, nat, disabled bool) *v1alpha1.IPPool {
	return &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: 26, IPIPMode: mode, NATOutgoing: nat, Disabled: disabled},
	}
}

// borrowed is an allocation at ordinal o used on node.
type borrowed struct {
	ordinal int
	node    string
}

func block(cidr, node, poolName string, allocs ...borrowed) *v1alpha1.IPAMBlock {
	b := &v1alpha1.IPAMBlock{
		ObjectMeta: metav1.ObjectMeta{Name: cidr},
		Spec:       v1alpha1.IPAMBlockSpec{CIDR: cidr, Node: node, Pool: poolName},
	}
	for _, a := range allocs {
		b.Spec.Allocations = append(b.Spec.Allocations, v1alpha1.Allocation{Ordinal: a.ordinal, Handle: "h", Type: v1alpha1.AllocationPod, Node: a.node})
	}
	return b
}

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// view is State with routes as `ip route` text, which is what a person
// compares.
type view struct {
	Routes   []string
	Tunnel   TunnelConfig
	Firewall Firewall
	Notes    []string
}

func viewOf(st State) view {
	v := view{Tunnel: st.Tunnel, Firewall: st.Firewall, Notes: st.Notes}
	for _, r := range st.Routes {
		v.Routes = append(v.Routes, r.String())
	}
	return v
}

var netipEqual = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func TestCompute(t *testing.T) {
	local := Local{Iface: "ens160", MTU: 1500}
	// The article's cluster: the client's node learn-k8s-3 and the server's
	// node learn-k8s-2 on 10.10.100.0/24, a third node on another subnet.
	n2 := node("learn-k8s-2", "10.10.100.208/24", "192.168.29.64")
	n3 := node("learn-k8s-3", "10.10.100.209/24", "192.168.154.192")
	n4 := node("learn-k8s-4", "10.10.200.7/24", "192.168.7.0")
	nodes := []*corev1.Node{n2, n3, n4}
	blocks := func(p string) []*v1alpha1.IPAMBlock {
		return []*v1alpha1.IPAMBlock{
			block("192.168.29.64/26", "learn-k8s-2", p),
			block("192.168.154.192/26", "learn-k8s-3", p),
			block("192.168.7.0/26", "learn-k8s-4", p),
		}
	}
	allNodeIPs := []netip.Addr{addr("10.10.100.208"), addr("10.10.100.209"), addr("10.10.200.7")}
	tunnelOf := func(peers ...Peer) TunnelConfig {
		return TunnelConfig{
			Address: addr("192.168.154.192"), MTU: 1480,
			UnderlayIface: "ens160", UnderlayIP: addr("10.10.100.209"),
			Peers: peers, NodeIPs: allNodeIPs,
		}
	}
	fw := func(nat bool) Firewall {
		f := Firewall{NodeIPs: allNodeIPs, PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")}}
		if nat {
			f.NATPoolCIDRs = []netip.Prefix{prefix("192.168.0.0/16")}
		}
		return f
	}

	tests := []struct {
		name string
		in   Input
		want view
	}{
		{
			name: "Always: every remote block through tunl0, own block blackholed",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, true, false)},
				Blocks: blocks("default"), Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.7.0/26 via 10.10.200.7 dev tunl0 proto calyx onlink",
					"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel: tunnelOf(
					Peer{CIDR: prefix("192.168.7.0/26"), NodeIP: addr("10.10.200.7")},
					Peer{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")},
				),
				Firewall: fw(true),
			},
		},
		{
			name: "CrossSubnet: same subnet direct on the NIC, other subnet through tunl0",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeCrossSubnet, false, false)},
				Blocks: blocks("default"), Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.7.0/26 via 10.10.200.7 dev tunl0 proto calyx onlink",
					"192.168.29.64/26 via 10.10.100.208 dev ens160 proto calyx",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel:   tunnelOf(Peer{CIDR: prefix("192.168.7.0/26"), NodeIP: addr("10.10.200.7")}),
				Firewall: fw(false),
			},
		},
		{
			name: "Never: same subnet direct, other subnet left to the underlay",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeNever, false, false)},
				Blocks: blocks("default"), Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.29.64/26 via 10.10.100.208 dev ens160 proto calyx",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel:   tunnelOf(),
				Firewall: fw(false),
				Notes: []string{
					"block 192.168.7.0/26 on node learn-k8s-4: ipipMode Never and 10.10.200.7 is not on this node's subnet, so the underlay must route it",
				},
			},
		},
		{
			name: "empty ipipMode means Always",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", "", false, false)},
				Blocks: blocks("default")[:2], Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel:   tunnelOf(Peer{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")}),
				Firewall: fw(false),
			},
		},
		{
			name: "borrowed addresses: /32 to the node using them, none for our own",
			in: Input{
				Pools: []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false)},
				Blocks: []*v1alpha1.IPAMBlock{
					// learn-k8s-2's block: .67 is its own pod, .68 is used
					// here on learn-k8s-3, .69 on learn-k8s-4.
					block("192.168.29.64/26", "learn-k8s-2", "default",
						borrowed{3, "learn-k8s-2"}, borrowed{4, "learn-k8s-3"}, borrowed{5, "learn-k8s-4"}),
					// Our block lends .200 to learn-k8s-2.
					block("192.168.154.192/26", "learn-k8s-3", "default", borrowed{8, "learn-k8s-2"}, borrowed{9, ""}),
				},
				Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
					"192.168.29.69 via 10.10.200.7 dev tunl0 proto calyx onlink",
					"blackhole 192.168.154.192/26 proto calyx",
					"192.168.154.200 via 10.10.100.208 dev tunl0 proto calyx onlink",
				},
				Tunnel: tunnelOf(
					Peer{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")},
					Peer{CIDR: prefix("192.168.29.69/32"), NodeIP: addr("10.10.200.7")},
					Peer{CIDR: prefix("192.168.154.200/32"), NodeIP: addr("10.10.100.208")},
				),
				Firewall: fw(false),
			},
		},
		{
			name: "several own blocks, each blackholed; unaffine block ignored",
			in: Input{
				Pools: []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false)},
				Blocks: []*v1alpha1.IPAMBlock{
					block("192.168.154.192/26", "learn-k8s-3", "default"),
					block("192.168.155.0/26", "learn-k8s-3", "default"),
					block("192.168.200.0/26", "", "default"),
				},
				Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"blackhole 192.168.154.192/26 proto calyx",
					"blackhole 192.168.155.0/26 proto calyx",
				},
				Tunnel:   tunnelOf(),
				Firewall: fw(false),
			},
		},
		{
			name: "a node without an address yet: its blocks wait",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false)},
				Blocks: blocks("default"),
				Nodes:  []*corev1.Node{node("learn-k8s-2", "", ""), n3, n4},
				Node:   "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.7.0/26 via 10.10.200.7 dev tunl0 proto calyx onlink",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel: TunnelConfig{
					Address: addr("192.168.154.192"), MTU: 1480, UnderlayIface: "ens160", UnderlayIP: addr("10.10.100.209"),
					Peers:   []Peer{{CIDR: prefix("192.168.7.0/26"), NodeIP: addr("10.10.200.7")}},
					NodeIPs: []netip.Addr{addr("10.10.100.209"), addr("10.10.200.7")},
				},
				Firewall: Firewall{NodeIPs: []netip.Addr{addr("10.10.100.209"), addr("10.10.200.7")}, PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")}},
				Notes: []string{
					"block 192.168.29.64/26 on node learn-k8s-2: the node has no address yet, not routed",
					"node learn-k8s-2 has no calyx.dev/ipv4-address yet (its agent has not started): its blocks are not routed",
				},
			},
		},
		{
			name: "this node without an address yet: CrossSubnet cannot tell, so it tunnels",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeCrossSubnet, false, false)},
				Blocks: blocks("default")[:2],
				Nodes:  []*corev1.Node{n2, node("learn-k8s-3", "", "")},
				Node:   "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
					"blackhole 192.168.154.192/26 proto calyx",
				},
				Tunnel: TunnelConfig{
					MTU: 1480, UnderlayIface: "ens160",
					Peers:   []Peer{{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")}},
					NodeIPs: []netip.Addr{addr("10.10.100.208")},
				},
				Firewall: Firewall{NodeIPs: []netip.Addr{addr("10.10.100.208")}, PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")}},
			},
		},
		{
			name: "a disabled pool's blocks stay routed and its range stays a pool range",
			in: Input{
				Pools: []*v1alpha1.IPPool{
					pool("old", "192.168.0.0/16", v1alpha1.IPIPModeAlways, true, true),
					pool("new", "10.244.0.0/16", v1alpha1.IPIPModeCrossSubnet, true, false),
				},
				Blocks: []*v1alpha1.IPAMBlock{
					block("192.168.29.64/26", "learn-k8s-2", "old"),
					block("10.244.1.0/26", "learn-k8s-2", "new"),
				},
				Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"10.244.1.0/26 via 10.10.100.208 dev ens160 proto calyx",
					"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
				},
				Tunnel: tunnelOf(Peer{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")}),
				Firewall: Firewall{
					NodeIPs:      allNodeIPs,
					PoolCIDRs:    []netip.Prefix{prefix("10.244.0.0/16"), prefix("192.168.0.0/16")},
					NATPoolCIDRs: []netip.Prefix{prefix("10.244.0.0/16"), prefix("192.168.0.0/16")},
				},
			},
		},
		{
			name: "block of a deleted pool: found by range, else tunnelled",
			in: Input{
				Pools: []*v1alpha1.IPPool{pool("other", "192.168.0.0/16", v1alpha1.IPIPModeCrossSubnet, false, false)},
				Blocks: []*v1alpha1.IPAMBlock{
					block("192.168.29.64/26", "learn-k8s-2", "gone"),
					block("172.16.0.0/26", "learn-k8s-2", "gone"),
				},
				Nodes: nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Routes: []string{
					"172.16.0.0/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
					"192.168.29.64/26 via 10.10.100.208 dev ens160 proto calyx",
				},
				Tunnel:   tunnelOf(Peer{CIDR: prefix("172.16.0.0/26"), NodeIP: addr("10.10.100.208")}),
				Firewall: fw(false),
			},
		},
		{
			name: "a block of a deleted node waits for IPAM to free it",
			in: Input{
				Pools:  []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false)},
				Blocks: []*v1alpha1.IPAMBlock{block("192.168.29.64/26", "learn-k8s-9", "default")},
				Nodes:  nodes, Node: "learn-k8s-3", Local: local,
			},
			want: view{
				Tunnel:   tunnelOf(),
				Firewall: fw(false),
				Notes:    []string{"block 192.168.29.64/26 on node learn-k8s-9: there is no such Node (deleted?), not routed"},
			},
		},
		{
			name: "no pools, no blocks: nothing to route",
			in:   Input{Nodes: nodes, Node: "learn-k8s-3", Local: local},
			want: view{Tunnel: tunnelOf(), Firewall: Firewall{NodeIPs: allNodeIPs}},
		},
		{
			name: "invalid objects are left out with a note",
			in: Input{
				Pools: []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false), pool("bad", "nonsense", "", false, false)},
				Blocks: []*v1alpha1.IPAMBlock{
					block("not-a-cidr", "learn-k8s-2", "default"),
					block("192.168.29.64/26", "learn-k8s-2", "default", borrowed{64, "learn-k8s-4"}),
				},
				Nodes: []*corev1.Node{node("learn-k8s-2", "10.10.100.208/24", ""), node("learn-k8s-3", "10.10.100.209/24", "not-an-ip"), node("learn-k8s-5", "garbage", "")},
				Node:  "learn-k8s-3", Local: Local{Iface: "ens160"},
			},
			want: view{
				Routes: []string{"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink"},
				Tunnel: TunnelConfig{
					UnderlayIface: "ens160", UnderlayIP: addr("10.10.100.209"),
					Peers:   []Peer{{CIDR: prefix("192.168.29.64/26"), NodeIP: addr("10.10.100.208")}},
					NodeIPs: []netip.Addr{addr("10.10.100.208"), addr("10.10.100.209")},
				},
				Firewall: Firewall{NodeIPs: []netip.Addr{addr("10.10.100.208"), addr("10.10.100.209")}, PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")}},
				Notes: []string{
					`block 192.168.29.64/26 has an allocation at ordinal 64, outside the block: ignored`,
					`block not-a-cidr has an invalid cidr "not-a-cidr": ignored`,
					`node learn-k8s-3 has an invalid calyx.dev/ipv4-tunnel-address "not-an-ip": tunl0 gets no address`,
					`node learn-k8s-5 has an invalid calyx.dev/ipv4-address "garbage": its blocks are not routed`,
					`pool bad has an invalid cidr "nonsense": ignored`,
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := viewOf(Compute(tt.in))
			if diff := cmp.Diff(tt.want, got, netipEqual); diff != "" {
				t.Errorf("Compute() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// The server's node in the article: its view of the same cluster.
func TestComputeIsSymmetric(t *testing.T) {
	in := Input{
		Pools: []*v1alpha1.IPPool{pool("default", "192.168.0.0/16", v1alpha1.IPIPModeAlways, false, false)},
		Blocks: []*v1alpha1.IPAMBlock{
			block("192.168.29.64/26", "learn-k8s-2", "default"),
			block("192.168.154.192/26", "learn-k8s-3", "default"),
		},
		Nodes: []*corev1.Node{node("learn-k8s-2", "10.10.100.208/24", ""), node("learn-k8s-3", "10.10.100.209/24", "")},
		Node:  "learn-k8s-2",
	}
	var got []string
	for _, r := range Compute(in).Routes {
		got = append(got, r.String())
	}
	want := []string{
		"blackhole 192.168.29.64/26 proto calyx",
		"192.168.154.192/26 via 10.10.100.209 dev tunl0 proto calyx onlink",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("routes of learn-k8s-2 (-want +got):\n%s", diff)
	}
}
