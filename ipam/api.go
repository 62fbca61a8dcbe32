package ipam

import (
	"context"
	"net/netip"
)

// Attrs describe who an address is for; they are recorded in the block.
type Attrs struct {
	Namespace   string
	Pod         string
	ContainerID string
}

// Request is what one pod's allocation asks for beyond the allocator's
// Options: the pools of its calyx.dev/ipv4pools annotation, or the address
// of its calyx.dev/ipAddrs.
type Request struct {
	// Pools replace Options.Pools: IPPool names or CIDRs, tried in order.
	Pools []string
	// Addr, when valid, is the one address to allocate; Pools are then
	// not consulted.
	Addr netip.Addr
}

// Assignment is an allocated address and the block it came from.
type Assignment struct {
	Addr     netip.Addr
	Block    netip.Prefix
	Borrowed bool // from another node's block: route it as a /32
}

// TunnelHandle is the handle of a node's tunl0 address.
func TunnelHandle(node string) string { return "tunnel-" + node }

// Allocator is what the CNI IPAM plugin and the agent need from IPAM.
type Allocator interface {
	// AutoAssign allocates an address for handle on node. Calling it again
	// with the same handle returns the same address.
	AutoAssign(ctx context.Context, node, handle string, attrs Attrs) (Assignment, error)
	// AssignTunnelAddress allocates, or returns the existing, tunl0 address
	// of node, from one of the node's blocks.
	AssignTunnelAddress(ctx context.Context, node string) (Assignment, error)
	// ReleaseByHandle frees the handle's addresses; releasing a handle that
	// holds none is not an error.
	ReleaseByHandle(ctx context.Context, handle string) ([]netip.Addr, error)
}
