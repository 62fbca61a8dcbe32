package desired

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// TestRoute is the routing decision alone: how this node (10.10.100.209/24)
// reaches a block on each kind of peer, under each IPIP mode.
func TestRoute(t *testing.T) {
	nodes := readNodes([]*corev1.Node{
		node("learn-k8s-3", "10.10.100.209/24", ""), // this node
		node("learn-k8s-2", "10.10.100.208/24", ""), // same subnet
		node("far", "10.10.200.7/24", ""),           // another subnet
		node("new", "", ""),                         // its agent has not started
	}, "learn-k8s-3")
	r := newRouter(nodes, "learn-k8s-3", "ens160")
	dst := prefix("192.168.29.64/26")
	type decision struct {
		Route Route
		OK    bool
		Note  string
	}
	tunnel := func(via, node string) decision {
		return decision{Route: Route{Dst: dst, Kind: Tunnel, Via: addr(via), Dev: TunnelDevice, Node: node}, OK: true}
	}
	direct := func(via, node string) decision {
		return decision{Route: Route{Dst: dst, Kind: Direct, Via: addr(via), Dev: "ens160", Node: node}, OK: true}
	}
	for _, tc := range []struct {
		name string
		node string
		mode v1alpha1.IPIPMode
		want decision
	}{
		{"Always, same subnet", "learn-k8s-2", v1alpha1.IPIPModeAlways, tunnel("10.10.100.208", "learn-k8s-2")},
		{"Always, other subnet", "far", v1alpha1.IPIPModeAlways, tunnel("10.10.200.7", "far")},
		{"CrossSubnet, same subnet: plain on the NIC", "learn-k8s-2", v1alpha1.IPIPModeCrossSubnet, direct("10.10.100.208", "learn-k8s-2")},
		{"CrossSubnet, other subnet", "far", v1alpha1.IPIPModeCrossSubnet, tunnel("10.10.200.7", "far")},
		{"Never, same subnet", "learn-k8s-2", v1alpha1.IPIPModeNever, direct("10.10.100.208", "learn-k8s-2")},
		{"Never, other subnet: left to the underlay", "far", v1alpha1.IPIPModeNever,
			decision{Note: "block X on node far: ipipMode Never and 10.10.200.7 is not on this node's subnet, so the underlay must route it"}},
		{"a node without an address yet", "new", v1alpha1.IPIPModeAlways,
			decision{Note: "block X on node new: the node has no address yet, not routed"}},
		{"no such node", "deleted", v1alpha1.IPIPModeAlways,
			decision{Note: "block X on node deleted: there is no such Node (deleted?), not routed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got decision
			got.Route, got.OK, got.Note = r.route(dst, tc.node, tc.mode, "block X")
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
				cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
