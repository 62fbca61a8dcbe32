package desired

import "net/netip"

// The tunnel's desired state lives here, not in agent/tunnel, so that the
// pure computation and calyxctl never link the datapath (netlink,
// cilium/ebpf): the datapath takes this state, it does not define it.

// TunnelDevice is the device the routes to remote blocks name, whichever
// datapath is behind it.
const TunnelDevice = "tunl0"

// Peer is a remote block and the node whose underlay address carries it.
type Peer struct {
	CIDR   netip.Prefix
	NodeIP netip.Addr
}

// TunnelConfig is the whole desired state of the tunnel on this node. The
// datapath's Set takes all of it every time; it is the output of Compute,
// never a delta.
type TunnelConfig struct {
	// Address is tunl0's address (a /32 from the node's block); invalid
	// means none yet.
	Address netip.Addr
	// MTU of tunl0: the underlay MTU minus the 20-byte outer header.
	MTU int
	// UnderlayIface is the node's NIC (ens160 in the lab) and UnderlayIP its
	// address: the outer source of encapsulated packets.
	UnderlayIface string
	UnderlayIP    netip.Addr
	// Peers are the remote blocks reached through tunl0, with their nodes.
	Peers []Peer
	// NodeIPs are the cluster's node addresses: IPIP is accepted only from
	// these.
	NodeIPs []netip.Addr
}
