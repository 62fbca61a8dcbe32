package calyxctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// What ipam release did with one address.
const (
	Released = "released"
	Skipped  = "skipped"
)

// ReleaseRow is one address ipam release released, or skipped and why.
type ReleaseRow struct {
	Address string `json:"address,omitempty"`
	Handle  string `json:"handle,omitempty"`
	Action  string `json:"action"`
	Detail  string `json:"detail"`
}

// leakKinds are the problems that are a leaked address: ipam release
// releases these, and nothing else.
var leakKinds = []string{StalePod, StaleTunnel, StaleSandbox}

// holding is the allocation at addr in the snapshot's blocks.
func (s *Snapshot) holding(addr netip.Addr) *v1alpha1.Allocation {
	for _, b := range s.Blocks {
		cidr, err := netip.ParsePrefix(b.Spec.CIDR)
		if err != nil || !cidr.Contains(addr) {
			continue
		}
		for i, a := range b.Spec.Allocations {
			if at, ok := v1alpha1.AddrAt(cidr, a.Ordinal); ok && at == addr {
				return &b.Spec.Allocations[i]
			}
		}
	}
	return nil
}

// leakAt is the current problem that says addr, held by handle, is
// leaked; nil when none does.
func leakAt(now []Problem, addr, handle string) *Problem {
	i := slices.IndexFunc(now, func(p Problem) bool {
		return slices.Contains(leakKinds, p.Kind) && p.Address == addr && p.Handle == handle
	})
	if i < 0 {
		return nil
	}
	return &now[i]
}

// PlanFromReport decides what a report of ipam check (its -o json) still
// warrants on s: a release for each listed leak that the collector's own
// rules still find leaked, held by the same handle; a skip with its
// reason for everything else. Rows with Action Released are still to be
// done.
func PlanFromReport(report []Problem, s *Snapshot) []ReleaseRow {
	now := CheckIPAM(s)
	var out []ReleaseRow
	for _, p := range report {
		row := ReleaseRow{Address: p.Address, Handle: p.Handle, Action: Skipped}
		leak := leakAt(now, p.Address, p.Handle)
		switch {
		case !slices.Contains(leakKinds, p.Kind):
			row.Detail = fmt.Sprintf("%s is not a leaked address: %s", p.Kind, notReleased(p.Kind))
		case leak != nil:
			row.Action, row.Detail = Released, leak.Detail
		default:
			row.Detail = noLongerLeaked(p, s)
		}
		out = append(out, row)
	}
	return out
}

// notReleased says what becomes of a problem that is no leaked address.
func notReleased(kind string) string {
	switch kind {
	case DuplicateHandle:
		return "the collector leaves it to you: release the address not in use with --ip"
	case Unchecked:
		return "fix what the detail says and run ipam check again"
	}
	return "the garbage collector deletes it in its next pass"
}

// noLongerLeaked says why a leak the report listed is not one now.
func noLongerLeaked(p Problem, s *Snapshot) string {
	addr, err := netip.ParseAddr(p.Address)
	if err != nil {
		return fmt.Sprintf("%q is not an address", p.Address)
	}
	a := s.holding(addr)
	switch {
	case a == nil:
		return "the address is free: released since the report"
	case a.Handle != p.Handle:
		return fmt.Sprintf("the address is held by %s now, not by %s as reported", ipam.Holder(a), p.Handle)
	}
	return fmt.Sprintf("%s is in use again by the collector's rules: its pod or node exists", ipam.Holder(a))
}

// PlanAddress decides on releasing one address: a leak by the collector's
// rules is released; an address in use only with force; a free one is
// an error.
func PlanAddress(addr netip.Addr, force bool, s *Snapshot) (ReleaseRow, error) {
	a := s.holding(addr)
	if a == nil {
		return ReleaseRow{}, fmt.Errorf("%s is not allocated: nothing to release", addr)
	}
	row := ReleaseRow{Address: addr.String(), Handle: a.Handle, Action: Released}
	if leak := leakAt(CheckIPAM(s), addr.String(), a.Handle); leak != nil {
		row.Detail = leak.Detail
		return row, nil
	}
	if !force {
		return ReleaseRow{}, fmt.Errorf("%s is held by %s, which exists: releasing it could hand a live pod's address to another; pass --force to release it anyway", addr, ipam.Holder(a))
	}
	row.Detail = fmt.Sprintf("held by %s, released with --force", ipam.Holder(a))
	return row, nil
}

// ReadReport reads what `calyxctl ipam check -o json` wrote.
func ReadReport(path string) ([]Problem, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the report: %w", err)
	}
	var ps []Problem
	if err := json.Unmarshal(b, &ps); err != nil {
		return nil, fmt.Errorf("%s is not the output of calyxctl ipam check -o json: %w", path, err)
	}
	return ps, nil
}

// IPAMRelease releases one address (ip valid) or what a report still
// lists (reportPath), and writes what it did.
func IPAMRelease(ctx context.Context, c *Clients, w io.Writer, format string, ip netip.Addr, force bool, reportPath string) error {
	var report []Problem
	if reportPath != "" {
		var err error
		if report, err = ReadReport(reportPath); err != nil {
			return err
		}
	}
	s, err := c.Read(ctx, true)
	if err != nil {
		return err
	}
	var rows []ReleaseRow
	if reportPath != "" {
		rows = PlanFromReport(report, s)
	} else {
		row, err := PlanAddress(ip, force, s)
		if err != nil {
			return err
		}
		rows = []ReleaseRow{row}
	}
	m, err := ipam.NewForConfig(c.Config, ipam.Options{})
	if err != nil {
		return fmt.Errorf("connecting to the API server: %w", err)
	}
	for i := range rows {
		if rows[i].Action != Released {
			continue
		}
		addr, _ := netip.ParseAddr(rows[i].Address) // planned from a parsed one
		got, err := m.ReleaseAddress(ctx, addr, rows[i].Handle)
		if err != nil {
			return fmt.Errorf("releasing %s: %w", addr, err)
		}
		if got == nil {
			rows[i].Action, rows[i].Detail = Skipped, "changed since it was read: not released"
		}
	}
	if rows == nil {
		rows = []ReleaseRow{}
	}
	return render(w, format, rows, func(w io.Writer) {
		fmt.Fprintln(w, "ADDRESS\tACTION\tHANDLE\tDETAIL")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", orNone(r.Address), r.Action, orNone(r.Handle), r.Detail)
		}
	})
}
