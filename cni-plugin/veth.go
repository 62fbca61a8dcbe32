package cniplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The pod's side of the wiring is the same on every node: a /32 and a
// gateway that exists nowhere but is answered by proxy ARP on the host
// veth, so the pod never needs to know the node's addresses.
var (
	// GatewayIP is the pod's next hop.
	GatewayIP = net.IPv4(169, 254, 1, 1).To4()
	// HostMAC is the host veth's MAC on every pod; the pod's neighbour
	// entry for GatewayIP resolves to it.
	HostMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
)

var (
	hostRoute32 = net.CIDRMask(32, 32)
	defaultDst  = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	gatewayDst  = &net.IPNet{IP: GatewayIP, Mask: hostRoute32}
)

// errIfNameTaken says CNI_IFNAME already names an interface in the pod that
// is not this attachment's veth.
var errIfNameTaken = errors.New("interface name taken")

// Wiring is one pod's veth pair as it should be.
type Wiring struct {
	HostName    string // host side, in the namespace the plugin runs in
	ContName    string // CNI_IFNAME, in the pod
	ContainerID string // recorded as the host side's alias; DEL checks it
	MTU         int
	IP          net.IP // the pod's IPv4 address

	hostIndex, contIndex int // the ends' ifindexes, once Prepare has run
}

// Links are the two ends as built.
type Links struct {
	HostMAC string
	ContMAC string
}

// checkContainerSide returns errIfNameTaken when ContName exists in the pod
// and is not the peer of this attachment's host veth, so that ADD can fail
// before it allocates anything.
func (w *Wiring) checkContainerSide(netns ns.NetNS) error {
	host, _ := netlinksafe.LinkByName(w.HostName)
	return netns.Do(func(ns.NetNS) error {
		cont, err := netlinksafe.LinkByName(w.ContName)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("looking up %s in the pod: %w", w.ContName, err)
		}
		if host != nil && w.isPair(host, cont) {
			return nil
		}
		return fmt.Errorf("%w: %s already exists in the pod's netns %s (type %s)", errIfNameTaken, w.ContName, netns.Path(), cont.Type())
	})
}

// isPair reports whether host (in the plugin's namespace) and cont (in the
// pod) are the two ends of this attachment's veth. Each end's IFLA_LINK is
// its peer's index, so both directions must agree.
func (w *Wiring) isPair(host, cont netlink.Link) bool {
	_, hv := host.(*netlink.Veth)
	_, cv := cont.(*netlink.Veth)
	return hv && cv &&
		host.Attrs().Alias == w.ContainerID &&
		host.Attrs().ParentIndex == cont.Attrs().Index &&
		cont.Attrs().ParentIndex == host.Attrs().Index
}

// Setup builds or repairs the pair. It is idempotent: run again for the
// same container it converges on the same single pair; a host veth of the
// same name left by another container (an earlier sandbox of the same pod)
// is replaced. On error the caller runs Teardown.
func (w *Wiring) Setup(netns ns.NetNS) (Links, error) {
	links, err := w.Prepare(netns)
	if err != nil {
		return links, err
	}
	return links, w.Address(netns)
}

// Prepare is the part of Setup that needs no address: the pair, its
// sysctls, both ends up and the pod's routes. cmdAdd runs it while the
// IPAM allocates, which takes longer than all of it (an API write).
func (w *Wiring) Prepare(netns ns.NetNS) (Links, error) {
	var links Links
	host, err := w.ensurePair(netns)
	if err != nil {
		return links, err
	}
	links.HostMAC = host.Attrs().HardwareAddr.String()
	w.hostIndex = host.Attrs().Index

	// Sysctls before the link comes up: proxy_arp answers the pod's ARP
	// for GatewayIP with HostMAC, proxy_delay=0 answers at once instead of
	// after up to 0.8 s, forwarding lets the node route what arrives on
	// this interface. IPv6 goes off so that the host end keeps no address
	// at all, not even a link-local one.
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/ipv4/conf/" + w.HostName + "/proxy_arp", "1"},
		{"/proc/sys/net/ipv4/neigh/" + w.HostName + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv4/conf/" + w.HostName + "/forwarding", "1"},
	} {
		if err := writeSysctl(s.path, s.value); err != nil {
			return links, err
		}
	}
	if err := writeSysctl("/proc/sys/net/ipv6/conf/"+w.HostName+"/disable_ipv6", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return links, err // ErrNotExist: IPv6 is off in this kernel anyway
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(host); err != nil {
			return links, fmt.Errorf("bringing %s up: %w", w.HostName, err)
		}
	}

	err = netns.Do(func(ns.NetNS) error {
		cont, err := netlinksafe.LinkByName(w.ContName)
		if err != nil {
			return fmt.Errorf("finding %s in the pod after creating it: %w", w.ContName, err)
		}
		links.ContMAC = cont.Attrs().HardwareAddr.String()
		w.contIndex = cont.Attrs().Index
		return w.configureContainer(cont)
	})
	return links, err
}

// Address gives the pod its /32 (w.IP) and routes it to the host end;
// Prepare must have run.
func (w *Wiring) Address(netns ns.NetNS) error {
	err := netns.Do(func(ns.NetNS) error {
		return w.addressContainer()
	})
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: w.hostIndex,
		Dst:       &net.IPNet{IP: w.IP, Mask: hostRoute32},
		Scope:     netlink.SCOPE_LINK,
	}); err != nil {
		return fmt.Errorf("adding the host route %s/32 dev %s: %w", w.IP, w.HostName, err)
	}
	return nil
}

// ensurePair returns the host end of a pair whose peer is ContName in the
// pod, creating it unless this attachment's pair already exists.
func (w *Wiring) ensurePair(netns ns.NetNS) (netlink.Link, error) {
	host, err := netlinksafe.LinkByName(w.HostName)
	switch {
	case isNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("looking up %s: %w", w.HostName, err)
	default:
		var cont netlink.Link
		_ = netns.Do(func(ns.NetNS) error {
			cont, _ = netlinksafe.LinkByName(w.ContName)
			return nil
		})
		if cont != nil && w.isPair(host, cont) {
			if host.Attrs().MTU != w.MTU {
				if err := netlink.LinkSetMTU(host, w.MTU); err != nil {
					return nil, fmt.Errorf("setting the MTU of %s to %d: %w", w.HostName, w.MTU, err)
				}
			}
			return host, nil
		}
		slog.Warn("replacing a host veth left by another container", "link", w.HostName,
			"owner", host.Attrs().Alias, "container", w.ContainerID)
		if err := netlink.LinkDel(host); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("deleting the stale %s: %w", w.HostName, err)
		}
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = w.HostName
	attrs.MTU = w.MTU
	attrs.HardwareAddr = HostMAC
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      w.ContName,
		PeerNamespace: netlink.NsFd(int(netns.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("%w: creating the veth pair %s/%s: %s or %s already exists", errIfNameTaken, w.HostName, w.ContName, w.HostName, w.ContName)
		}
		return nil, fmt.Errorf("creating the veth pair %s (host) / %s (pod): %w", w.HostName, w.ContName, err)
	}
	host, err = netlinksafe.LinkByName(w.HostName)
	if err != nil {
		return nil, fmt.Errorf("finding %s after creating it: %w", w.HostName, err)
	}
	// The alias names the owner, so that a DEL for an older sandbox of the
	// same pod never removes the current sandbox's veth. (The kernel
	// ignores an alias in the request that creates a link.)
	if err := netlink.LinkSetAlias(host, w.ContainerID); err != nil {
		return nil, fmt.Errorf("labelling %s with its container ID: %w", w.HostName, err)
	}
	host.Attrs().Alias = w.ContainerID
	return host, nil
}

// configureContainer runs in the pod: link up, the link route to
// GatewayIP and the default route through it. The kernel takes both
// routes before the link has an address.
func (w *Wiring) configureContainer(cont netlink.Link) error {
	if cont.Attrs().MTU != w.MTU {
		if err := netlink.LinkSetMTU(cont, w.MTU); err != nil {
			return fmt.Errorf("setting the MTU of %s to %d: %w", w.ContName, w.MTU, err)
		}
	}
	if cont.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(cont); err != nil {
			return fmt.Errorf("bringing %s up in the pod: %w", w.ContName, err)
		}
	}
	idx := cont.Attrs().Index
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: gatewayDst, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("adding the pod route %s dev %s scope link: %w", GatewayIP, w.ContName, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: defaultDst, Gw: GatewayIP}); err != nil {
		return fmt.Errorf("adding the pod route default via %s dev %s: %w", GatewayIP, w.ContName, err)
	}
	return nil
}

// addressContainer runs in the pod: exactly one IPv4 address, the /32.
func (w *Wiring) addressContainer() error {
	// The address calls need only the index: no lookup on the path that
	// waits for the IPAM.
	cont := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: w.contIndex, Name: w.ContName}}
	want := &net.IPNet{IP: w.IP, Mask: hostRoute32}
	addrs, err := netlinksafe.AddrList(cont, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the addresses of %s in the pod: %w", w.ContName, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() != want.String() {
			if err := netlink.AddrDel(cont, &a); err != nil {
				return fmt.Errorf("removing the stale address %s from %s in the pod: %w", a.IPNet, w.ContName, err)
			}
		}
	}
	if err := netlink.AddrReplace(cont, &netlink.Addr{IPNet: want}); err != nil {
		return fmt.Errorf("adding %s to %s in the pod: %w", want, w.ContName, err)
	}
	return nil
}

// isNetNS says whether path is a network namespace. A DEL whose CNI_NETNS
// is anything else (a stale path, a file, another kind of namespace) has
// no pod end to find there: the host end is removed by name, which takes
// the pair with it, and the DEL succeeds instead of failing forever.
func isNetNS(path string) bool {
	n, err := ns.GetNS(path)
	if err != nil {
		return false
	}
	defer n.Close()
	t, err := nsType(n)
	return err == nil && t == unix.CLONE_NEWNET
}

// nsType is the kind of namespace n is (CLONE_NEWNET, CLONE_NEWNS, …):
// ns.GetNS accepts any namespace file.
func nsType(n ns.NetNS) (int, error) {
	return unix.IoctlRetInt(int(n.Fd()), unix.NS_GET_NSTYPE)
}

// Teardown removes the pair, best effort and repeatable: a missing netns,
// a missing interface or a host veth that now belongs to another container
// are all fine. netnsPath may be empty.
func (w *Wiring) Teardown(netnsPath string) error {
	var errs []error
	if netnsPath != "" && isNetNS(netnsPath) {
		err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
			cont, err := netlinksafe.LinkByName(w.ContName)
			if isNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, ok := cont.(*netlink.Veth); !ok {
				return nil // not ours: calyx only ever puts a veth there
			}
			if err := netlink.LinkDel(cont); err != nil && !isNotFound(err) {
				return fmt.Errorf("deleting %s in the pod: %w", w.ContName, err)
			}
			return nil
		})
		var notExist ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &notExist) {
			errs = append(errs, fmt.Errorf("removing %s from netns %s: %w", w.ContName, netnsPath, err))
		}
	}

	// Deleting the pod end removed the host end too, unless the pod's netns
	// was already gone with a leak or the pair was half-built: remove the
	// host end by its name, if it is ours.
	if err := w.RemoveHost(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RemoveHost deletes the host end, and with it the pod end, unless it
// belongs to another container: its alias names the owner (empty only
// while ensurePair is between creating and labelling it).
func (w *Wiring) RemoveHost() error {
	host, err := netlinksafe.LinkByName(w.HostName)
	switch {
	case isNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("looking up %s: %w", w.HostName, err)
	}
	_, isVeth := host.(*netlink.Veth)
	owner := host.Attrs().Alias
	if !isVeth || (owner != w.ContainerID && owner != "") {
		slog.Info("leaving a host interface that belongs to another container", "link", w.HostName, "owner", owner, "container", w.ContainerID)
		return nil
	}
	if err := netlink.LinkDel(host); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting %s: %w", w.HostName, err)
	}
	return nil
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.TrimPrefix(path, "/proc/sys/"), value, err)
	}
	return nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(filepath.Clean(path))
	return strings.TrimSpace(string(b)), err
}

// isNotFound reports a link that is not there, by lookup (LinkNotFound)
// or by a delete racing the kernel's own removal (ENODEV).
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
