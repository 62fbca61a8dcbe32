// Package tunnel owns tunl0 and the IP-in-IP datapath behind it: the
// kernel's ipip device where the kernel has the module, else tc BPF programs
// that encapsulate and decapsulate in the kernel's wire format.
//
// New picks the datapath (auto, kernel or ebpf) in the node's network
// namespace; the agent then calls Set with the whole desired.TunnelConfig
// (computed by agent/desired) on every change and resync, and adds the
// routes "<block> via <nodeIP> dev tunl0 onlink" itself. Close leaves everything in place: a restarted agent
// adopts tunl0, the programs and the map contents without dropping a packet.
// See kernel.go and ebpf.go for the two datapaths, bpf/calyx.c for the
// programs.
package tunnel

import (
	"fmt"

	"github.com/calyx-net/calyx/agent/desired"
)

// Mode is the datapath behind tunl0.
type Mode string

const (
	// ModeKernel is the kernel's ipip device.
	ModeKernel Mode = "kernel"
	// ModeEBPF is tc BPF programs on tunl0 and the underlay NIC.
	ModeEBPF Mode = "ebpf"
)

// DeviceName is tunl0, as the datapaths name it. The routes name the same
// device through desired.TunnelDevice; this is that constant, not a copy.
const DeviceName = desired.TunnelDevice

// Stats are the datapath's counters since its programs were loaded.
type Stats struct {
	TxPackets, TxBytes uint64 // encapsulated and sent
	RxPackets, RxBytes uint64 // decapsulated and delivered
	TxDrops            uint64 // no route to a peer, or a failed encapsulation
	RxDrops            uint64 // IPIP from an address that is not a node
	// RxErrors are IPIP packets from a node that could not be delivered:
	// outer fragments, a bad outer header, or a congestion mark on a
	// packet that cannot carry it (eBPF; the kernel device's rx_errors).
	RxErrors uint64
	// Path says which of tunl0's device passes the eBPF programs skip; see
	// SetPath.
	Path Path
}

// Path is the way the eBPF programs carry packets past tunl0. Its values
// are the programs' config.fast.
type Path uint8

const (
	// PathObservable: every packet crosses tunl0 both ways, as with the
	// kernel's ipip device, so that a capture on tunl0 sees it.
	PathObservable Path = 0
	// PathFast: no packet crosses tunl0; nothing captures there.
	PathFast Path = 1
	// PathFastOut: leaving packets skip tunl0, arriving ones cross it,
	// because a strict rp_filter on the NIC would drop them there (their
	// sources are routed via tunl0).
	PathFastOut Path = 2
)

func (p Path) String() string {
	switch p {
	case PathObservable:
		return "observable"
	case PathFast:
		return "fast"
	case PathFastOut:
		return "fast out only"
	}
	return fmt.Sprintf("path(%d)", uint8(p))
}

// Datapath is one implementation of tunl0.
type Datapath interface {
	// Mode says which datapath this is.
	Mode() Mode
	// Set makes tunl0 and the datapath match cfg: it creates or adopts the
	// device, its address, MTU and state, and (eBPF) the programs and map
	// contents. It is idempotent, and changes only what differs.
	Set(cfg desired.TunnelConfig) error
	// Stats reads the counters.
	Stats() (Stats, error)
	// Close releases the agent's handles but leaves tunl0, its programs
	// and maps in place, so traffic flows while the agent restarts.
	Close() error
}
