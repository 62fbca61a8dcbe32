// Package routes programs the agent's routes in the main table: those with
// the calyx route protocol (202), and never any other. Reconcile makes them
// match a desired list: it adds and replaces what differs and deletes calyx
// routes nobody wants, so running it again changes nothing.
package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nldump"
)

// Protocol is the rtnetlink protocol of the agent's routes.
const Protocol = netlink.RouteProtocol(desired.RouteProtocol)

// ProtocolNamesDir is where iproute2 reads extra protocol names, so that
// `ip route` prints `proto calyx` instead of `proto 202`.
const ProtocolNamesDir = "/etc/iproute2/rt_protos.d"

// InstallProtocolName writes calyx.conf naming protocol 202 into dir (an
// rt_protos.d directory). It is cosmetic: routes work without it.
func InstallProtocolName(dir string) error {
	path := filepath.Join(dir, "calyx.conf")
	want := []byte(fmt.Sprintf("# routes programmed by calyx-agent\n%d\tcalyx\n", desired.RouteProtocol))
	if have, err := os.ReadFile(path); err == nil && string(have) == string(want) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s for the route protocol name: %w (ip route will print proto 202)", dir, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, want, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w (ip route will print proto 202)", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("installing %s: %w (ip route will print proto 202)", path, err)
	}
	return nil
}

// Table reconciles the calyx routes of the network namespace its handle
// belongs to.
type Table struct {
	h *netlink.Handle
	// target is what the latest Reconcile makes the table, by destination,
	// published before it writes: the kernel reports each of its writes
	// back, and Expected tells those from anyone else's.
	target atomic.Pointer[map[netip.Prefix]kernelRoute]
	// lastDump is how many routes the main table had at the last look.
	lastDump atomic.Int64
}

// New is a Table working through h, a handle in the node's namespace.
func New(h *netlink.Handle) *Table { return &Table{h: h} }

// Result says what Reconcile did.
type Result struct {
	Programmed int // calyx routes present afterwards
	Added      int
	Replaced   int
	Deleted    int
	// Conflicts are desired routes left out because a route of another
	// protocol has the same destination: the agent never replaces those.
	Conflicts []string
}

// Changed reports whether Reconcile changed anything.
func (r Result) Changed() bool { return r.Added+r.Replaced+r.Deleted > 0 }

// Reconcile makes the calyx routes of the main table exactly want.
func (t *Table) Reconcile(want []desired.Route) (Result, error) {
	var res Result
	target, errs := t.resolve(want)
	t.target.Store(&target)
	all, err := t.listMain()
	if err != nil {
		return res, err
	}
	ours, theirs := classify(all)
	errs = append(errs, t.program(want, target, ours, theirs, &res)...)
	errs = append(errs, t.prune(want, ours, &res)...)
	return res, summarize(errs)
}

// Expected reports whether u, the kernel's report of a change to a calyx
// route, leaves the main table as the latest Reconcile makes it: most
// likely that Reconcile's own write coming back. A watcher that resyncs
// on the others only does not answer every route the agent writes with a
// second full reconcile (at 10,000 blocks, ~0.25 s of CPU after the first
// sync alone). Before any Reconcile, nothing is expected.
func (t *Table) Expected(u netlink.RouteUpdate) bool {
	target := t.target.Load()
	if target == nil || u.Table != unix.RT_TABLE_MAIN {
		return false
	}
	want, ok := (*target)[dstOf(u.Route)]
	switch u.Type {
	case unix.RTM_NEWROUTE:
		return ok && want.matches(u.Route)
	case unix.RTM_DELROUTE:
		// A stale route, or a leftover beside the wanted one.
		return !ok || !want.matches(u.Route)
	}
	return false
}

// resolve turns want into the kernel's routes, by destination; a route
// whose device is missing is left out, with its error.
func (t *Table) resolve(want []desired.Route) (map[netip.Prefix]kernelRoute, []error) {
	links := map[string]int{}
	linkIndex := func(name string) (int, error) {
		if i, ok := links[name]; ok {
			return i, nil
		}
		l, err := t.h.LinkByName(name)
		if err != nil {
			return 0, fmt.Errorf("looking up %s for routes: %w (the tunnel datapath or the underlay NIC is missing)", name, err)
		}
		links[name] = l.Attrs().Index
		return l.Attrs().Index, nil
	}
	target := make(map[netip.Prefix]kernelRoute, len(want))
	var errs []error
	for _, w := range want {
		k, err := resolveRoute(w, linkIndex)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		target[w.Dst] = k
	}
	return target, errs
}

// classify splits the main table's routes into the agent's, by
// destination, and others' of the main metric and TOS (those a calyx
// route to the same destination would replace).
func classify(all []netlink.Route) (ours map[netip.Prefix][]*netlink.Route, theirs map[netip.Prefix]*netlink.Route) {
	// Pointers into all: a copy of each route per block would double
	// what a resync allocates.
	ours = make(map[netip.Prefix][]*netlink.Route, len(all))
	theirs = map[netip.Prefix]*netlink.Route{}
	for i := range all {
		r := &all[i]
		dst := dstOf(*r)
		if r.Protocol == Protocol {
			ours[dst] = append(ours[dst], r)
		} else if r.Priority == 0 && r.Tos == 0 {
			theirs[dst] = r
		}
	}
	return ours, theirs
}

// program adds or replaces every wanted route the kernel does not have as
// wanted, and deletes the leftovers of a replaced one. A destination that
// another protocol's route holds is left alone, as a conflict; one that
// did not resolve has its error from resolve already.
func (t *Table) program(want []desired.Route, target map[netip.Prefix]kernelRoute, ours map[netip.Prefix][]*netlink.Route, theirs map[netip.Prefix]*netlink.Route, res *Result) []error {
	var errs []error
	for _, w := range want {
		if _, ok := theirs[w.Dst]; ok {
			res.Conflicts = append(res.Conflicts, fmt.Sprintf("%s: a route of another protocol has this destination; not replaced", w))
			continue
		}
		k, ok := target[w.Dst]
		if !ok {
			continue
		}
		have := ours[w.Dst]
		if len(have) == 1 && k.matches(*have[0]) {
			res.Programmed++
			continue
		}
		nr := k.netlink(w.Dst)
		if err := t.h.RouteReplace(&nr); err != nil {
			errs = append(errs, fmt.Errorf("programming %s: %w", w, err))
			continue
		}
		res.Programmed++
		if len(have) == 0 {
			res.Added++
			continue
		}
		res.Replaced++
		// Replace updated the route with our key; others for the same
		// destination (another metric or TOS) are leftovers.
		for _, r := range have {
			if r.Priority != 0 || r.Tos != 0 {
				if err := t.del(*r); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errs
}

// prune deletes the agent's routes to destinations nobody wants (a
// conflicting destination is still wanted: its calyx routes stay).
func (t *Table) prune(want []desired.Route, ours map[netip.Prefix][]*netlink.Route, res *Result) []error {
	wanted := map[netip.Prefix]bool{}
	for _, w := range want {
		wanted[w.Dst] = true
	}
	var errs []error
	for dst, rs := range ours {
		if wanted[dst] {
			continue
		}
		for _, r := range rs {
			if err := t.del(*r); err != nil {
				errs = append(errs, err)
				continue
			}
			res.Deleted++
		}
	}
	return errs
}

// List is the calyx routes of the main table as desired.Routes, sorted by
// destination, for comparison with the desired ones.
func (t *Table) List() ([]desired.Route, error) {
	all, err := t.listMain()
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	var out []desired.Route
	for _, r := range all {
		if r.Protocol != Protocol {
			continue
		}
		d := desired.Route{Dst: dstOf(r), Kind: desired.Direct}
		switch {
		case r.Type == unix.RTN_BLACKHOLE:
			d.Kind = desired.Blackhole
		case r.Flags&int(netlink.FLAG_ONLINK) != 0:
			d.Kind = desired.Tunnel
		}
		if a, ok := netip.AddrFromSlice(r.Gw); ok {
			d.Via = a.Unmap()
		}
		if r.LinkIndex > 0 {
			if _, ok := names[r.LinkIndex]; !ok {
				if l, err := t.h.LinkByIndex(r.LinkIndex); err == nil {
					names[r.LinkIndex] = l.Attrs().Name
				}
			}
			d.Dev = names[r.LinkIndex]
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b desired.Route) int { return desired.ComparePrefix(a.Dst, b.Dst) })
	return out, nil
}

func (t *Table) listMain() ([]netlink.Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	rs, err := nldump.Retry(func() ([]netlink.Route, error) {
		// Sized by the last dump: growing a slice of 10,000 routes from
		// nothing allocates twice what it keeps, on every resync.
		rs := make([]netlink.Route, 0, t.lastDump.Load()+64)
		err := t.h.RouteListFilteredIter(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE, func(r netlink.Route) bool {
			rs = append(rs, r)
			return true
		})
		return rs, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	t.lastDump.Store(int64(len(rs)))
	return rs, nil
}

func (t *Table) del(r netlink.Route) error {
	if err := t.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting stale calyx route to %s: %w", dstOf(r), err)
	}
	return nil
}

// kernelRoute is what the calyx route to one destination must be, in the
// terms the kernel reports it: small, since Reconcile keeps one per block.
type kernelRoute struct {
	typ    int
	gw     netip.Addr
	link   int // 0: any device
	onlink bool
}

func resolveRoute(w desired.Route, linkIndex func(string) (int, error)) (kernelRoute, error) {
	switch w.Kind {
	case desired.Blackhole:
		return kernelRoute{typ: unix.RTN_BLACKHOLE}, nil
	}
	k := kernelRoute{typ: unix.RTN_UNICAST, gw: w.Via, onlink: w.Kind == desired.Tunnel}
	if w.Dev != "" {
		i, err := linkIndex(w.Dev)
		if err != nil {
			return k, err
		}
		k.link = i
	}
	return k, nil
}

// netlink is the route to dst that RouteReplace writes.
func (k kernelRoute) netlink(dst netip.Prefix) netlink.Route {
	r := netlink.Route{
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Family:    netlink.FAMILY_V4,
		Type:      k.typ,
		LinkIndex: k.link,
	}
	if k.gw.IsValid() {
		r.Gw = k.gw.AsSlice()
	}
	if k.onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	return r
}

// matches reports whether the kernel's route have is this route.
func (k kernelRoute) matches(have netlink.Route) bool {
	if have.Type != k.typ || have.Priority != 0 || have.Tos != 0 {
		return false
	}
	if k.typ == unix.RTN_BLACKHOLE {
		return true
	}
	gw, _ := netip.AddrFromSlice(have.Gw)
	return gw.Unmap() == k.gw &&
		(k.link == 0 || have.LinkIndex == k.link) &&
		(have.Flags&int(netlink.FLAG_ONLINK) != 0) == k.onlink &&
		len(have.MultiPath) == 0 && have.Encap == nil
}

func dstOf(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, _ := netip.AddrFromSlice(r.Dst.IP)
	bits, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

// summarize keeps an error list short: a broken device fails every route.
func summarize(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1, 2, 3:
		return errors.Join(errs...)
	}
	return fmt.Errorf("%d routes failed, first: %w", len(errs), errors.Join(errs[:3]...))
}
