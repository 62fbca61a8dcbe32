package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// The lab's network, as in the article: nodes on 10.10.100.0/24 behind a
// router that also leads to "the internet", a namespace with a TEST-NET-3
// address. Every piece lives in namespaces of the lab's own.
const (
	UnderlayNS   = "calyx-lab-underlay"
	InternetNS   = "calyx-lab-internet"
	UnderlayCIDR = "10.10.100.0/24"
	RouterIP     = "10.10.100.1"
	// InternetIP is the address pods reach "the internet" at.
	InternetIP   = "203.0.113.1"
	routerInetIP = "203.0.113.254"
	bridgeName   = "br-underlay"
	NICName      = "ens160"
	underlayMTU  = 1500
)

// setupUnderlay creates the router namespace with the bridge the nodes hang
// on, and the internet namespace behind it.
func setupUnderlay() error {
	for _, n := range []string{UnderlayNS, InternetNS} {
		if err := nsexec.CreateNamed(n); err != nil {
			return err
		}
	}
	err := inNetNS(UnderlayNS, func() error {
		if err := sysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridgeName)
		if err != nil {
			br = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName, MTU: underlayMTU}}
			if err := netlink.LinkAdd(br); err != nil {
				return fmt.Errorf("creating the underlay bridge: %w", err)
			}
		}
		if err := ensureAddr(br, RouterIP+"/24"); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		// The link to the internet namespace.
		if err := ensureVethTo("inet0", "eth0", InternetNS); err != nil {
			return err
		}
		l, err := netlink.LinkByName("inet0")
		if err != nil {
			return err
		}
		if err := ensureAddr(l, routerInetIP+"/24"); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return fmt.Errorf("setting up the underlay router: %w", err)
	}
	return inNetNS(InternetNS, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := ensureAddr(l, InternetIP+"/24"); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		// Only the nodes' network is routed back: pod addresses are not,
		// so a pod reaches the internet only when masqueraded.
		return ensureRoute(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: mustCIDR(UnderlayCIDR), Gw: net.ParseIP(routerInetIP)})
	})
}

// setupNode creates a node namespace wired to the underlay bridge by its
// NIC, with its address, its default route, and IPv4 forwarding on, as
// kubeadm's preflight wants a node.
func setupNode(name string, ip netip.Addr) error {
	// The veth's underlay end is named after the node, so `ip link` in the
	// router shows who is who; names are limited to 15 bytes.
	peer := name
	if len(peer) > 15 {
		peer = peer[len(peer)-15:]
	}
	if err := attachToUnderlay(name, peer, ip); err != nil {
		return err
	}
	return inNetNS(name, func() error {
		l, err := netlink.LinkByName(NICName)
		if err != nil {
			return err
		}
		if err := sysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		// A default route, as real nodes have: proxy ARP on a cali*
		// interface answers for 169.254.1.1 only when the node has a
		// route to it.
		return ensureRoute(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: mustCIDR("0.0.0.0/0"), Gw: net.ParseIP(RouterIP)})
	})
}

// attachToUnderlay creates namespace name (unless it exists) and wires it
// to the underlay bridge: its NIC with address ip/24, the bridge's port
// named peer.
func attachToUnderlay(name, peer string, ip netip.Addr) error {
	if err := nsexec.CreateNamed(name); err != nil {
		return err
	}
	err := inNetNS(UnderlayNS, func() error {
		if err := ensureVethTo(peer, NICName, name); err != nil {
			return err
		}
		br, err := netlink.LinkByName(bridgeName)
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return fmt.Errorf("wiring %s to the underlay: %w", name, err)
	}
	err = inNetNS(name, func() error {
		l, err := netlink.LinkByName(NICName)
		if err != nil {
			return err
		}
		if err := ensureAddr(l, ip.String()+"/24"); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		return fmt.Errorf("addressing %s: %w", name, err)
	}
	return nil
}

// ensureVethTo creates a veth pair whose end `local` stays in the calling
// thread's namespace and whose end `remote` moves to namespace `to`.
func ensureVethTo(local, remote, to string) error {
	if _, err := netlink.LinkByName(local); err == nil {
		return nil
	}
	tmp := "tmp" + local
	if len(tmp) > 15 {
		tmp = tmp[:15]
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: local, MTU: underlayMTU}, PeerName: tmp}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("creating veth %s: %w", local, err)
	}
	p, err := netlink.LinkByName(tmp)
	if err != nil {
		return err
	}
	target, err := openNetNS(to)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netlink.LinkSetNsFd(p, int(target.Fd())); err != nil {
		return fmt.Errorf("moving %s into %s: %w", tmp, to, err)
	}
	return inNetNS(to, func() error {
		l, err := netlink.LinkByName(tmp)
		if err != nil {
			return err
		}
		return netlink.LinkSetName(l, remote)
	})
}

func ensureAddr(l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, errExist) {
		return fmt.Errorf("adding %s to %s: %w", cidr, l.Attrs().Name, err)
	}
	return nil
}

func ensureRoute(r *netlink.Route) error {
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route %s: %w", r, err)
	}
	return nil
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}
