package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

var nodeIPs = map[string]string{
	"learn-k8s-1": "10.10.100.207",
	"learn-k8s-2": "10.10.100.208",
	"learn-k8s-3": "10.10.100.209",
}

// TestAgent runs three agents against a real API server, each in its node's
// namespace on one underlay bridge, and checks what a person would: the
// routes, the node's annotations, tunl0, the nftables sets, how fast news
// from the API and drift in the kernel are acted on, and that a restarted
// agent adopts the node's state without changing it.
func TestAgent(t *testing.T) {
	cp := cptest.Start(t)
	c := newCluster(t, cp.Config)
	c.addPool(t, "default", "192.168.0.0/16", v1alpha1.IPIPModeAlways)
	ul := testnet.NewUnderlay(t)
	names := []string{"learn-k8s-1", "learn-k8s-2", "learn-k8s-3"}
	nodes := map[string]*testnet.NS{}
	agents := map[string]*runningAgent{}
	for _, n := range names {
		c.addNode(t, n, nodeIPs[n])
		nodes[n] = ul.AddNode(t, "cx-"+strings.TrimPrefix(n, "learn-k8s-"), nodeIPs[n]+"/24")
	}
	start := time.Now()
	for _, n := range names {
		agents[n] = startAgent(t, cp.Config, nodes[n], n, agentOpts{})
	}
	for _, n := range names {
		agents[n].waitReady(t, 30*time.Second)
	}
	t.Logf("three agents ready %s after start", time.Since(start).Round(time.Millisecond))

	// The agents register concurrently; the last one's block reaches the
	// others a moment after it is ready.
	checkRoutes := func(t *testing.T) {
		t.Helper()
		for _, n := range names {
			want := c.expectedRoutes(t, n, nodeIPs)
			eventually(t, 2*time.Second, "routes on "+n, func() error {
				got := sorted(nodes[n].Routes(t, agents[n].dir+"/rt_protos.d"))
				if diff := cmp.Diff(want, got); diff != "" {
					return fmt.Errorf("ip route on %s (-want +got):\n%s", n, diff)
				}
				return nil
			})
		}
	}

	t.Run("routes", func(t *testing.T) {
		checkRoutes(t)
		for _, n := range names {
			t.Logf("%s:\n  %s", n, strings.Join(nodes[n].Routes(t, agents[n].dir+"/rt_protos.d"), "\n  "))
		}
	})

	t.Run("registration", func(t *testing.T) {
		for _, n := range names {
			ann := nodeAnnotations(t, c, n)
			if got := ann[v1alpha1.AnnotationIPv4Address]; got != nodeIPs[n]+"/24" {
				t.Errorf("%s: %s = %q, want %s/24", n, v1alpha1.AnnotationIPv4Address, got, nodeIPs[n])
			}
			tun, err := netip.ParseAddr(ann[v1alpha1.AnnotationTunnelAddress])
			if err != nil {
				t.Fatalf("%s: tunnel address annotation: %v", n, err)
			}
			// The address is the node's, allocated in one of its blocks.
			blocks, err := c.calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{LabelSelector: v1alpha1.LabelNode + "=" + n})
			if err != nil {
				t.Fatal(err)
			}
			inOwn := slices.ContainsFunc(blocks.Items, func(b v1alpha1.IPAMBlock) bool { return netip.MustParsePrefix(b.Spec.CIDR).Contains(tun) })
			if !inOwn {
				t.Errorf("%s: tunnel address %s is not in one of its blocks", n, tun)
			}
			addrs := testnet.Lines(nodes[n].IP(t, "-4", "-o", "addr", "show", "dev", "tunl0"))
			if len(addrs) != 1 || !strings.Contains(addrs[0], "inet "+tun.String()+"/32 ") {
				t.Errorf("%s: tunl0 addresses %q, want %s/32", n, addrs, tun)
			}
			if mtu := strings.Fields(nodes[n].IP(t, "-o", "link", "show", "tunl0")); !slices.Contains(mtu, "1480") {
				t.Errorf("%s: tunl0 %v, want mtu 1480", n, mtu)
			}
			for file, want := range map[string]string{"nodename": n + "\n", "mtu": "1480\n"} {
				b, err := os.ReadFile(filepath.Join(agents[n].dir, "state", file))
				if err != nil || string(b) != want {
					t.Errorf("%s: state file %s = %q, %v; want %q", n, file, b, err, want)
				}
			}
			if got := nodes[n].Exec(t, "cat", "/proc/sys/net/ipv4/ip_forward"); got != "1\n" {
				t.Errorf("%s: ip_forward = %q", n, got)
			}
		}
	})

	t.Run("nftables sets", func(t *testing.T) {
		for _, n := range names {
			got, err := firewall.New(int(nodes[n].Handle)).SetContents()
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]string{
				firewall.SetNodeIPs:  {"10.10.100.207", "10.10.100.208", "10.10.100.209"},
				firewall.SetPools:    {"192.168.0.0/16"},
				firewall.SetNATPools: {"192.168.0.0/16"},
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s: sets (-want +got):\n%s", n, diff)
			}
		}
	})

	t.Run("a block claimed later is routed within 100ms", func(t *testing.T) {
		cidr := netip.MustParsePrefix("192.168.250.0/26")
		seen := map[string]<-chan time.Time{}
		for _, n := range names {
			seen[n] = watchRoute(t, nodes[n], cidr)
		}
		b := &v1alpha1.IPAMBlock{
			ObjectMeta: metav1.ObjectMeta{Name: ipam.BlockName(cidr), Labels: map[string]string{v1alpha1.LabelNode: "learn-k8s-2", v1alpha1.LabelPool: "default"}},
			Spec:       v1alpha1.IPAMBlockSpec{CIDR: cidr.String(), Node: "learn-k8s-2", Pool: "default"},
		}
		created := time.Now()
		if _, err := c.calyx.CalyxV1alpha1().IPAMBlocks().Create(context.Background(), b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			select {
			case at := <-seen[n]:
				d := at.Sub(created)
				t.Logf("block %s created in the API → route on %s after %s", cidr, n, d.Round(100*time.Microsecond))
				if d > 100*time.Millisecond {
					t.Errorf("%s: route after %s, want within 100ms", n, d)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("%s: no route to %s within 2s", n, cidr)
			}
		}
		checkRoutes(t)
	})

	t.Run("drift is repaired within 1s", func(t *testing.T) {
		n := "learn-k8s-1"
		node := nodes[n]
		remote := c.expectedRoutes(t, n, nodeIPs)[0]
		dst := strings.Fields(strings.TrimPrefix(remote, "blackhole "))[0]

		node.IP(t, "route", "del", dst)
		d := eventually(t, time.Second, "deleted route "+dst, func() error {
			if !slices.Contains(node.Routes(t, agents[n].dir+"/rt_protos.d"), remote) {
				return errNotYet
			}
			return nil
		})
		t.Logf("deleted route %q back after %s", remote, d.Round(100*time.Microsecond))

		tun := nodeAnnotations(t, c, n)[v1alpha1.AnnotationTunnelAddress]
		node.IP(t, "addr", "del", tun+"/32", "dev", "tunl0")
		d = eventually(t, time.Second, "tunl0 address", func() error {
			if !strings.Contains(node.IP(t, "-4", "-o", "addr", "show", "dev", "tunl0"), "inet "+tun+"/32") {
				return errNotYet
			}
			return nil
		})
		t.Logf("deleted tunl0 address %s back after %s", tun, d.Round(100*time.Microsecond))

		fw := firewall.New(int(node.Handle))
		conn, err := fw.Conn()
		if err != nil {
			t.Fatal(err)
		}
		table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: firewall.TableName}
		rules, err := conn.GetRules(table, &nftables.Chain{Table: table, Name: "antispoof"})
		if err != nil || len(rules) != 1 {
			t.Fatalf("antispoof rules: %v %v", rules, err)
		}
		if err := conn.DelRule(rules[0]); err != nil {
			t.Fatal(err)
		}
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		d = eventually(t, time.Second, "deleted nftables rule", func() error {
			rules, err := conn.GetRules(table, &nftables.Chain{Table: table, Name: "antispoof"})
			if err != nil || len(rules) != 1 {
				return errNotYet
			}
			return nil
		})
		t.Logf("deleted nftables anti-spoof rule back after %s", d.Round(100*time.Microsecond))

		conn.DelTable(table)
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		d = eventually(t, time.Second, "deleted nftables table", func() error {
			sets, err := fw.SetContents()
			if err != nil || len(sets[firewall.SetNodeIPs]) != 3 {
				return errNotYet
			}
			return nil
		})
		t.Logf("deleted nftables table back, sets filled, after %s", d.Round(100*time.Microsecond))
		checkRoutes(t)
	})

	t.Run("a restarted agent adopts the node without changing it", func(t *testing.T) {
		n := "learn-k8s-3"
		node := nodes[n]
		before := sorted(node.Routes(t, agents[n].dir+"/rt_protos.d"))
		agents[n].stop()
		if got := sorted(node.Routes(t, agents[n].dir+"/rt_protos.d")); !cmp.Equal(before, got) {
			t.Fatalf("routes changed when the agent stopped: %v → %v", before, got)
		}
		if _, err := firewall.New(int(node.Handle)).SetContents(); err != nil {
			t.Fatalf("nftables table gone after the agent stopped: %v", err)
		}
		changes := watchChanges(t, node)
		agents[n] = startAgent(t, cp.Config, node, n, agentOpts{})
		agents[n].waitReady(t, 10*time.Second)
		time.Sleep(200 * time.Millisecond) // the kernel's notifications, if any, arrive
		if got := changes(); len(got) > 0 {
			t.Errorf("the new agent changed the node:\n%s", strings.Join(got, "\n"))
		}
		metrics := scrape(t, agents[n].MetricsURL())
		for _, m := range []string{
			`calyx_agent_route_changes_total{op="add"} 0`,
			`calyx_agent_route_changes_total{op="delete"} 0`,
			`calyx_agent_route_changes_total{op="replace"} 0`,
			fmt.Sprintf(`calyx_agent_routes_programmed %d`, len(before)),
			`calyx_agent_ready 1`,
			`calyx_datapath_info{mode="test-ifb"} 1`,
		} {
			if !strings.Contains(metrics, m+"\n") {
				t.Errorf("metrics lack %q", m)
			}
		}
		for _, m := range []string{"calyx_agent_sync_duration_seconds_count", `calyx_firewall_rule_packets_total{rule="accept IPIP from cluster nodes"}`, `calyx_datapath_packets_total{direction="tx"}`} {
			if !strings.Contains(metrics, m) {
				t.Errorf("metrics lack %s", m)
			}
		}
	})
}

// watchRoute reports when a calyx route to dst appears in ns.
func watchRoute(t *testing.T, ns *testnet.NS, dst netip.Prefix) <-chan time.Time {
	t.Helper()
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	h := ns.Handle
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(done) })
	out := make(chan time.Time, 1)
	go func() {
		for u := range ch {
			if u.Type == unix.RTM_NEWROUTE && u.Protocol == 202 && u.Dst != nil && u.Dst.String() == dst.String() {
				out <- time.Now()
				for range ch {
				}
				return
			}
		}
	}()
	return out
}

// watchChanges collects every calyx route, IPv4 address and nftables
// change in ns from now on.
func watchChanges(t *testing.T, ns *testnet.NS) func() []string {
	t.Helper()
	h := ns.Handle
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	routes := make(chan netlink.RouteUpdate, 4096)
	addrs := make(chan netlink.AddrUpdate, 4096)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	conn, err := firewall.New(int(h)).Conn()
	if err != nil {
		t.Fatal(err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(1024))
	events, err := conn.AddMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return func() []string {
		var out []string
		for {
			select {
			case u := <-routes:
				if u.Protocol == 202 { // the kernel's own (IPv6 link-local) come and go
					out = append(out, fmt.Sprintf("route event %d: %v", u.Type, u.Route))
				}
			case u := <-addrs:
				if u.LinkAddress.IP.To4() != nil {
					out = append(out, fmt.Sprintf("address event: %v new=%v", u.LinkAddress, u.NewAddr))
				}
			case e := <-events:
				out = append(out, fmt.Sprintf("nftables event %d: %v", e.Type, e.Data))
			default:
				return out
			}
		}
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
