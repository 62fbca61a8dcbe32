package tunnel

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/desired"
)

// A lab of network namespaces for the datapath's tests and benchmark:
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

// netNS is a named network namespace the test created.
type netNS struct {
	name string
	h    netns.NsHandle
}

func randomSuffix(tb testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// inThread runs fn on a fresh OS thread that enters ns first and dies
// afterwards, so no thread ever returns to the runtime in the wrong
// namespace.
func inThread(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if ns >= 0 {
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("entering network namespace: %w", err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

func newNetNS(tb testing.TB, name string) *netNS {
	tb.Helper()
	var h netns.NsHandle
	err := inThread(-1, func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		tb.Fatalf("creating network namespace %s: %v (the tests must run as root)", name, err)
	}
	n := &netNS{name: name, h: h}
	tb.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("deleting network namespace %s: %v", name, err)
		}
	})
	return n
}

func (n *netNS) do(tb testing.TB, fn func() error) {
	tb.Helper()
	if err := inThread(n.h, fn); err != nil {
		tb.Fatalf("in %s: %v", n.name, err)
	}
}

func (n *netNS) handle(tb testing.TB) *netlink.Handle {
	tb.Helper()
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		tb.Fatalf("netlink in %s: %v", n.name, err)
	}
	tb.Cleanup(h.Close)
	return h
}

func (n *netNS) sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	n.do(tb, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// command runs name in the namespace.
func (n *netNS) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

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

func addAddr(tb testing.TB, h *netlink.Handle, link string, p netip.Prefix) {
	tb.Helper()
	must(tb, h.AddrAdd(linkByName(tb, h, link), &netlink.Addr{IPNet: ipNet(p)}), fmt.Sprintf("adding %s to %s", p, link))
}

func setUp(tb testing.TB, h *netlink.Handle, names ...string) {
	tb.Helper()
	for _, name := range names {
		must(tb, h.LinkSetUp(linkByName(tb, h, name)), "bringing up "+name)
	}
}

type labNode struct {
	name     string
	ns       *netNS
	nl       *netlink.Handle
	ip       netip.Addr   // underlay address on ens160
	block    netip.Prefix // the node's pod block
	tunnelIP netip.Addr   // tunl0's address: the block's first
	pod      *netNS
	podIP    netip.Addr
	podVeth  string // node side of the pod's veth
	dp       Datapath
	remote   *labNode
}

type lab struct {
	prefix   string
	underlay *netNS
	nodes    [2]*labNode
	outsider *netNS
	outIP    netip.Addr
}

const (
	labMTU     = 1500
	tunnelMTU  = labMTU - 20
	underlayGW = "10.10.100.1"
)

// newLab builds the namespaces; the datapath is not set up yet.
func newLab(tb testing.TB) *lab {
	tb.Helper()
	l := &lab{prefix: "calyx-" + randomSuffix(tb)}
	l.underlay = newNetNS(tb, l.prefix+"-underlay")
	u := l.underlay.handle(tb)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: labMTU}}
	must(tb, u.LinkAdd(br), "creating the underlay bridge")
	addAddr(tb, u, "br0", netip.MustParsePrefix(underlayGW+"/24"))
	setUp(tb, u, "lo", "br0")

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
		n.ns = newNetNS(tb, fmt.Sprintf("%s-node%d", l.prefix, i+2))
		n.nl = n.ns.handle(tb)
		l.plugIntoUnderlay(tb, n.ns, fmt.Sprintf("node%d", i+2), n.ip)
		setUp(tb, n.nl, "lo")
		n.ns.sysctl(tb, "net/ipv4/ip_forward", "1")
		// Real nodes have a default route; proxy ARP for 169.254.1.1 needs one.
		must(tb, n.nl.RouteAdd(&netlink.Route{
			Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")),
			Gw:  net.ParseIP(underlayGW),
		}), "adding the node's default route")
		l.addPod(tb, n)
		l.nodes[i] = n
	}
	l.nodes[0].remote, l.nodes[1].remote = l.nodes[1], l.nodes[0]

	l.outIP = netip.MustParseAddr("10.10.100.250")
	l.outsider = newNetNS(tb, l.prefix+"-outsider")
	l.plugIntoUnderlay(tb, l.outsider, "outsider", l.outIP)
	return l
}

// plugIntoUnderlay gives ns an ens160 on the underlay bridge.
func (l *lab) plugIntoUnderlay(tb testing.TB, ns *netNS, port string, ip netip.Addr) {
	tb.Helper()
	u := l.underlay.handle(tb)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: labMTU},
		PeerName:      "ens160",
		PeerMTU:       labMTU,
		PeerNamespace: netlink.NsFd(int(ns.h)),
	}
	must(tb, u.LinkAdd(veth), "creating the underlay port "+port)
	must(tb, u.LinkSetMaster(linkByName(tb, u, port), linkByName(tb, u, "br0").(*netlink.Bridge)), "attaching "+port+" to br0")
	setUp(tb, u, port)
	h := ns.handle(tb)
	addAddr(tb, h, "ens160", netip.PrefixFrom(ip, 24))
	setUp(tb, h, "lo", "ens160")
}

// addPod wires a pod namespace to n the way the CNI plugin does.
func (l *lab) addPod(tb testing.TB, n *labNode) {
	tb.Helper()
	n.pod = newNetNS(tb, n.ns.name+"-pod")
	n.podVeth = "cali" + n.name[len(n.name)-1:] + "0123456789"
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.podVeth, MTU: tunnelMTU, HardwareAddr: net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}},
		PeerName:      "eth0",
		PeerMTU:       tunnelMTU,
		PeerNamespace: netlink.NsFd(int(n.pod.h)),
	}
	must(tb, n.nl.LinkAdd(veth), "creating the pod's veth")
	setUp(tb, n.nl, n.podVeth)
	n.ns.sysctl(tb, "net/ipv4/conf/"+n.podVeth+"/proxy_arp", "1")
	n.ns.sysctl(tb, "net/ipv4/neigh/"+n.podVeth+"/proxy_delay", "0")
	must(tb, n.nl.RouteAdd(&netlink.Route{
		LinkIndex: linkByName(tb, n.nl, n.podVeth).Attrs().Index,
		Dst:       ipNet(netip.PrefixFrom(n.podIP, 32)),
		Scope:     netlink.SCOPE_LINK,
	}), "adding the route to the pod")

	p := n.pod.handle(tb)
	addAddr(tb, p, "eth0", netip.PrefixFrom(n.podIP, 32))
	setUp(tb, p, "lo", "eth0")
	eth0 := linkByName(tb, p, "eth0").Attrs().Index
	gw := net.ParseIP("169.254.1.1")
	must(tb, p.RouteAdd(&netlink.Route{LinkIndex: eth0, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}), "adding the pod's gateway route")
	must(tb, p.RouteAdd(&netlink.Route{LinkIndex: eth0, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: gw}), "adding the pod's default route")
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
	dp, reason, err := New(SelectEBPF, Options{NetNS: n.ns.h, Logger: testLogger(tb).With("node", n.name)})
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
