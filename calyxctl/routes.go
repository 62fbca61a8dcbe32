package calyxctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Route comparison states.
const (
	RouteOK        = "ok"
	RouteMissing   = "missing"
	RouteExtra     = "extra"
	RouteDifferent = "different"
)

// RouteRow is one destination: the route the datastore implies and the
// kernel's, as `ip route` prints them.
type RouteRow struct {
	Dst      string `json:"dst"`
	Status   string `json:"status"`
	Expected string `json:"expected,omitempty"`
	Actual   string `json:"actual,omitempty"`
	Node     string `json:"node,omitempty"` // where the destination lives
}

// RouteReport is calyxctl routes' result.
type RouteReport struct {
	Node   string     `json:"node"`
	Iface  string     `json:"iface"`
	Routes []RouteRow `json:"routes"`
	Drift  int        `json:"drift"`
	// Notes are desired.Compute's: objects left out and why.
	Notes []string `json:"notes,omitempty"`
}

// DiffRoutes pairs want and have by destination. Both are compared as
// `ip route` text, so a different gateway, device or kind shows.
func DiffRoutes(want, have []desired.Route) []RouteRow {
	byDst := map[netip.Prefix]*RouteRow{}
	var dsts []netip.Prefix
	row := func(p netip.Prefix) *RouteRow {
		r, ok := byDst[p]
		if !ok {
			r = &RouteRow{Dst: p.String()}
			byDst[p] = r
			dsts = append(dsts, p)
		}
		return r
	}
	for _, w := range want {
		r := row(w.Dst)
		r.Expected, r.Node = w.String(), w.Node
	}
	for _, h := range have {
		r := row(h.Dst)
		if r.Actual != "" {
			r.Actual += "; " // several routes for one destination: both shown
		}
		r.Actual += h.String()
	}
	slices.SortFunc(dsts, desired.ComparePrefix)
	out := []RouteRow{}
	for _, d := range dsts {
		r := byDst[d]
		switch {
		case r.Actual == "":
			r.Status = RouteMissing
		case r.Expected == "":
			r.Status = RouteExtra
		case r.Actual != r.Expected:
			r.Status = RouteDifferent
		default:
			r.Status = RouteOK
		}
		out = append(out, *r)
	}
	return out
}

// Routes compares the calyx routes of the network namespace calyxctl runs
// in with those the datastore implies for node (found from the local
// addresses when empty). It returns the number of differing routes.
func Routes(ctx context.Context, c *Clients, w io.Writer, format, node string) (int, error) {
	s, err := c.Read(ctx, false)
	if err != nil {
		return 0, err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // rtnetlink alone: no xfrm_user needed
	if err != nil {
		return 0, fmt.Errorf("opening netlink: %w (calyxctl routes runs on a node, as root)", err)
	}
	defer h.Close()
	local, err := localAddrs(h)
	if err != nil {
		return 0, err
	}
	if node == "" {
		if node, err = findNode(s, local); err != nil {
			return 0, err
		}
	}
	rep := RouteReport{Node: node}
	var mtu int
	for _, n := range s.Nodes {
		if n.Name != node {
			continue
		}
		if p, err := netip.ParsePrefix(n.Annotations[v1alpha1.AnnotationIPv4Address]); err == nil {
			if l, ok := local[p.Addr()]; ok {
				rep.Iface, mtu = l.Attrs().Name, l.Attrs().MTU
			}
		}
	}
	st := desired.Compute(desired.Input{Pools: s.Pools, Blocks: s.Blocks, Nodes: s.Nodes, Node: node,
		Local: desired.Local{Iface: rep.Iface, MTU: mtu}})
	have, err := routes.New(h).List()
	if err != nil {
		return 0, fmt.Errorf("reading the kernel's calyx routes: %w", err)
	}
	rep.Routes = DiffRoutes(st.Routes, have)
	rep.Notes = st.Notes
	for _, r := range rep.Routes {
		if r.Status != RouteOK {
			rep.Drift++
		}
	}
	return rep.Drift, render(w, format, rep, func(w io.Writer) {
		fmt.Fprintf(w, "node %s\n", node)
		fmt.Fprintln(w, "STATUS\tDESTINATION\tEXPECTED\tKERNEL")
		for _, r := range rep.Routes {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Status, r.Dst, orNone(r.Expected), orNone(r.Actual))
		}
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
		if rep.Drift > 0 {
			fmt.Fprintf(w, "%d route(s) differ from the datastore's: check the agent's log and /readyz on %s\n", rep.Drift, node)
		}
	})
}

// localAddrs maps the IPv4 addresses of this namespace to their links.
func localAddrs(h *netlink.Handle) (map[netip.Addr]netlink.Link, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := map[netip.Addr]netlink.Link{}
	for _, l := range links {
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("listing the addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out[ip.Unmap()] = l
			}
		}
	}
	return out, nil
}

// findNode is the Node whose underlay annotation is a local address.
func findNode(s *Snapshot, local map[netip.Addr]netlink.Link) (string, error) {
	for _, n := range s.Nodes {
		if p, err := netip.ParsePrefix(n.Annotations[v1alpha1.AnnotationIPv4Address]); err == nil {
			if _, ok := local[p.Addr()]; ok {
				return n.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no Node's %s is an address of this machine: run calyxctl routes on a node (in its network namespace), or pass --node", v1alpha1.AnnotationIPv4Address)
}
