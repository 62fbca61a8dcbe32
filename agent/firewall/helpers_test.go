package firewall

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

// helperView is what `nft list` shows of the helper chains and objects,
// rule lines stripped of their comments (which carry a hash).
func helperView(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	var out []string
	for _, args := range [][]string{
		{"nft", "list", "chain", "ip", TableName, ChainHelpersPrerouting},
		{"nft", "list", "chain", "ip", TableName, ChainHelpersOutput},
		{"nft", "list", "ct", "helpers", "table", "ip", TableName},
	} {
		for _, l := range strings.Split(ns.Exec(t, args...), "\n") {
			l = strings.TrimSpace(l)
			if i := strings.Index(l, " comment "); i >= 0 {
				l = l[:i]
			}
			if l == "" || l == "}" || strings.HasPrefix(l, "table ") {
				continue
			}
			out = append(out, l)
		}
	}
	return out
}

func TestReconcileHelpers(t *testing.T) {
	ns := testnet.New(t, "cx-fwh")
	f := New(int(ns.Handle))
	fw := desired.Firewall{
		NodeIPs:   []netip.Addr{addr("10.10.100.208")},
		PoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")},
		Helpers: []desired.Helper{
			{Name: "tftp", Protocol: "udp", Port: 30069, Service: "pxe/tftp"},
			{Name: "tftp", Protocol: "udp", Addr: addr("10.96.62.142"), Port: 69, Service: "default/tftp-server"},
			{Name: "ftp", Protocol: "tcp", Addr: addr("10.96.0.21"), Port: 21, Service: "default/ftp"},
		},
	}
	if _, err := f.Reconcile(fw); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	rules := []string{
		`fib daddr type local udp dport 30069 counter packets 0 bytes 0 ct helper set "tftp-udp"`,
		`ip daddr 10.96.62.142 udp dport 69 counter packets 0 bytes 0 ct helper set "tftp-udp"`,
		`ip daddr 10.96.0.21 tcp dport 21 counter packets 0 bytes 0 ct helper set "ftp-tcp"`,
	}
	want := []string{"chain helpers-prerouting {", "type filter hook prerouting priority mangle; policy accept;"}
	want = append(want, rules...)
	want = append(want, "chain helpers-output {", "type filter hook output priority mangle; policy accept;")
	want = append(want, rules...)
	want = append(want,
		"ct helper ftp-tcp {", `type "ftp" protocol tcp`, "l3proto ip",
		"ct helper tftp-udp {", `type "tftp" protocol udp`, "l3proto ip",
	)
	if diff := cmp.Diff(want, helperView(t, ns)); diff != "" {
		t.Errorf("nft list (-want +got):\n%s", diff)
	}
	if res, err := f.Reconcile(fw); err != nil || res.Changed() {
		t.Errorf("second Reconcile = %+v, %v; want no change", res, err)
	}

	// The annotation goes from the ftp Service and the NodePort goes:
	// their rules go, and the ftp helper object with them.
	fw.Helpers = fw.Helpers[1:2]
	res, err := f.Reconcile(fw)
	if err != nil {
		t.Fatalf("Reconcile after removing helpers: %v", err)
	}
	if diff := cmp.Diff(Result{RewroteChains: []string{ChainHelpersPrerouting, ChainHelpersOutput}, RemovedObjects: []string{"ct helper ftp-tcp"}}, res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	want = []string{
		"chain helpers-prerouting {", "type filter hook prerouting priority mangle; policy accept;", rules[1],
		"chain helpers-output {", "type filter hook output priority mangle; policy accept;", rules[1],
		"ct helper tftp-udp {", `type "tftp" protocol udp`, "l3proto ip",
	}
	if diff := cmp.Diff(want, helperView(t, ns)); diff != "" {
		t.Errorf("nft list after removal (-want +got):\n%s", diff)
	}

	fw.Helpers = nil
	if _, err := f.Reconcile(fw); err != nil {
		t.Fatalf("Reconcile without helpers: %v", err)
	}
	want = []string{
		"chain helpers-prerouting {", "type filter hook prerouting priority mangle; policy accept;",
		"chain helpers-output {", "type filter hook output priority mangle; policy accept;",
	}
	if diff := cmp.Diff(want, helperView(t, ns)); diff != "" {
		t.Errorf("nft list without helpers (-want +got):\n%s", diff)
	}
}
