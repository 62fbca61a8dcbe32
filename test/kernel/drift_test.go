package kernel

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/lab"
)

// Drift on the kernel's tunl0, by hand: its address deleted, the link set
// down; the agent puts both back.
func TestKernelTunnelDriftRepaired(t *testing.T) {
	l := sharedLab(t)
	addr := strings.Fields(guestOut(t, l, "ip", "-4", "-o", "addr", "show", "dev", "tunl0"))
	if len(addr) < 4 {
		t.Fatalf("tunl0 on %s has no address: %v", lab.KernelNodeName, addr)
	}
	cidr := addr[3]
	guestOut(t, l, "ip", "addr", "del", cidr, "dev", "tunl0")
	took := waitFor(t, 10*time.Second, "tunl0's address back", func() (bool, string) {
		out, _ := l.KernelNode().Guest().Output(context.Background(), "ip", "-4", "-o", "addr", "show", "dev", "tunl0")
		return strings.Contains(out, cidr), out
	})
	t.Logf("tunl0's %s deleted by hand: back after %s", cidr, took.Round(time.Millisecond))
	guestOut(t, l, "ip", "link", "set", "tunl0", "down")
	took = waitFor(t, 10*time.Second, "tunl0 up again", func() (bool, string) {
		out, _ := l.KernelNode().Guest().Output(context.Background(), "ip", "link", "show", "tunl0")
		return strings.Contains(out, ",UP"), out
	})
	t.Logf("tunl0 set down by hand: up again after %s", took.Round(time.Millisecond))
}

// IP-in-IP from a machine that is not a node, aimed at a pod on the kernel
// node: the nftables rule drops and counts it, the pod gets nothing; the
// same packets from a node arrive.
func TestKernelNodeDropsStrangersIPIP(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	k, err := l.KernelNode().AddPod(ctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	defer l.KernelNode().DelPod(context.Background(), "victim")
	stranger, err := lab.AttachStranger("calyx-lab-kx", netip.MustParseAddr("10.10.100.251"))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Detach()
	for _, tc := range []struct {
		name, from string
		delivered  bool
	}{
		{"from a stranger on the underlay", stranger.NetNS, false},
		{"from node learn-k8s-3 (control)", "learn-k8s-3", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := lab.UDPPacket(netip.MustParseAddr("192.168.250.1"), netip.MustParseAddr(k.IP), 7777, []byte(tc.name))
			if err != nil {
				t.Fatal(err)
			}
			dropsBefore, rxBefore := ipipDrops(t, l), podRx(t, l, k.Name)
			if err := lab.SendRaw(tc.from, unix.IPPROTO_IPIP, netip.MustParseAddr(kernelIP), inner, 5); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			drops, rx := ipipDrops(t, l)-dropsBefore, podRx(t, l, k.Name)-rxBefore
			t.Logf("5 IPIP packets %s to %s's pod: the drop rule counted %d, the pod took in %d UDP datagrams", tc.name, lab.KernelNodeName, drops, rx)
			if tc.delivered && (rx < 5 || drops != 0) {
				t.Errorf("a node's packets: %d received, %d dropped; want 5 received", rx, drops)
			}
			if !tc.delivered && (rx != 0 || drops < 5) {
				t.Errorf("a stranger's packets: %d received, %d dropped; want none received, 5 dropped", rx, drops)
			}
		})
	}
}

// ipipDrops reads the kernel node's agent's count of the firewall rule
// that drops IPIP from anyone but a node.
func ipipDrops(t *testing.T, l *lab.Lab) int {
	t.Helper()
	metrics := guestOut(t, l, "wget", "-q", "-O", "-", "http://127.0.0.1:9091/metrics")
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "calyx_firewall_rule_packets_total{") && strings.Contains(line, `rule="`+firewall.RuleIPIPOthers+`"`) {
			var v float64
			fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v)
			return int(v)
		}
	}
	t.Fatalf("%s's agent has no calyx_firewall_rule_packets_total for %q", lab.KernelNodeName, firewall.RuleIPIPOthers)
	return 0
}

// podRx counts the UDP datagrams the pod's kernel took in, to a socket or
// not (NoPorts): ARP or IPv6 neighbour chatter on eth0 does not count.
func podRx(t *testing.T, l *lab.Lab, pod string) int {
	t.Helper()
	snmp := guestOut(t, l, "ip", "netns", "exec", pod, "cat", "/proc/net/snmp")
	var header []string
	for _, line := range strings.Split(snmp, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		n := 0
		for i, name := range header {
			if (name == "InDatagrams" || name == "NoPorts") && i < len(fields) {
				v, err := strconv.Atoi(fields[i])
				if err != nil {
					t.Fatalf("pod %s's /proc/net/snmp: %q: %v", pod, line, err)
				}
				n += v
			}
		}
		return n
	}
	t.Fatalf("pod %s's /proc/net/snmp has no Udp: lines:\n%s", pod, snmp)
	return 0
}
