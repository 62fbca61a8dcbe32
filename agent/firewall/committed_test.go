package firewall

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

// TestCommitted: a monitor on WatchConn sees every commit, even one that
// fills a set of 5,000 nodes, and Committed names Reconcile's commits and
// no one else's.
func TestCommitted(t *testing.T) {
	ns := testnet.New(t, "cx-fw")
	f := New(int(ns.Handle))
	t.Cleanup(f.Close)
	c, err := f.WatchConn()
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor()
	t.Cleanup(func() { mon.Close() })
	gens, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	// next is the next commit as "reconcile|other, N changes".
	next := func() string {
		t.Helper()
		select {
		case evs, ok := <-gens:
			if !ok {
				t.Fatal("the monitor ended")
			}
			g := evs.GeneratedBy
			if g.Error != nil || g.Type != nftables.MonitorEventType(unix.NFT_MSG_NEWGEN) {
				t.Fatalf("monitor event %+v (error %v), want a new generation", g, g.Error)
			}
			who := "other"
			if f.Committed(g.Header) {
				who = "reconcile"
			}
			return who + ", " + map[bool]string{true: "changes", false: "no changes"}[len(evs.Changes) > 0]
		case <-time.After(5 * time.Second):
			t.Fatal("no commit reported within 5 s")
		}
		return ""
	}

	var nodes []netip.Addr
	for i := range 5000 {
		nodes = append(nodes, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	fw := desired.Firewall{NodeIPs: nodes, PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")}}
	var got []string
	if _, err := f.Reconcile(fw); err != nil {
		t.Fatal(err)
	}
	got = append(got, next())

	// Someone else adds a table of their own, in the same namespace.
	other, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle)))
	if err != nil {
		t.Fatal(err)
	}
	other.AddTable(&nftables.Table{Name: "someone-else", Family: nftables.TableFamilyIPv4})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	got = append(got, next())

	// One node more: Reconcile's again.
	fw.NodeIPs = append(fw.NodeIPs, addr("10.200.0.1"))
	if _, err := f.Reconcile(fw); err != nil {
		t.Fatal(err)
	}
	got = append(got, next())

	want := []string{"reconcile, changes", "other, changes", "reconcile, changes"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("commits as the monitor saw them (-want +got):\n%s", diff)
	}
}

// TestLargeSets: sets of thousands of elements hold every one of them,
// when created and when updated. One message per set used to carry them
// all, and past ~4,000 addresses its length wrapped: the kernel kept only
// the tail, and IPIP from most nodes of a large cluster was dropped.
func TestLargeSets(t *testing.T) {
	ns := testnet.New(t, "cx-fw")
	f := New(int(ns.Handle))
	t.Cleanup(f.Close)
	var fw desired.Firewall
	for i := range 5000 {
		fw.NodeIPs = append(fw.NodeIPs, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
		// Every other /26, so that none merge: an interval set of
		// 10,000 elements.
		v := i * 128
		fw.PoolCIDRs = append(fw.PoolCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(v>>16), byte(v >> 8), byte(v)}), 26))
	}
	counts := func() map[string]int {
		t.Helper()
		got, err := f.SetContents()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]int{SetNodeIPs: len(got[SetNodeIPs]), SetPools: len(got[SetPools])}
	}
	steps := []struct {
		name   string
		change func()
		want   map[string]int
	}{
		{"created", func() {}, map[string]int{SetNodeIPs: 5000, SetPools: 5000}},
		{"one node and one pool more", func() {
			fw.NodeIPs = append(fw.NodeIPs, addr("10.200.0.1"))
			fw.PoolCIDRs = append(fw.PoolCIDRs, prefix("10.244.0.0/16"))
		}, map[string]int{SetNodeIPs: 5001, SetPools: 5001}},
		{"half the nodes gone", func() { fw.NodeIPs = fw.NodeIPs[2500:] }, map[string]int{SetNodeIPs: 2501, SetPools: 5001}},
	}
	for _, step := range steps {
		step.change()
		if _, err := f.Reconcile(fw); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if diff := cmp.Diff(step.want, counts()); diff != "" {
			t.Errorf("%s: elements per set (-want +got):\n%s", step.name, diff)
		}
	}
}
