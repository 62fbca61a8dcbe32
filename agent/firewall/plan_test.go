package firewall

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
)

// TestPlanSetUpdate is how a set's content changes, without a kernel: by
// element for plain sets, as a whole for interval sets.
func TestPlanSetUpdate(t *testing.T) {
	el := func(a string) nftables.SetElement { return nftables.SetElement{Key: netip.MustParseAddr(a).AsSlice()} }
	end := func(a string) nftables.SetElement {
		return nftables.SetElement{Key: netip.MustParseAddr(a).AsSlice(), IntervalEnd: true}
	}
	pools := func(ps ...string) []nftables.SetElement {
		var out []netip.Prefix
		for _, p := range ps {
			out = append(out, netip.MustParsePrefix(p))
		}
		return intervals(out)
	}
	// text is an update as a person reads it.
	type plan struct {
		Changed  bool
		Flush    bool
		Add, Del []string
	}
	text := func(es []nftables.SetElement) []string {
		var out []string
		for _, e := range es {
			a, _ := netip.AddrFromSlice(e.Key)
			s := a.String()
			if e.IntervalEnd {
				s = "end " + s
			}
			if e.Comment != "" || e.Counter != nil {
				s += " (with more than its key)"
			}
			out = append(out, s)
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		interval   bool
		have, want []nftables.SetElement
		plan       plan
	}{
		{name: "the same nodes in another order", have: []nftables.SetElement{el("10.10.100.208"), el("10.10.100.209")},
			want: []nftables.SetElement{el("10.10.100.209"), el("10.10.100.208")}},
		{name: "a node joins, another leaves", have: []nftables.SetElement{el("10.10.100.208"), el("10.10.100.207")},
			want: []nftables.SetElement{el("10.10.100.208"), el("10.10.100.209")},
			plan: plan{Changed: true, Add: []string{"10.10.100.209"}, Del: []string{"10.10.100.207"}}},
		{name: "a deletion names the element by its key alone", have: []nftables.SetElement{{Key: el("10.10.100.207").Key, Comment: "kernel's"}},
			plan: plan{Changed: true, Del: []string{"10.10.100.207"}}},
		{name: "the same pool", interval: true, have: pools("192.168.0.0/16"), want: pools("192.168.0.0/16")},
		{name: "a pool added: the interval set is refilled whole", interval: true, have: pools("192.168.0.0/16"), want: pools("192.168.0.0/16", "172.16.0.0/24"),
			plan: plan{Changed: true, Flush: true, Add: []string{"172.16.0.0", "end 172.16.1.0", "192.168.0.0", "end 192.169.0.0"}}},
		{name: "every pool gone", interval: true, have: []nftables.SetElement{el("192.168.0.0"), end("192.169.0.0")},
			plan: plan{Changed: true, Flush: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, changed := planSetUpdate(tc.interval, tc.have, tc.want)
			got := plan{Changed: changed, Flush: u.flush, Add: text(u.add), Del: text(u.del)}
			if diff := cmp.Diff(tc.plan, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
