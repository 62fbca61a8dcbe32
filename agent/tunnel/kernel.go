package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
)

// Kernel is tunl0 as the kernel's ipip device. The kernel encapsulates and
// decapsulates; calyx only gives the device its address, MTU and state.
// Peers and NodeIPs are not used here: the agent's routes carry the peers,
// and its nftables rules drop IPIP from addresses that are not nodes.
type Kernel struct {
	mu     sync.Mutex
	h      *netlink.Handle
	log    *slog.Logger
	swept  bool
	closed bool
}

var _ Datapath = (*Kernel)(nil)

func newKernel(h *netlink.Handle, opts Options) *Kernel {
	return &Kernel{h: h, log: opts.Logger.With("datapath", ModeKernel)}
}

// createIPIP makes sure tunl0 exists as an ipip device. Loading the ipip
// module (which creating the first ipip device does) creates the module's
// fallback device, named tunl0, in every namespace: that one is adopted.
// It is what Calico runs on: "ipip any remote any local any ttl inherit
// nopmtudisc", the settings a device created here gets too (TTL 0 means
// inherit, PMtuDisc 0 copies DF from the inner packet) and that the eBPF
// datapath copies.
func createIPIP(h *netlink.Handle) error {
	link, err := h.LinkByName(DeviceName)
	if err == nil {
		if link.Type() != "ipip" {
			return fmt.Errorf("%s exists as a %s device, not ipip", DeviceName, link.Type())
		}
		return nil
	}
	err = h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceName}, Ttl: 0, PMtuDisc: 0})
	if err == nil || errors.Is(err, unix.EEXIST) {
		return nil
	}
	return fmt.Errorf("the kernel cannot create an ipip device: %w (no ipip module?)", err)
}

// Mode implements Datapath.
func (k *Kernel) Mode() Mode { return ModeKernel }

// Set implements Datapath.
func (k *Kernel) Set(cfg desired.TunnelConfig) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errors.New("tunnel datapath is closed: create a new one with tunnel.New")
	}
	if err := validateCommon(cfg); err != nil {
		return err
	}
	if err := createIPIP(k.h); err != nil {
		return err
	}
	link, err := k.h.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", DeviceName, err)
	}
	if err := syncLink(k.h, k.log, link, cfg); err != nil {
		return err
	}
	if !k.swept {
		if err := sweepDecap(k.h, k.log, 0); err != nil {
			return err
		}
		k.swept = true
	}
	return nil
}

// Stats implements Datapath with the device's own counters.
func (k *Kernel) Stats() (Stats, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return Stats{}, errors.New("tunnel datapath is closed: create a new one with tunnel.New")
	}
	link, err := k.h.LinkByName(DeviceName)
	if err != nil {
		return Stats{}, fmt.Errorf("looking up %s: %w", DeviceName, err)
	}
	return kernelStats(link.Attrs().Statistics), nil
}

func kernelStats(s *netlink.LinkStatistics) Stats {
	if s == nil {
		return Stats{}
	}
	return Stats{
		TxPackets: s.TxPackets,
		TxBytes:   s.TxBytes,
		RxPackets: s.RxPackets,
		RxBytes:   s.RxBytes,
		TxDrops:   s.TxDropped + s.TxErrors,
		RxDrops:   s.RxDropped,
		RxErrors:  s.RxErrors,
	}
}

// Close implements Datapath: tunl0 stays as it is.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.closed {
		k.closed = true
		k.h.Close()
	}
	return nil
}
