package tunnel

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

// A lab of network namespaces for the datapath's tests and benchmark,
// built with agent/testnet like every other agent test's:
//
//	underlay: bridge br0 10.10.100.1/24
//	  ├── node learn-k8s-2: ens160 10.10.100.208/24, pod 192.168.29.67 (block .29.64/26)
//	  ├── node learn-k8s-3: ens160 10.10.100.209/24, pod 192.168.154.195 (block .154.192/26)
//	  └── outsider:          ens160 10.10.100.250/24 (on the underlay, not a node)
//
// Pods are wired as the CNI plugin wires them: eth0 with a /32, default via
// 169.254.1.1, answered by proxy ARP on the node's cali* end. Nothing here
// touches the test process's own namespace; everything is removed in
// t.Cleanup.

func must(tb testing.TB, err error, what string) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

func linkByName(tb testing.TB, h *netlink.Handle, name string) netlink.Link {
	tb.Helper()
	l, err := h.LinkByName(name)
	must(tb, err, "looking up "+name)
	return l
}

func setUp(tb testing.TB, h *netlink.Handle, names ...string) {
	tb.Helper()
	for _, name := range names {
		must(tb, h.LinkSetUp(linkByName(tb, h, name)), "bringing up "+name)
	}
}

type labNode struct {
	name     string
	ns       *testnet.NS
	nl       *netlink.Handle
	ip       netip.Addr   // underlay address on ens160
	block    netip.Prefix // the node's pod block
	tunnelIP netip.Addr   // tunl0's address: the block's first
	pod      *testnet.NS
	podIP    netip.Addr
	podVeth  string // node side of the pod's veth
	dp       Datapath
	remote   *labNode
}

type lab struct {
	underlay *testnet.Underlay
	nodes    [2]*labNode
	outsider *testnet.NS
	outIP    netip.Addr
}

const (
	labMTU     = 1500 // the veths' default, which the underlay keeps
	tunnelMTU  = labMTU - 20
	underlayGW = "10.10.100.1"
)

// newLab builds the namespaces; the datapath is not set up yet.
func newLab(tb testing.TB) *lab {
	tb.Helper()
	l := &lab{underlay: testnet.NewUnderlay(tb)}
	l.underlay.AddGateway(tb, underlayGW+"/24")

	specs := []struct {
		name, ip, block, pod string
	}{
		{"learn-k8s-2", "10.10.100.208", "192.168.29.64/26", "192.168.29.67"},
		{"learn-k8s-3", "10.10.100.209", "192.168.154.192/26", "192.168.154.195"},
	}
	for i, s := range specs {
		n := &labNode{
			name:  s.name,
			ip:    netip.MustParseAddr(s.ip),
			block: netip.MustParsePrefix(s.block),
			podIP: netip.MustParseAddr(s.pod),
		}
		n.tunnelIP = n.block.Addr()
		n.ns = l.underlay.AddNode(tb, fmt.Sprintf("cx-tun-node%d", i+2), s.ip+"/24")
		n.nl = n.ns.Netlink(tb)
		n.ns.Sysctl(tb, "net/ipv4/ip_forward", "1")
		// Real nodes have a default route; proxy ARP for 169.254.1.1 needs one.
		must(tb, n.nl.RouteAdd(&netlink.Route{
			Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")),
			Gw:  net.ParseIP(underlayGW),
		}), "adding the node's default route")
		pod := testnet.AddPod(tb, n.ns, s.pod, testnet.WithMTU(tunnelMTU))
		n.pod, n.podVeth = pod.NS, pod.Host
		l.nodes[i] = n
	}
	l.nodes[0].remote, l.nodes[1].remote = l.nodes[1], l.nodes[0]

	l.outIP = netip.MustParseAddr("10.10.100.250")
	l.outsider = l.underlay.AddNode(tb, "cx-tun-out", l.outIP.String()+"/24")
	return l
}

// config is the tunnel configuration the agent would compute for n.
func (n *labNode) config() desired.TunnelConfig {
	return desired.TunnelConfig{
		Address:       n.tunnelIP,
		MTU:           tunnelMTU,
		UnderlayIface: "ens160",
		UnderlayIP:    n.ip,
		Peers:         []desired.Peer{{CIDR: n.remote.block, NodeIP: n.remote.ip}},
		NodeIPs:       []netip.Addr{n.ip, n.remote.ip},
	}
}

// startEBPF creates the datapath in n's namespace and applies n's config.
func (n *labNode) startEBPF(tb testing.TB) *EBPF {
	tb.Helper()
	dp, reason, err := New(SelectEBPF, Options{NetNS: n.ns.Handle, Logger: testLogger(tb).With("node", n.name)})
	must(tb, err, n.name+": tunnel.New")
	tb.Logf("%s: %s", n.name, reason)
	must(tb, dp.Set(n.config()), n.name+": Set")
	n.dp = dp
	tb.Cleanup(func() { dp.Close() })
	return dp.(*EBPF)
}

// routeViaTunnel adds the route the agent makes for the remote block.
func (n *labNode) routeViaTunnel(tb testing.TB) {
	tb.Helper()
	n.replaceRoute(tb, DeviceName, n.remote.ip, true)
}

// replaceRoute points the remote block at gw through dev.
func (n *labNode) replaceRoute(tb testing.TB, dev string, gw netip.Addr, onlink bool) {
	tb.Helper()
	r := &netlink.Route{
		LinkIndex: linkByName(tb, n.nl, dev).Attrs().Index,
		Dst:       ipNet(n.remote.block),
		Gw:        gw.AsSlice(),
	}
	if onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	must(tb, n.nl.RouteReplace(r), fmt.Sprintf("%s: route %s via %s dev %s", n.name, n.remote.block, gw, dev))
}

// testLogger sends the datapath's logs to the test's output.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
