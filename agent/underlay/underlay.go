// Package underlay finds the node's underlay: the NIC and IPv4 address
// that other nodes reach it on, the outer source of its IP-in-IP packets.
package underlay

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Underlay is the NIC and its address.
type Underlay struct {
	Iface string
	Index int
	// Addr is the address with its prefix length (10.10.100.208/24).
	Addr netip.Prefix
	MTU  int
}

// Method says how to find the underlay, as the --underlay flag spells it.
type Method struct {
	kind   string // first-found, interface, can-reach
	re     *regexp.Regexp
	target netip.Addr
	text   string
}

func (m Method) String() string { return m.text }

// skipped are interfaces first-found never picks: pods', tunnels', and
// container runtimes' bridges.
var skipped = regexp.MustCompile(`^(lo|cali.*|tunl.*|docker.*|cbr.*|cni.*|veth.*|virbr.*|lxcbr.*|flannel.*|vxlan.*|kube-ipvs.*|br-.*|dummy.*|ifb.*)$`)

// ParseMethod reads `first-found`, `interface=REGEX` (the first interface,
// by index, whose name the regular expression matches, as Calico's
// IP_AUTODETECTION_METHOD does) or `can-reach=IP` (the interface and
// address the node's routes use to reach IP).
func ParseMethod(s string) (Method, error) {
	m := Method{text: s}
	k, v, _ := strings.Cut(s, "=")
	switch k {
	case "first-found":
		m.kind = k
		if v != "" {
			return m, fmt.Errorf("underlay method %q: first-found takes no value", s)
		}
	case "interface":
		re, err := regexp.Compile(v)
		if err != nil || v == "" {
			return m, fmt.Errorf("underlay method %q: not a regular expression (%v); write e.g. interface=ens.*", s, err)
		}
		m.kind, m.re = k, re
	case "can-reach":
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return m, fmt.Errorf("underlay method %q: not an IPv4 address; write e.g. can-reach=10.10.100.1", s)
		}
		m.kind, m.target = k, a
	default:
		return m, fmt.Errorf("underlay method %q: want first-found, interface=REGEX or can-reach=IP", s)
	}
	return m, nil
}

// Detect finds the underlay through h, a handle in the node's namespace.
func Detect(h *netlink.Handle, m Method) (Underlay, error) {
	links, err := h.LinkList()
	if err != nil {
		return Underlay{}, fmt.Errorf("listing interfaces: %w", err)
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	switch m.kind {
	case "first-found", "interface":
		for _, l := range links {
			name := l.Attrs().Name
			if m.kind == "interface" && !m.re.MatchString(name) {
				continue
			}
			if m.kind == "first-found" && (skipped.MatchString(name) || l.Attrs().Flags&net.FlagUp == 0) {
				continue
			}
			if a, ok := firstAddr(h, l, netip.Addr{}); ok {
				return Underlay{Iface: name, Index: l.Attrs().Index, Addr: a, MTU: l.Attrs().MTU}, nil
			}
		}
		return Underlay{}, fmt.Errorf("underlay %s: no interface matches and has an IPv4 address (interfaces: %s); set --underlay to interface=REGEX or can-reach=IP", m, strings.Join(names, ", "))
	case "can-reach":
		rs, err := h.RouteGet(m.target.AsSlice())
		if err != nil || len(rs) == 0 {
			return Underlay{}, fmt.Errorf("underlay %s: no route to %s (%v); add one, or set --underlay to interface=REGEX", m, m.target, err)
		}
		l, err := h.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return Underlay{}, fmt.Errorf("underlay %s: the route's interface: %w", m, err)
		}
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			return Underlay{}, fmt.Errorf("underlay %s: %s is this node's own address; name another node or gateway", m, m.target)
		}
		src, _ := netip.AddrFromSlice(rs[0].Src)
		if a, ok := firstAddr(h, l, src.Unmap()); ok {
			return Underlay{Iface: l.Attrs().Name, Index: l.Attrs().Index, Addr: a, MTU: l.Attrs().MTU}, nil
		}
		return Underlay{}, fmt.Errorf("underlay %s: %s reaches it but has no IPv4 address", m, l.Attrs().Name)
	}
	return Underlay{}, fmt.Errorf("underlay method %q was not parsed with ParseMethod", m.text)
}

// firstAddr is the link's global IPv4 address, preferring want when the
// link has it.
func firstAddr(h *netlink.Handle, l netlink.Link, want netip.Addr) (netip.Prefix, bool) {
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, false
	}
	var found []netip.Prefix
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), bits)
		if p.Addr() == want {
			return p, true
		}
		found = append(found, p)
	}
	if len(found) == 0 {
		return netip.Prefix{}, false
	}
	return found[0], true
}
