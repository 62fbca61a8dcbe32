package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

var (
	addr   = netip.MustParseAddr
	prefix = netip.MustParsePrefix
)

// rulesOf is each chain's rules as their comments, with handles.
func rulesOf(t *testing.T, f *Firewall) (map[string][]string, map[string][]uint64) {
	t.Helper()
	c, err := f.Conn()
	if err != nil {
		t.Fatal(err)
	}
	comments, handles := map[string][]string{}, map[string][]uint64{}
	for _, ch := range chains(desired.Firewall{}) {
		rules, err := c.GetRules(table, &nftables.Chain{Table: table, Name: ch.name})
		if err != nil {
			t.Fatalf("rules of %s: %v", ch.name, err)
		}
		for _, r := range rules {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			comments[ch.name] = append(comments[ch.name], cm)
			handles[ch.name] = append(handles[ch.name], r.Handle)
		}
	}
	return comments, handles
}

func wantRules(t *testing.T) map[string][]string {
	out := map[string][]string{}
	for _, ch := range chains(desired.Firewall{}) {
		for _, r := range ch.rules {
			cm, err := comment(r)
			if err != nil {
				t.Fatal(err)
			}
			out[ch.name] = append(out[ch.name], cm)
		}
	}
	return out
}

func TestReconcile(t *testing.T) {
	ns := testnet.New(t, "cx-fw")
	f := New(int(ns.Handle))
	fw := desired.Firewall{
		NodeIPs: []netip.Addr{addr("10.10.100.208"), addr("10.10.100.209")},
		// Overlapping and adjacent ranges: merged into intervals.
		PoolCIDRs:    []netip.Prefix{prefix("192.168.0.0/16"), prefix("10.244.0.0/16"), prefix("10.244.1.0/24"), prefix("10.245.0.0/16")},
		NATPoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")},
	}
	res, err := f.Reconcile(fw)
	if err != nil {
		t.Fatalf("first Reconcile: %v", err)
	}
	if !res.CreatedTable {
		t.Errorf("result %+v: want the table created", res)
	}
	wantSets := map[string][]string{
		SetNodeIPs:  {"10.10.100.208", "10.10.100.209"},
		SetPools:    {"10.244.0.0/15", "192.168.0.0/16"},
		SetNATPools: {"192.168.0.0/16"},
	}
	checkSets := func(step string, want map[string][]string) {
		t.Helper()
		got, err := f.SetContents()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: sets (-want +got):\n%s", step, diff)
		}
	}
	checkSets("created", wantSets)
	comments, handles := rulesOf(t, f)
	if diff := cmp.Diff(wantRules(t), comments); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}

	if res, err := f.Reconcile(fw); err != nil || res.Changed() {
		t.Errorf("second Reconcile = %+v, %v; want no change", res, err)
	}

	// A node leaves, two join, the NAT pool goes: the sets change in
	// place, the rules are the same rules (same handles).
	fw.NodeIPs = []netip.Addr{addr("10.10.100.209"), addr("10.10.100.210"), addr("10.10.200.7")}
	fw.NATPoolCIDRs = nil
	res, err = f.Reconcile(fw)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{UpdatedSets: []string{SetNodeIPs, SetNATPools}}, res); diff != "" {
		t.Errorf("set update result (-want +got):\n%s", diff)
	}
	wantSets[SetNodeIPs] = []string{"10.10.100.209", "10.10.100.210", "10.10.200.7"}
	wantSets[SetNATPools] = nil
	checkSets("updated", wantSets)
	if _, h := rulesOf(t, f); !cmp.Equal(handles, h) {
		t.Errorf("rule handles changed from %v to %v: rules were rebuilt for a set change", handles, h)
	}

	// Someone deletes a rule, and adds one of their own to our chain.
	c, _ := f.Conn()
	rules, err := c.GetRules(table, &nftables.Chain{Table: table, Name: "input"})
	if err != nil || len(rules) != 2 {
		t.Fatalf("input rules: %v, %v", rules, err)
	}
	if err := c.DelRule(rules[1]); err != nil {
		t.Fatal(err)
	}
	c.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Table: table, Name: "forward"}, Exprs: ipProtocolIPIP()})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	res, err = f.Reconcile(fw)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{RewroteChains: []string{"forward", "input"}}, res); diff != "" {
		t.Errorf("repair result (-want +got):\n%s", diff)
	}
	if comments, _ := rulesOf(t, f); !cmp.Equal(wantRules(t), comments) {
		t.Errorf("rules after repair = %v", comments)
	}

	// The whole table deleted: back as it was.
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if res, err := f.Reconcile(fw); err != nil || !res.CreatedTable {
		t.Fatalf("Reconcile after table deletion = %+v, %v", res, err)
	}
	checkSets("recreated", wantSets)
}

// The rules do what they say, with real packets between namespaces: node A
// with a pod, node B and a stranger on the same underlay.
func TestRulesOnTheWire(t *testing.T) {
	ul := testnet.NewUnderlay(t)
	nodeA := ul.AddNode(t, "cx-fwa", "10.10.100.209/24")
	nodeB := ul.AddNode(t, "cx-fwb", "10.10.100.208/24")
	stranger := ul.AddNode(t, "cx-fwx", "10.10.100.66/24")
	nodeA.Sysctl(t, "net/ipv4/ip_forward", "1")
	// Real nodes have a default route; proxy ARP answers the pods for
	// 169.254.1.1 only because of it.
	nodeA.IP(t, "route", "add", "default", "via", "10.10.100.66")
	pod := testnet.AddPod(t, nodeA, "192.168.154.195")
	// A second address in the pod, which its node never routed to it: the
	// source of spoofed packets.
	pod.NS.IP(t, "addr", "add", "192.168.154.199/32", "dev", "eth0")

	f := New(int(nodeA.Handle))
	fw := desired.Firewall{
		NodeIPs:      []netip.Addr{addr("10.10.100.208"), addr("10.10.100.209")},
		PoolCIDRs:    []netip.Prefix{prefix("192.168.0.0/16")},
		NATPoolCIDRs: []netip.Prefix{prefix("192.168.0.0/16")},
	}
	if _, err := f.Reconcile(fw); err != nil {
		t.Fatal(err)
	}
	counter := func(rule string) uint64 {
		t.Helper()
		cs, err := f.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return cs[rule].Packets
	}

	t.Run("natOutgoing masquerades pod traffic leaving the pools", func(t *testing.T) {
		rx := listenUDP(t, stranger, "10.10.100.66:7000")
		sendUDP(t, pod.NS, "192.168.154.195", "10.10.100.66:7000")
		if got := recvFrom(t, rx); got != "10.10.100.209" {
			t.Errorf("stranger saw source %q, want the node's address 10.10.100.209", got)
		}
		fw.NATPoolCIDRs = nil
		if _, err := f.Reconcile(fw); err != nil {
			t.Fatal(err)
		}
		sendUDP(t, pod.NS, "192.168.154.195", "10.10.100.66:7000")
		if got := recvFrom(t, rx); got != "192.168.154.195" {
			t.Errorf("without natOutgoing the stranger saw source %q, want the pod's 192.168.154.195", got)
		}
	})

	t.Run("a pod's packets with another source are dropped", func(t *testing.T) {
		rx := listenUDP(t, nodeA, "10.10.100.209:7001")
		before := counter(RuleAntiSpoof)
		sendUDP(t, pod.NS, "192.168.154.195", "10.10.100.209:7001")
		if got := recvFrom(t, rx); got != "192.168.154.195" {
			t.Fatalf("node saw %q from the pod's own address", got)
		}
		sendUDP(t, pod.NS, "192.168.154.199", "10.10.100.209:7001")
		if got := recvFrom(t, rx); got != "" {
			t.Errorf("a spoofed packet from %s arrived", got)
		}
		if d := counter(RuleAntiSpoof) - before; d != 1 {
			t.Errorf("anti-spoof rule counted %d packets, want 1", d)
		}
	})

	t.Run("IPIP only from cluster nodes", func(t *testing.T) {
		fromNodes, fromOthers := counter(RuleIPIPNodes), counter(RuleIPIPOthers)
		sendIPIP(t, nodeB, "10.10.100.209")
		sendIPIP(t, stranger, "10.10.100.209")
		sendIPIP(t, stranger, "10.10.100.209")
		deadline := time.Now().Add(2 * time.Second)
		for {
			n, o := counter(RuleIPIPNodes)-fromNodes, counter(RuleIPIPOthers)-fromOthers
			if n == 1 && o == 2 {
				t.Logf("accepted %d IPIP packet from node B, dropped %d from the stranger", n, o)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("accepted %d from the node (want 1), dropped %d from the stranger (want 2)", n, o)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func listenUDP(t *testing.T, ns *testnet.NS, at string) *net.UDPConn {
	var c *net.UDPConn
	ns.Do(t, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(at)))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func sendUDP(t *testing.T, ns *testnet.NS, from, to string) {
	ns.Do(t, func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(from)}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	})
}

// recvFrom is the source of the next datagram, or "" when none comes.
func recvFrom(t *testing.T, c *net.UDPConn) string {
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	_, from, err := c.ReadFromUDP(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return from.IP.String()
}

// sendIPIP sends one IP-in-IP packet from ns to dst: the kernel writes the
// outer header (protocol 4); the payload is an inner IPv4/UDP packet.
func sendIPIP(t *testing.T, ns *testnet.NS, dst string) {
	inner := []byte{
		0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, // v4, len 28, ttl 64, udp, csum later
		192, 168, 29, 67, 192, 168, 154, 195,
		0x30, 0x39, 0x1b, 0x58, 0, 8, 0, 0, // udp 12345 → 7000
	}
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(inner[i])<<8 | uint32(inner[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	inner[10], inner[11] = byte(^sum>>8), byte(^sum)
	ns.Do(t, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_IPIP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer syscall.Close(fd)
		sa := &syscall.SockaddrInet4{Addr: addr(dst).As4()}
		return syscall.Sendto(fd, inner, 0, sa)
	})
}

func TestIntervals(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"192.168.0.0/16"}, []string{"192.168.0.0/16"}},
		{[]string{"10.0.1.0/24", "10.0.0.0/24"}, []string{"10.0.0.0/23"}},
		{[]string{"10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "192.168.3.0/24"}, []string{"10.0.0.0/8", "192.168.1.0/24", "192.168.3.0/24"}},
		{[]string{"10.0.0.0/24", "10.0.1.0/25"}, []string{"10.0.0.0-10.0.1.127"}},
		{[]string{"255.255.255.0/24"}, []string{"255.255.255.0/24"}},
	}
	for _, tt := range tests {
		var ps []netip.Prefix
		for _, s := range tt.in {
			ps = append(ps, prefix(s))
		}
		got := elementsText(true, slices.Clone(intervals(ps)))
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("intervals(%v) (-want +got):\n%s", tt.in, diff)
		}
	}
}
