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

import "github.com/calyx-net/calyx/agent/desired"

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
	// Fast says the eBPF programs skip tunl0's device passes (and its
	// capture point) because nothing captures on tunl0; see SetObserved.
	Fast bool
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
