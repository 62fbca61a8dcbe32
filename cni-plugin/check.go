package cniplugin

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check compares the pair as it is with how Setup leaves it and reports
// every difference, each naming what is missing or wrong and where.
func (w *Wiring) Check(netns ns.NetNS, contMAC string) error {
	var errs []error
	host, err := netlinksafe.LinkByName(w.HostName)
	if err != nil {
		return fmt.Errorf("the host veth %s is missing (%v): DEL and ADD the pod to rewire it", w.HostName, err)
	}
	errs = append(errs, w.checkHost(host)...)

	err = netns.Do(func(ns.NetNS) error {
		cont, err := netlinksafe.LinkByName(w.ContName)
		if err != nil {
			return fmt.Errorf("the pod interface %s is missing in netns %s (%v)", w.ContName, netns.Path(), err)
		}
		if !w.isPair(host, cont) {
			errs = append(errs, fmt.Errorf("the pod interface %s is not the peer of the host veth %s (or %s's alias is not container %s)",
				w.ContName, w.HostName, w.HostName, w.ContainerID))
		}
		if contMAC != "" && cont.Attrs().HardwareAddr.String() != contMAC {
			errs = append(errs, fmt.Errorf("the pod interface %s has MAC %s, the ADD result says %s", w.ContName, cont.Attrs().HardwareAddr, contMAC))
		}
		errs = append(errs, w.checkContainer(cont)...)
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod %s/%s is not wired as calyx left it: %w; DEL and ADD the pod to rewire it",
			w.HostName, w.ContName, errors.Join(errs...))
	}
	return nil
}

func (w *Wiring) checkHost(host netlink.Link) []error {
	var errs []error
	a := host.Attrs()
	if _, ok := host.(*netlink.Veth); !ok {
		errs = append(errs, fmt.Errorf("host interface %s is a %s, not a veth", w.HostName, host.Type()))
	}
	if a.HardwareAddr.String() != HostMAC.String() {
		errs = append(errs, fmt.Errorf("host veth %s has MAC %s, want %s", w.HostName, a.HardwareAddr, HostMAC))
	}
	if a.Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("host veth %s is down", w.HostName))
	}
	if a.MTU != w.MTU {
		errs = append(errs, fmt.Errorf("host veth %s has MTU %d, want %d", w.HostName, a.MTU, w.MTU))
	}
	for _, s := range []struct{ path, want string }{
		{"/proc/sys/net/ipv4/conf/" + w.HostName + "/proxy_arp", "1"},
		{"/proc/sys/net/ipv4/neigh/" + w.HostName + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv4/conf/" + w.HostName + "/forwarding", "1"},
	} {
		if got, err := readSysctl(s.path); err != nil || got != s.want {
			errs = append(errs, fmt.Errorf("%s is %q, want %q (%v)", s.path, got, s.want, err))
		}
	}
	routes, err := netlinksafe.RouteList(host, netlink.FAMILY_V4)
	if err != nil {
		return append(errs, fmt.Errorf("listing the routes of %s: %w", w.HostName, err))
	}
	if !hasRoute(routes, &net.IPNet{IP: w.IP, Mask: hostRoute32}, nil, netlink.SCOPE_LINK) {
		errs = append(errs, fmt.Errorf("the host route %s/32 dev %s scope link is missing", w.IP, w.HostName))
	}
	return errs
}

func (w *Wiring) checkContainer(cont netlink.Link) []error {
	var errs []error
	if cont.Attrs().Flags&net.FlagUp == 0 {
		errs = append(errs, fmt.Errorf("the pod interface %s is down", w.ContName))
	}
	if cont.Attrs().MTU != w.MTU {
		errs = append(errs, fmt.Errorf("the pod interface %s has MTU %d, want %d", w.ContName, cont.Attrs().MTU, w.MTU))
	}
	addrs, err := netlinksafe.AddrList(cont, netlink.FAMILY_V4)
	if err != nil {
		return append(errs, fmt.Errorf("listing the addresses of %s in the pod: %w", w.ContName, err))
	}
	want := (&net.IPNet{IP: w.IP, Mask: hostRoute32}).String()
	found := false
	for _, a := range addrs {
		found = found || a.IPNet.String() == want
	}
	if !found {
		errs = append(errs, fmt.Errorf("the pod address %s is missing from %s", want, w.ContName))
	}
	routes, err := netlinksafe.RouteList(cont, netlink.FAMILY_V4)
	if err != nil {
		return append(errs, fmt.Errorf("listing the routes of %s in the pod: %w", w.ContName, err))
	}
	if !hasRoute(routes, gatewayDst, nil, netlink.SCOPE_LINK) {
		errs = append(errs, fmt.Errorf("the pod route %s dev %s scope link is missing", GatewayIP, w.ContName))
	}
	if !hasRoute(routes, defaultDst, GatewayIP, netlink.SCOPE_UNIVERSE) {
		errs = append(errs, fmt.Errorf("the pod's default route (default via %s dev %s) is missing", GatewayIP, w.ContName))
	}
	return errs
}

func hasRoute(routes []netlink.Route, dst *net.IPNet, gw net.IP, scope netlink.Scope) bool {
	for _, r := range routes {
		d := r.Dst
		if d == nil {
			d = defaultDst // netlink reports the default route with a nil Dst
		}
		if d.String() == dst.String() && r.Gw.Equal(gw) && r.Scope == scope && r.Table == unix.RT_TABLE_MAIN {
			return true
		}
	}
	return false
}
