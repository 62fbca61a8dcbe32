package tunnel

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nldump"
)

// Both datapaths own tunl0's IPv4 addresses, MTU and state the same way.

// minMTU is IPv4's minimum; an MTU below it is a configuration error, not a
// small tunnel.
const minMTU = 68

func validateCommon(cfg desired.TunnelConfig) error {
	if cfg.MTU < minMTU || cfg.MTU > 65535 {
		return fmt.Errorf("tunnel MTU %d is out of range: set it to the underlay MTU minus 20 (1480 for a 1500-byte underlay)", cfg.MTU)
	}
	if cfg.Address.IsValid() && !cfg.Address.Is4() {
		return fmt.Errorf("tunnel address %s is not IPv4: calyx tunnels IPv4 only", cfg.Address)
	}
	return nil
}

// addrChanges says which addresses make have equal to exactly want/32
// (nothing when want is invalid). Deletions come first so that a changed
// tunnel address never leaves two addresses on tunl0.
func addrChanges(have []netip.Prefix, want netip.Addr) (add, del []netip.Prefix) {
	var target netip.Prefix
	if want.IsValid() {
		target = netip.PrefixFrom(want, 32)
	}
	found := false
	for _, p := range have {
		if p == target {
			found = true
			continue
		}
		del = append(del, p)
	}
	if target.IsValid() && !found {
		add = append(add, target)
	}
	slices.SortFunc(del, comparePrefix)
	return add, del
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// syncLink gives link exactly cfg's address, cfg's MTU, and brings it up.
func syncLink(h *netlink.Handle, log *slog.Logger, link netlink.Link, cfg desired.TunnelConfig) error {
	name := link.Attrs().Name
	if link.Attrs().MTU != cfg.MTU {
		if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("setting the MTU of %s to %d: %w", name, cfg.MTU, err)
		}
		log.Info("set tunnel MTU", "device", name, "mtu", cfg.MTU)
	}

	addrs, err := nldump.Retry(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("listing the addresses of %s: %w", name, err)
	}
	var have []netip.Prefix
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			have = append(have, p)
		}
	}
	add, del := addrChanges(have, cfg.Address)
	for _, p := range del {
		if err := h.AddrDel(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return fmt.Errorf("removing address %s from %s: %w", p, name, err)
		}
		log.Info("removed tunnel address", "device", name, "address", p)
	}
	for _, p := range add {
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, name, err)
		}
		log.Info("added tunnel address", "device", name, "address", p)
	}

	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("bringing %s up: %w", name, err)
		}
		log.Info("brought tunnel device up", "device", name)
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
