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
	target atomic.Pointer[map[netip.Prefix]netlink.Route]
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
		return ok && same(u.Route, want)
	case unix.RTM_DELROUTE:
		// A stale route, or a leftover beside the wanted one.
		return !ok || !same(u.Route, want)
	}
	return false
}

// resolve turns want into the kernel's routes, by destination; a route
// whose device is missing is left out, with its error.
func (t *Table) resolve(want []desired.Route) (map[netip.Prefix]netlink.Route, []error) {
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
	target := make(map[netip.Prefix]netlink.Route, len(want))
	var errs []error
	for _, w := range want {
		nr, err := toNetlink(w, linkIndex)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		target[w.Dst] = nr
	}
	return target, errs
}

// classify splits the main table's routes into the agent's, by
// destination, and others' of the main metric and TOS (those a calyx
// route to the same destination would replace).
func classify(all []netlink.Route) (ours map[netip.Prefix][]netlink.Route, theirs map[netip.Prefix]netlink.Route) {
	ours = map[netip.Prefix][]netlink.Route{}
	theirs = map[netip.Prefix]netlink.Route{}
	for _, r := range all {
		dst := dstOf(r)
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
func (t *Table) program(want []desired.Route, target map[netip.Prefix]netlink.Route, ours map[netip.Prefix][]netlink.Route, theirs map[netip.Prefix]netlink.Route, res *Result) []error {
	var errs []error
	for _, w := range want {
		if _, ok := theirs[w.Dst]; ok {
			res.Conflicts = append(res.Conflicts, fmt.Sprintf("%s: a route of another protocol has this destination; not replaced", w))
			continue
		}
		nr, ok := target[w.Dst]
		if !ok {
			continue
		}
		have := ours[w.Dst]
		if len(have) == 1 && same(have[0], nr) {
			res.Programmed++
			continue
		}
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
				if err := t.del(r); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errs
}

// prune deletes the agent's routes to destinations nobody wants (a
// conflicting destination is still wanted: its calyx routes stay).
func (t *Table) prune(want []desired.Route, ours map[netip.Prefix][]netlink.Route, res *Result) []error {
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
			if err := t.del(r); err != nil {
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
		return t.h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return rs, nil
}

func (t *Table) del(r netlink.Route) error {
	if err := t.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting stale calyx route to %s: %w", dstOf(r), err)
	}
	return nil
}

func toNetlink(w desired.Route, linkIndex func(string) (int, error)) (netlink.Route, error) {
	r := netlink.Route{
		Dst:      &net.IPNet{IP: w.Dst.Addr().AsSlice(), Mask: net.CIDRMask(w.Dst.Bits(), 32)},
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   netlink.FAMILY_V4,
	}
	switch w.Kind {
	case desired.Blackhole:
		r.Type = unix.RTN_BLACKHOLE
		return r, nil
	case desired.Tunnel:
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	r.Type = unix.RTN_UNICAST
	r.Gw = w.Via.AsSlice()
	if w.Dev != "" {
		i, err := linkIndex(w.Dev)
		if err != nil {
			return r, err
		}
		r.LinkIndex = i
	}
	return r, nil
}

// same reports whether the kernel's route have is the route want.
func same(have, want netlink.Route) bool {
	if have.Type != want.Type || have.Priority != 0 || have.Tos != 0 {
		return false
	}
	if want.Type == unix.RTN_BLACKHOLE {
		return true
	}
	onlink := int(netlink.FLAG_ONLINK)
	return have.Gw.Equal(want.Gw) &&
		(want.LinkIndex == 0 || have.LinkIndex == want.LinkIndex) &&
		have.Flags&onlink == want.Flags&onlink &&
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
