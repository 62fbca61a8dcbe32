package routes

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

func tunnelRoute(dst, via string) desired.Route {
	return desired.Route{Dst: prefix(dst), Kind: desired.Tunnel, Via: addr(via), Dev: "tunl0"}
}

func directRoute(dst, via string) desired.Route {
	return desired.Route{Dst: prefix(dst), Kind: desired.Direct, Via: addr(via), Dev: "ens160"}
}

func blackhole(dst string) desired.Route {
	return desired.Route{Dst: prefix(dst), Kind: desired.Blackhole}
}

// node is a namespace with the devices the routes name: an ifb device (this kernel has no dummy module) standing in
// for tunl0 (the datapath is tested in agent/tunnel) and the NIC.
func node(t *testing.T) (*testnet.NS, *Table, string) {
	ns := testnet.New(t, "cx-rt")
	ns.IP(t, "link", "add", "ens160", "type", "ifb")
	ns.IP(t, "addr", "add", "10.10.100.209/24", "dev", "ens160")
	ns.IP(t, "link", "set", "ens160", "up")
	ns.IP(t, "link", "add", "tunl0", "type", "ifb")
	ns.IP(t, "addr", "add", "192.168.154.192/32", "dev", "tunl0")
	ns.IP(t, "link", "set", "tunl0", "up")
	protos := t.TempDir()
	if err := InstallProtocolName(protos); err != nil {
		t.Fatal(err)
	}
	return ns, New(ns.Netlink(t)), protos
}

func TestReconcile(t *testing.T) {
	ns, tbl, protos := node(t)
	// Routes of other protocols, which the agent must leave alone: a
	// static route elsewhere, and one on a destination it would want.
	ns.IP(t, "route", "add", "10.99.0.0/16", "via", "10.10.100.1", "proto", "static")
	ns.IP(t, "route", "add", "192.168.7.0/26", "via", "10.10.100.1", "proto", "static")

	steps := []struct {
		name       string
		want       []desired.Route
		wantRoutes []string
		wantResult Result
	}{
		{
			name: "from nothing: the article's routes",
			want: []desired.Route{
				tunnelRoute("192.168.29.64/26", "10.10.100.208"),
				blackhole("192.168.154.192/26"),
				directRoute("192.168.30.0/26", "10.10.100.210"),
				tunnelRoute("192.168.154.250/32", "10.10.100.208"),
			},
			wantRoutes: []string{
				"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
				"192.168.30.0/26 via 10.10.100.210 dev ens160 proto calyx",
				"blackhole 192.168.154.192/26 proto calyx",
				"192.168.154.250 via 10.10.100.208 dev tunl0 proto calyx onlink",
			},
			wantResult: Result{Programmed: 4, Added: 4},
		},
		{
			name: "again: nothing to do",
			want: []desired.Route{
				tunnelRoute("192.168.29.64/26", "10.10.100.208"),
				blackhole("192.168.154.192/26"),
				directRoute("192.168.30.0/26", "10.10.100.210"),
				tunnelRoute("192.168.154.250/32", "10.10.100.208"),
			},
			wantRoutes: []string{
				"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
				"192.168.30.0/26 via 10.10.100.210 dev ens160 proto calyx",
				"blackhole 192.168.154.192/26 proto calyx",
				"192.168.154.250 via 10.10.100.208 dev tunl0 proto calyx onlink",
			},
			wantResult: Result{Programmed: 4},
		},
		{
			name: "a block moves node, another goes CrossSubnet-direct, a borrowed address is released",
			want: []desired.Route{
				tunnelRoute("192.168.29.64/26", "10.10.100.211"),
				blackhole("192.168.154.192/26"),
				tunnelRoute("192.168.30.0/26", "10.10.100.210"),
			},
			wantRoutes: []string{
				"192.168.29.64/26 via 10.10.100.211 dev tunl0 proto calyx onlink",
				"192.168.30.0/26 via 10.10.100.210 dev tunl0 proto calyx onlink",
				"blackhole 192.168.154.192/26 proto calyx",
			},
			wantResult: Result{Programmed: 3, Replaced: 2, Deleted: 1},
		},
		{
			name: "a remote block becomes ours",
			want: []desired.Route{
				blackhole("192.168.29.64/26"),
				blackhole("192.168.154.192/26"),
				tunnelRoute("192.168.30.0/26", "10.10.100.210"),
			},
			wantRoutes: []string{
				"blackhole 192.168.29.64/26 proto calyx",
				"192.168.30.0/26 via 10.10.100.210 dev tunl0 proto calyx onlink",
				"blackhole 192.168.154.192/26 proto calyx",
			},
			wantResult: Result{Programmed: 3, Replaced: 1},
		},
		{
			name: "a destination held by another protocol is not taken over",
			want: []desired.Route{
				tunnelRoute("192.168.7.0/26", "10.10.100.210"),
			},
			wantRoutes: nil,
			wantResult: Result{Deleted: 3, Conflicts: []string{
				"192.168.7.0/26 via 10.10.100.210 dev tunl0 proto calyx onlink: a route of another protocol has this destination; not replaced",
			}},
		},
	}
	for _, s := range steps {
		res, err := tbl.Reconcile(s.want)
		if err != nil {
			t.Fatalf("%s: Reconcile: %v", s.name, err)
		}
		if diff := cmp.Diff(s.wantResult, res); diff != "" {
			t.Errorf("%s: result (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.wantRoutes, ns.Routes(t, protos)); diff != "" {
			t.Errorf("%s: ip route show proto calyx (-want +got):\n%s", s.name, diff)
		}
		got, err := tbl.List()
		if err != nil {
			t.Fatal(err)
		}
		var gotText []string
		for _, r := range got {
			gotText = append(gotText, r.String())
		}
		if diff := cmp.Diff(s.wantRoutes, gotText); diff != "" {
			t.Errorf("%s: List() (-want +got):\n%s", s.name, diff)
		}
	}
	// Other protocols' routes are exactly as they were.
	others := testnet.Lines(ns.IP(t, "route", "show", "proto", "static"))
	want := []string{"10.99.0.0/16 via 10.10.100.1 dev ens160", "192.168.7.0/26 via 10.10.100.1 dev ens160"}
	if diff := cmp.Diff(want, others); diff != "" {
		t.Errorf("static routes (-want +got):\n%s", diff)
	}
}

func TestReconcileRepairsDrift(t *testing.T) {
	ns, tbl, protos := node(t)
	want := []desired.Route{tunnelRoute("192.168.29.64/26", "10.10.100.208"), blackhole("192.168.154.192/26")}
	if _, err := tbl.Reconcile(want); err != nil {
		t.Fatal(err)
	}
	// Someone deletes one route and points the other elsewhere, keeping
	// our protocol; and adds a calyx route of their own with a metric.
	ns.IP(t, "route", "del", "192.168.29.64/26")
	ns.IP(t, "route", "replace", "blackhole", "192.168.154.192/26", "proto", "202", "metric", "0")
	ns.IP(t, "route", "add", "192.168.154.192/26", "via", "10.10.100.9", "proto", "202", "metric", "10")
	res, err := tbl.Reconcile(want)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{Programmed: 2, Added: 1, Replaced: 1}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	wantText := []string{
		"192.168.29.64/26 via 10.10.100.208 dev tunl0 proto calyx onlink",
		"blackhole 192.168.154.192/26 proto calyx",
	}
	if diff := cmp.Diff(wantText, ns.Routes(t, protos)); diff != "" {
		t.Errorf("ip route (-want +got):\n%s", diff)
	}
}

func TestReconcileWithoutTunnelDevice(t *testing.T) {
	ns := testnet.New(t, "cx-rt")
	tbl := New(ns.Netlink(t))
	_, err := tbl.Reconcile([]desired.Route{tunnelRoute("192.168.29.64/26", "10.10.100.208"), blackhole("192.168.154.192/26")})
	if err == nil {
		t.Fatal("Reconcile succeeded without tunl0")
	}
	t.Logf("error, as a user sees it: %v", err)
	// The routes that do not need the device are still programmed.
	if got := ns.IP(t, "route", "show", "proto", "202"); got != "blackhole 192.168.154.192/26 \n" {
		t.Errorf("routes = %q, want the blackhole only", got)
	}
}

func TestInstallProtocolName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt_protos.d")
	for range 2 {
		if err := InstallProtocolName(dir); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "calyx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("# routes programmed by calyx-agent\n202\tcalyx\n", string(b)); diff != "" {
		t.Error(diff)
	}
}

// TestExpected: the kernel's reports of Reconcile's own writes are
// expected, anyone else's changes to calyx routes are not, so that the
// agent resyncs on drift and not on its own work.
func TestExpected(t *testing.T) {
	ns, tbl, _ := node(t)
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{Namespace: &ns.Handle}); err != nil {
		t.Fatal(err)
	}
	// Each step's reports of calyx routes, as "add|del <dst> expected|unexpected".
	reports := func(n int) []string {
		var out []string
		for len(out) < n {
			select {
			case u := <-updates:
				if u.Protocol != Protocol {
					continue
				}
				verb := map[uint16]string{unix.RTM_NEWROUTE: "add", unix.RTM_DELROUTE: "del"}[u.Type]
				out = append(out, fmt.Sprintf("%s %s %s", verb, dstOf(u.Route), map[bool]string{true: "expected", false: "unexpected"}[tbl.Expected(u)]))
			case <-time.After(5 * time.Second):
				t.Fatalf("%d route reports, want %d: %q", len(out), n, out)
			}
		}
		slices.Sort(out)
		return out
	}
	want := []desired.Route{
		tunnelRoute("192.168.29.64/26", "10.10.100.208"),
		directRoute("192.168.44.0/26", "10.10.100.207"),
		blackhole("192.168.154.192/26"),
	}

	steps := []struct {
		name string
		do   func()
		want []string
	}{
		{"the agent programs its routes", func() { mustReconcile(t, tbl, want) }, []string{
			"add 192.168.154.192/26 expected",
			"add 192.168.29.64/26 expected",
			"add 192.168.44.0/26 expected",
		}},
		{"someone deletes one, repoints one and adds one of calyx's protocol", func() {
			ns.IP(t, "route", "del", "192.168.29.64/26")
			ns.IP(t, "route", "replace", "192.168.44.0/26", "via", "10.10.100.9", "dev", "ens160", "proto", "202")
			ns.IP(t, "route", "add", "192.168.99.0/26", "via", "10.10.100.9", "proto", "202")
		}, []string{
			"add 192.168.44.0/26 unexpected",
			"add 192.168.99.0/26 unexpected",
			"del 192.168.29.64/26 unexpected",
		}},
		{"the agent repairs them", func() { mustReconcile(t, tbl, want) }, []string{
			"add 192.168.29.64/26 expected",
			"add 192.168.44.0/26 expected",
			"del 192.168.99.0/26 expected",
		}},
		{"the agent stops wanting one", func() { mustReconcile(t, tbl, want[1:]) }, []string{
			"del 192.168.29.64/26 expected",
		}},
	}
	for _, step := range steps {
		step.do()
		if diff := cmp.Diff(step.want, reports(len(step.want))); diff != "" {
			t.Errorf("%s: route reports (-want +got):\n%s", step.name, diff)
		}
	}
	select {
	case u := <-updates:
		t.Errorf("a report nobody caused: %+v", u)
	case <-time.After(200 * time.Millisecond):
	}
}

func mustReconcile(t *testing.T, tbl *Table, want []desired.Route) {
	t.Helper()
	if _, err := tbl.Reconcile(want); err != nil {
		t.Fatal(err)
	}
}
