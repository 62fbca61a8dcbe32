// Package desired computes what a node's routes, tunnel and firewall sets
// should be from the cluster's pools, blocks, nodes and Services. It is pure: the
// agent applies its result, and calyxctl compares it with what a node has.
package desired

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// The annotation keys live in api/v1alpha1 next to the types. These names
// stay for code outside the agent that still spells them here (bench,
// test/e2e); new code uses v1alpha1's.
const (
	// Deprecated: use v1alpha1.AnnotationIPv4Address.
	AnnotationIPv4Address = v1alpha1.AnnotationIPv4Address
	// Deprecated: use v1alpha1.AnnotationTunnelAddress.
	AnnotationTunnelAddress = v1alpha1.AnnotationTunnelAddress
	// Deprecated: use v1alpha1.AnnotationConntrackHelper.
	AnnotationConntrackHelper = v1alpha1.AnnotationConntrackHelper
)

// RouteProtocol marks the routes the agent owns (rtnetlink protocol 202,
// named "calyx" in /etc/iproute2/rt_protos.d/calyx.conf).
const RouteProtocol = 202

// EncapOverhead is the size of the outer IPv4 header IP-in-IP adds.
const EncapOverhead = 20

// Kind is how a route reaches its destination.
type Kind int

const (
	// Tunnel routes via a node's underlay address on tunl0, onlink.
	Tunnel Kind = iota
	// Direct routes via a node's underlay address on the NIC, unencapsulated.
	Direct
	// Blackhole drops: the node's own blocks, whose used addresses have
	// more specific routes to their pods.
	Blackhole
)

func (k Kind) String() string {
	switch k {
	case Tunnel:
		return "tunnel"
	case Direct:
		return "direct"
	case Blackhole:
		return "blackhole"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Route is one route the node should have.
type Route struct {
	Dst  netip.Prefix
	Kind Kind
	// Via is the underlay address of the node the destination lives on
	// (not set for Blackhole).
	Via netip.Addr
	// Dev is tunl0 for Tunnel and the NIC for Direct; it may be empty for
	// Direct when the NIC is not known (calyxctl computing another node's
	// routes).
	Dev string
	// Node is the node the destination lives on; for calyxctl and logs.
	Node string
}

// String renders the route as `ip route` prints it, so that expected and
// actual routes can be compared as text.
func (r Route) String() string {
	dst := r.Dst.String()
	if r.Dst.IsSingleIP() {
		dst = r.Dst.Addr().String() // ip prints host routes without /32
	}
	switch r.Kind {
	case Blackhole:
		return fmt.Sprintf("blackhole %s proto calyx", dst)
	case Tunnel:
		return fmt.Sprintf("%s via %s dev %s proto calyx onlink", dst, r.Via, r.Dev)
	default:
		if r.Dev == "" {
			return fmt.Sprintf("%s via %s proto calyx", dst, r.Via)
		}
		return fmt.Sprintf("%s via %s dev %s proto calyx", dst, r.Via, r.Dev)
	}
}

// Firewall is the content of the agent's nftables sets.
type Firewall struct {
	// NodeIPs are the cluster's node addresses: IPIP is accepted only from
	// them.
	NodeIPs []netip.Addr
	// PoolCIDRs are every pool's range, disabled pools included (their pods
	// still exist): traffic to them is never masqueraded.
	PoolCIDRs []netip.Prefix
	// NATPoolCIDRs are the ranges of pools with natOutgoing: their pods'
	// traffic leaving all pools is masqueraded.
	NATPoolCIDRs []netip.Prefix
	// Helpers attach conntrack helpers to Services that ask for one,
	// sorted.
	Helpers []Helper
}

// Local are facts about this node the API does not hold.
type Local struct {
	// Iface is the underlay NIC (ens160) and MTU its MTU.
	Iface string
	MTU   int
}

// Input is everything the desired state depends on.
type Input struct {
	Pools  []*v1alpha1.IPPool
	Blocks []*v1alpha1.IPAMBlock
	Nodes  []*corev1.Node
	// Services are read for their conntrack helper annotation.
	Services []*corev1.Service
	// Node is the name of the node the state is for.
	Node  string
	Local Local
}

// State is what the node should have.
type State struct {
	// Routes, sorted by destination.
	Routes   []Route
	Tunnel   TunnelConfig
	Firewall Firewall
	// Notes say which objects were left out and why: a node without an
	// address yet, a block with an invalid CIDR.
	Notes []string
}

// nodeAddr is a node's underlay address as its agent announced it.
type nodeAddr struct {
	ip     netip.Addr
	subnet netip.Prefix
}

// Compute is the desired state of in.Node.
func Compute(in Input) State {
	var st State
	notef := func(format string, args ...any) { st.Notes = append(st.Notes, fmt.Sprintf(format, args...)) }

	addrs := map[string]nodeAddr{}
	exists := map[string]bool{}
	for _, n := range in.Nodes {
		exists[n.Name] = true
		v, ok := n.Annotations[v1alpha1.AnnotationIPv4Address]
		if !ok {
			if n.Name != in.Node {
				notef("node %s has no %s yet (its agent has not started): its blocks are not routed", n.Name, v1alpha1.AnnotationIPv4Address)
			}
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			notef("node %s has an invalid %s %q: its blocks are not routed", n.Name, v1alpha1.AnnotationIPv4Address, v)
			continue
		}
		addrs[n.Name] = nodeAddr{ip: p.Addr(), subnet: p.Masked()}
		st.Firewall.NodeIPs = append(st.Firewall.NodeIPs, p.Addr())
	}
	self, selfKnown := addrs[in.Node]

	type pool struct {
		cidr netip.Prefix
		mode v1alpha1.IPIPMode
	}
	pools := map[string]pool{}
	for _, p := range in.Pools {
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			notef("pool %s has an invalid cidr %q: ignored", p.Name, p.Spec.CIDR)
			continue
		}
		cidr = cidr.Masked()
		mode := p.Spec.IPIPMode
		if mode == "" {
			mode = v1alpha1.IPIPModeAlways
		}
		pools[p.Name] = pool{cidr: cidr, mode: mode}
		st.Firewall.PoolCIDRs = append(st.Firewall.PoolCIDRs, cidr)
		if p.Spec.NATOutgoing {
			st.Firewall.NATPoolCIDRs = append(st.Firewall.NATPoolCIDRs, cidr)
		}
	}
	modeOf := func(b *v1alpha1.IPAMBlock, cidr netip.Prefix) v1alpha1.IPIPMode {
		if p, ok := pools[b.Spec.Pool]; ok {
			return p.mode
		}
		for _, p := range pools {
			if p.cidr.Contains(cidr.Addr()) {
				return p.mode
			}
		}
		// The pool is gone but its addresses may still be in use: keep
		// them reachable the way that works across any underlay.
		return v1alpha1.IPIPModeAlways
	}

	// route is how dst on node reaches it from here; ok is false when it
	// cannot be routed (a note says why).
	route := func(dst netip.Prefix, node string, mode v1alpha1.IPIPMode, what string) (Route, bool) {
		peer, ok := addrs[node]
		switch {
		case !ok && !exists[node]:
			notef("%s on node %s: there is no such Node (deleted?), not routed", what, node)
			return Route{}, false
		case !ok:
			notef("%s on node %s: the node has no address yet, not routed", what, node)
			return Route{}, false
		}
		sameSubnet := selfKnown && self.subnet.Contains(peer.ip)
		switch {
		case mode == v1alpha1.IPIPModeNever && !sameSubnet:
			notef("%s on node %s: ipipMode Never and %s is not on this node's subnet, so the underlay must route it", what, node, peer.ip)
			return Route{}, false
		case mode == v1alpha1.IPIPModeNever, mode == v1alpha1.IPIPModeCrossSubnet && sameSubnet:
			return Route{Dst: dst, Kind: Direct, Via: peer.ip, Dev: in.Local.Iface, Node: node}, true
		default:
			return Route{Dst: dst, Kind: Tunnel, Via: peer.ip, Dev: TunnelDevice, Node: node}, true
		}
	}

	for _, b := range in.Blocks {
		cidr, err := netip.ParsePrefix(b.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			notef("block %s has an invalid cidr %q: ignored", b.Name, b.Spec.CIDR)
			continue
		}
		cidr = cidr.Masked()
		mode := modeOf(b, cidr)
		switch b.Spec.Node {
		case "":
			// Affine to no node: nothing to route to.
		case in.Node:
			st.Routes = append(st.Routes, Route{Dst: cidr, Kind: Blackhole})
		default:
			if r, ok := route(cidr, b.Spec.Node, mode, "block "+cidr.String()); ok {
				st.Routes = append(st.Routes, r)
			}
		}
		for _, a := range b.Spec.Allocations {
			// A borrowed address lives on another node than its block's;
			// on its own node the CNI plugin's /32 to the pod covers it.
			if a.Node == "" || a.Node == b.Spec.Node || a.Node == in.Node {
				continue
			}
			addr, ok := v1alpha1.AddrAt(cidr, a.Ordinal)
			if !ok {
				notef("block %s has an allocation at ordinal %d, outside the block: ignored", b.Name, a.Ordinal)
				continue
			}
			if r, ok := route(netip.PrefixFrom(addr, 32), a.Node, mode, "borrowed address "+addr.String()); ok {
				st.Routes = append(st.Routes, r)
			}
		}
	}
	slices.SortFunc(st.Routes, func(a, b Route) int { return ComparePrefix(a.Dst, b.Dst) })

	st.Tunnel = TunnelConfig{UnderlayIface: in.Local.Iface}
	if in.Local.MTU > 0 {
		st.Tunnel.MTU = in.Local.MTU - EncapOverhead
	}
	if selfKnown {
		st.Tunnel.UnderlayIP = self.ip
	}
	for _, n := range in.Nodes {
		if n.Name != in.Node {
			continue
		}
		if v, ok := n.Annotations[v1alpha1.AnnotationTunnelAddress]; ok {
			if a, err := parseAddr(v); err == nil {
				st.Tunnel.Address = a
			} else {
				notef("node %s has an invalid %s %q: tunl0 gets no address", n.Name, v1alpha1.AnnotationTunnelAddress, v)
			}
		}
	}
	for _, r := range st.Routes {
		if r.Kind == Tunnel {
			st.Tunnel.Peers = append(st.Tunnel.Peers, Peer{CIDR: r.Dst, NodeIP: r.Via})
		}
	}

	slices.SortFunc(st.Firewall.NodeIPs, netip.Addr.Compare)
	st.Firewall.NodeIPs = slices.Compact(st.Firewall.NodeIPs)
	st.Tunnel.NodeIPs = slices.Clone(st.Firewall.NodeIPs)
	for _, s := range []*[]netip.Prefix{&st.Firewall.PoolCIDRs, &st.Firewall.NATPoolCIDRs} {
		slices.SortFunc(*s, ComparePrefix)
		*s = slices.Compact(*s)
	}
	var helperNotes []string
	st.Firewall.Helpers, helperNotes = helpers(in.Services)
	st.Notes = append(st.Notes, helperNotes...)
	slices.Sort(st.Notes)
	return st
}

// ComparePrefix orders prefixes by address, then by length.
func ComparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// parseAddr reads the tunnel address annotation: an address, tolerated as
// a /32 too.
func parseAddr(v string) (netip.Addr, error) {
	// Bits() == 32 alone would take an IPv6 "::/32", which the tunnel
	// refuses, and with it the node's whole desired state.
	if p, err := netip.ParsePrefix(v); err == nil && p.Bits() == 32 && p.Addr().Is4() {
		return p.Addr(), nil
	}
	a, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 address", v)
	}
	return a, nil
}
