package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// syntheticCluster is n remote blocks spread over 100 nodes, plus this
// node's own four blocks.
func syntheticCluster(n int) desired.Input {
	in := desired.Input{
		Pools: []*v1alpha1.IPPool{{ObjectMeta: metav1.ObjectMeta{Name: "default"},
			Spec: v1alpha1.IPPoolSpec{CIDR: "10.128.0.0/9", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways, NATOutgoing: true}}},
		Node:  "node-0",
		Local: desired.Local{Iface: "ens160", MTU: 1500},
	}
	for i := 0; i <= 100; i++ {
		in.Nodes = append(in.Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        fmt.Sprintf("node-%d", i),
			Annotations: map[string]string{v1alpha1.AnnotationIPv4Address: fmt.Sprintf("10.10.%d.%d/16", i/250, i%250+1)},
		}})
	}
	for i := 0; i < n+4; i++ {
		node := "node-0"
		if i >= 4 {
			node = fmt.Sprintf("node-%d", 1+i%100)
		}
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + i>>10), byte(i >> 2), byte(i & 3 << 6)}), 26)
		in.Blocks = append(in.Blocks, &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: ipam.BlockName(cidr)},
			Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr.String(), Node: node, Pool: "default"}})
	}
	return in
}

// benchNode is a namespace with the devices the routes name.
func benchNode(b *testing.B) *testnet.NS {
	ns := testnet.New(b, "cx-bench")
	ns.IP(b, "link", "add", "ens160", "type", "ifb")
	ns.IP(b, "addr", "add", "10.10.0.1/16", "dev", "ens160")
	ns.IP(b, "link", "set", "ens160", "up")
	ns.IP(b, "link", "add", "tunl0", "type", "ifb")
	ns.IP(b, "link", "set", "tunl0", "up")
	return ns
}

// BenchmarkSync is one sync of the agent's reconcilers, from the desired
// state to the kernel: cold (the routes are not there yet, as on a fresh
// node) and warm (everything in place, the periodic resync).
//
//	go test -run '^$' -bench Sync -benchtime 5x ./agent/
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 5000, 10000} {
		in := syntheticCluster(n)
		b.Run(fmt.Sprintf("blocks=%d/cold", n), func(b *testing.B) {
			ns := benchNode(b)
			h := ns.Netlink(b)
			tbl, fw := routes.New(h), firewall.New(int(ns.Handle))
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				if _, err := tbl.Reconcile(nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				st := desired.Compute(in)
				res, err := tbl.Reconcile(st.Routes)
				if err != nil || res.Added != n+4 {
					b.Fatalf("Reconcile = %+v, %v", res, err)
				}
				if _, err := fw.Reconcile(st.Firewall); err != nil {
					b.Fatal(err)
				}
			}
			reportRSS(b)
		})
		b.Run(fmt.Sprintf("blocks=%d/warm", n), func(b *testing.B) {
			ns := benchNode(b)
			h := ns.Netlink(b)
			tbl, fw := routes.New(h), firewall.New(int(ns.Handle))
			st := desired.Compute(in)
			if _, err := tbl.Reconcile(st.Routes); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				st := desired.Compute(in)
				res, err := tbl.Reconcile(st.Routes)
				if err != nil || res.Changed() {
					b.Fatalf("Reconcile = %+v, %v", res, err)
				}
				if _, err := fw.Reconcile(st.Firewall); err != nil {
					b.Fatal(err)
				}
			}
			reportRSS(b)
		})
	}
}

// BenchmarkAgentStart is the whole agent against a real API server that
// holds n remote blocks: from start to every route programmed, through
// the informers' first list.
//
//	go test -run '^$' -bench AgentStart -benchtime 3x ./agent/
func BenchmarkAgentStart(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("blocks=%d", n), func(b *testing.B) {
			cp := cptest.Start(b)
			c := newCluster(b, cp.Config)
			c.addPool(b, "default", "10.128.0.0/9", v1alpha1.IPIPModeAlways)
			in := syntheticCluster(n)
			ctx := context.Background()
			begin := time.Now()
			for _, node := range in.Nodes[1:] {
				if _, err := c.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			work := make(chan *v1alpha1.IPAMBlock)
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for blk := range work {
						if _, err := c.calyx.CalyxV1alpha1().IPAMBlocks().Create(ctx, blk, metav1.CreateOptions{}); err != nil {
							b.Error(err)
						}
					}
				}()
			}
			for _, blk := range in.Blocks[4:] {
				work <- blk
			}
			close(work)
			wg.Wait()
			b.Logf("%d nodes and %d blocks created in the API in %s", len(in.Nodes)-1, n, time.Since(begin).Round(time.Millisecond))
			c.addNode(b, "node-0", "10.10.0.1")
			node := benchNode(b)
			h := node.Netlink(b)
			before := rssKB()
			for b.Loop() {
				b.StopTimer()
				flushCalyxRoutes(b, h)
				b.StartTimer()
				a := startAgent(b, cp.Config, node, "node-0", agentOpts{})
				for routesProgrammed(b, h) < n {
					time.Sleep(time.Millisecond)
				}
				b.StopTimer()
				a.stop()
				b.StartTimer()
			}
			b.ReportMetric(float64(rssKB()-before)/1024, "MB-rss-growth")
			reportRSS(b)
		})
	}
}

func routesProgrammed(b *testing.B, h *netlink.Handle) int {
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0
	}
	return len(rs)
}

func flushCalyxRoutes(b *testing.B, h *netlink.Handle) {
	if _, err := routes.New(h).Reconcile(nil); err != nil {
		b.Fatal(err)
	}
}

func rssKB() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			v, _ := strconv.Atoi(f[1])
			return v
		}
	}
	return 0
}

func reportRSS(b *testing.B) {
	b.ReportMetric(float64(rssKB())/1024, "MB-rss")
}
