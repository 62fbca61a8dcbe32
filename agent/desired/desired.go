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

// Compute is the desired state of in.Node. It reads the nodes and pools,
// routes every block and borrowed address, and derives tunl0's and the
// firewall's state from those; each step is a function of its own.
func Compute(in Input) State {
	nodes := readNodes(in.Nodes, in.Node)
	pools := readPools(in.Pools)
	r := newRouter(nodes, in.Node, in.Local.Iface)
	routes, routeNotes := blockRoutes(in.Blocks, in.Node, pools, r)
	tun, tunNotes := tunnelConfig(in, nodes, routes)
	fw, fwNotes := firewallSets(nodes, pools, in.Services)
	tun.NodeIPs = slices.Clone(fw.NodeIPs)
	notes := slices.Concat(nodes.notes, pools.notes, routeNotes, tunNotes, fwNotes)
	slices.Sort(notes)
	return State{Routes: routes, Tunnel: tun, Firewall: fw, Notes: notes}
}

// nodeAddr is a node's underlay address as its agent announced it.
type nodeAddr struct {
	ip     netip.Addr
	subnet netip.Prefix
}

// nodeFacts are the nodes as the desired state sees them.
type nodeFacts struct {
	// addrs are the valid announced addresses, by node; exists has every
	// node, with an address or not.
	addrs  map[string]nodeAddr
	exists map[string]bool
	// ips are the addresses in the order of the nodes.
	ips   []netip.Addr
	notes []string
}

// readNodes reads each node's underlay address annotation. self is the
// node the state is for: its missing address is expected at start-up, and
// not noted.
func readNodes(nodes []*corev1.Node, self string) nodeFacts {
	f := nodeFacts{addrs: map[string]nodeAddr{}, exists: map[string]bool{}}
	for _, n := range nodes {
		f.exists[n.Name] = true
		v, ok := n.Annotations[v1alpha1.AnnotationIPv4Address]
		if !ok {
			if n.Name != self {
				f.notes = append(f.notes, fmt.Sprintf("node %s has no %s yet (its agent has not started): its blocks are not routed", n.Name, v1alpha1.AnnotationIPv4Address))
			}
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() {
			f.notes = append(f.notes, fmt.Sprintf("node %s has an invalid %s %q: its blocks are not routed", n.Name, v1alpha1.AnnotationIPv4Address, v))
			continue
		}
		f.addrs[n.Name] = nodeAddr{ip: p.Addr(), subnet: p.Masked()}
		f.ips = append(f.ips, p.Addr())
	}
	return f
}

// knownPool is what routing needs of an IPPool.
type knownPool struct {
	cidr netip.Prefix
	mode v1alpha1.IPIPMode
}

// poolFacts are the valid pools, by name, and the ranges the firewall
// sets hold (in the order of the pools).
type poolFacts struct {
	byName          map[string]knownPool
	cidrs, natCIDRs []netip.Prefix
	notes           []string
}

func readPools(pools []*v1alpha1.IPPool) poolFacts {
	f := poolFacts{byName: map[string]knownPool{}}
	for _, p := range pools {
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			f.notes = append(f.notes, fmt.Sprintf("pool %s has an invalid cidr %q: ignored", p.Name, p.Spec.CIDR))
			continue
		}
		cidr = cidr.Masked()
		mode := p.Spec.IPIPMode
		if mode == "" {
			mode = v1alpha1.IPIPModeAlways
		}
		f.byName[p.Name] = knownPool{cidr: cidr, mode: mode}
		f.cidrs = append(f.cidrs, cidr)
		if p.Spec.NATOutgoing {
			f.natCIDRs = append(f.natCIDRs, cidr)
		}
	}
	return f
}

// modeOf is the IPIP mode of block b (of range cidr): its pool's, else
// that of a pool holding it.
func (f poolFacts) modeOf(b *v1alpha1.IPAMBlock, cidr netip.Prefix) v1alpha1.IPIPMode {
	if p, ok := f.byName[b.Spec.Pool]; ok {
		return p.mode
	}
	for _, p := range f.byName {
		if p.cidr.Contains(cidr.Addr()) {
			return p.mode
		}
	}
	// The pool is gone but its addresses may still be in use: keep them
	// reachable the way that works across any underlay.
	return v1alpha1.IPIPModeAlways
}

// router decides how this node reaches a destination on another node.
type router struct {
	nodes     nodeFacts
	self      nodeAddr
	selfKnown bool
	iface     string
}

func newRouter(nodes nodeFacts, self, iface string) router {
	r := router{nodes: nodes, iface: iface}
	r.self, r.selfKnown = nodes.addrs[self]
	return r
}

// route is how dst on node reaches it from here, under the pool's mode;
// when it cannot be routed, ok is false and note says why. what names dst
// in the note.
func (r router) route(dst netip.Prefix, node string, mode v1alpha1.IPIPMode, what string) (rt Route, ok bool, note string) {
	peer, known := r.nodes.addrs[node]
	switch {
	case !known && !r.nodes.exists[node]:
		return Route{}, false, fmt.Sprintf("%s on node %s: there is no such Node (deleted?), not routed", what, node)
	case !known:
		return Route{}, false, fmt.Sprintf("%s on node %s: the node has no address yet, not routed", what, node)
	}
	sameSubnet := r.selfKnown && r.self.subnet.Contains(peer.ip)
	switch {
	case mode == v1alpha1.IPIPModeNever && !sameSubnet:
		return Route{}, false, fmt.Sprintf("%s on node %s: ipipMode Never and %s is not on this node's subnet, so the underlay must route it", what, node, peer.ip)
	case mode == v1alpha1.IPIPModeNever, mode == v1alpha1.IPIPModeCrossSubnet && sameSubnet:
		return Route{Dst: dst, Kind: Direct, Via: peer.ip, Dev: r.iface, Node: node}, true, ""
	default:
		return Route{Dst: dst, Kind: Tunnel, Via: peer.ip, Dev: TunnelDevice, Node: node}, true, ""
	}
}

// blockRoutes are the routes to every block (a blackhole for self's own)
// and to every address borrowed from a block by another node, sorted by
// destination.
func blockRoutes(blocks []*v1alpha1.IPAMBlock, self string, pools poolFacts, r router) (routes []Route, notes []string) {
	add := func(rt Route, ok bool, note string) {
		if ok {
			routes = append(routes, rt)
		} else {
			notes = append(notes, note)
		}
	}
	for _, b := range blocks {
		cidr, err := netip.ParsePrefix(b.Spec.CIDR)
		if err != nil || !cidr.Addr().Is4() {
			notes = append(notes, fmt.Sprintf("block %s has an invalid cidr %q: ignored", b.Name, b.Spec.CIDR))
			continue
		}
		cidr = cidr.Masked()
		mode := pools.modeOf(b, cidr)
		switch b.Spec.Node {
		case "":
			// Affine to no node: nothing to route to.
		case self:
			routes = append(routes, Route{Dst: cidr, Kind: Blackhole})
		default:
			add(r.route(cidr, b.Spec.Node, mode, "block "+cidr.String()))
		}
		for _, a := range b.Spec.Allocations {
			// A borrowed address lives on another node than its block's;
			// on its own node the CNI plugin's /32 to the pod covers it.
			if a.Node == "" || a.Node == b.Spec.Node || a.Node == self {
				continue
			}
			addr, ok := v1alpha1.AddrAt(cidr, a.Ordinal)
			if !ok {
				notes = append(notes, fmt.Sprintf("block %s has an allocation at ordinal %d, outside the block: ignored", b.Name, a.Ordinal))
				continue
			}
			add(r.route(netip.PrefixFrom(addr, 32), a.Node, mode, "borrowed address "+addr.String()))
		}
	}
	slices.SortFunc(routes, func(a, b Route) int { return ComparePrefix(a.Dst, b.Dst) })
	return routes, notes
}

// tunnelConfig is tunl0's state: the NIC and its MTU less the outer
// header, this node's underlay and tunnel addresses as announced, and a
// peer for every route through the tunnel. NodeIPs are the firewall's.
func tunnelConfig(in Input, nodes nodeFacts, routes []Route) (tc TunnelConfig, notes []string) {
	tc.UnderlayIface = in.Local.Iface
	if in.Local.MTU > 0 {
		tc.MTU = in.Local.MTU - EncapOverhead
	}
	if self, ok := nodes.addrs[in.Node]; ok {
		tc.UnderlayIP = self.ip
	}
	for _, n := range in.Nodes {
		if n.Name != in.Node {
			continue
		}
		if v, ok := n.Annotations[v1alpha1.AnnotationTunnelAddress]; ok {
			if a, err := parseAddr(v); err == nil {
				tc.Address = a
			} else {
				notes = append(notes, fmt.Sprintf("node %s has an invalid %s %q: tunl0 gets no address", n.Name, v1alpha1.AnnotationTunnelAddress, v))
			}
		}
	}
	for _, r := range routes {
		if r.Kind == Tunnel {
			tc.Peers = append(tc.Peers, Peer{CIDR: r.Dst, NodeIP: r.Via})
		}
	}
	return tc, notes
}

// firewallSets are the nftables sets' content, sorted and without
// duplicates, and the conntrack helpers the Services ask for.
func firewallSets(nodes nodeFacts, pools poolFacts, services []*corev1.Service) (fw Firewall, notes []string) {
	fw.NodeIPs = slices.Compact(slices.SortedFunc(slices.Values(nodes.ips), netip.Addr.Compare))
	fw.PoolCIDRs = slices.Compact(slices.SortedFunc(slices.Values(pools.cidrs), ComparePrefix))
	fw.NATPoolCIDRs = slices.Compact(slices.SortedFunc(slices.Values(pools.natCIDRs), ComparePrefix))
	fw.Helpers, notes = helpers(services)
	return fw, notes
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
