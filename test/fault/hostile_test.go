package fault

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

const (
	udpPort = 7777
	burst   = 5 // packets per case
)

// TestHostileIPIP: a machine on the nodes' network that is not a node sends
// IP-in-IP to a node, with a pod as the inner destination: the node
// receives the packets (its NIC's capture shows them), drops and counts
// them, and the pod gets nothing. The same packets from a real node are
// delivered: the drop is for the stranger, not for the packet.
func TestHostileIPIP(t *testing.T) {
	l := sharedLab(t)
	victim := addPod(t, l, "hostile", "victim", node2)
	peer := addPod(t, l, "hostile", "peer", node3)
	rx := listenUDP(t, victim)

	suffix := make([]byte, 2)
	rand.Read(suffix)
	stranger, err := lab.AttachStranger("calyx-lab-x"+hex.EncodeToString(suffix), netip.MustParseAddr("10.10.100.250"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stranger.Detach(); err != nil {
			t.Error(err)
		}
	})

	mode := datapathMode(t, node2)
	// Where the node counts IPIP it refuses: the eBPF datapath drops it on
	// the NIC before netfilter; the kernel's ipip device leaves it to the
	// firewall's input rule.
	drops := func() float64 {
		if mode == "ebpf" {
			return metric(t, node2, "calyx_datapath_drops_total", `direction="rx"`)
		}
		return metric(t, node2, "calyx_firewall_rule_packets_total", `rule="`+firewall.RuleIPIPOthers+`"`)
	}

	labtest.InBothModes(t, []string{node2, node3}, func(t *testing.T) {
		for _, tc := range []struct {
			name, from, outerSrc string
			delivered            bool
		}{
			{name: "from a stranger on the underlay", from: stranger.NetNS, outerSrc: stranger.IP.String(), delivered: false},
			{name: "from node " + node3 + " (control)", from: node3, outerSrc: node3IP, delivered: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tag := fmt.Sprintf("ipip %s %d", tc.from, time.Now().UnixNano())
				inner := udpPacket(t, netip.MustParseAddr(peer.IP), netip.MustParseAddr(victim.IP), []byte(tag))
				capture, err := lab.StartCapture(node2, lab.NICName)
				if err != nil {
					t.Fatal(err)
				}
				before := drops()
				sendRaw(t, tc.from, unix.IPPROTO_IPIP, netip.MustParseAddr(node2IP), inner)
				got := rx.count(tag, time.Second)
				after := drops()
				seen := 0
				for _, p := range capture.Stop() {
					d := lab.Dissect(capture.LinkType(), p.Data)
					if d.OuterSrc == tc.outerSrc && d.OuterDst == node2IP && d.Dst == victim.IP && strings.Contains(string(d.InnerPayload), tag) {
						seen++
					}
				}
				t.Logf("%d IPIP packets %s → %s, inner %s → pod %s (%s): %d seen on %s's %s, %d received by the pod, node's drop counter (%s datapath) +%.0f",
					burst, tc.outerSrc, node2IP, peer.IP, victim.Key(), victim.IP, seen, node2, lab.NICName, got, mode, after-before)
				if seen != burst {
					t.Fatalf("the capture on %s's %s saw %d of the %d packets sent: they were not sent", node2, lab.NICName, seen, burst)
				}
				if tc.delivered {
					if got != burst {
						t.Errorf("the pod received %d of %d packets from a real node, want all", got, burst)
					}
					if after != before {
						t.Errorf("the drop counter rose by %.0f for a real node's packets", after-before)
					}
					return
				}
				if got != 0 {
					t.Errorf("the pod received %d packets from a machine that is not a node", got)
				}
				if after-before < burst {
					t.Errorf("the drop counter rose by %.0f, want %d", after-before, burst)
				}
			})
		}
	})
}

// TestSpoofedSource: a pod sends with another address as its source (a
// pod's on its own node, a pod's on another node, its node's), to a pod on
// another node: the pod's node drops and counts every packet, the receiver
// gets nothing. The pod's own address goes through.
func TestSpoofedSource(t *testing.T) {
	l := sharedLab(t)
	spoofer := addPod(t, l, "spoof", "a", node2)
	neighbour := addPod(t, l, "spoof", "b", node2)
	remote := addPod(t, l, "spoof", "c", node3)
	target := addPod(t, l, "spoof", "rx", node3)
	rx := listenUDP(t, target)
	rule := `rule="` + firewall.RuleAntiSpoof + `"`

	labtest.InBothModes(t, []string{node2, node3}, func(t *testing.T) {
		for _, tc := range []struct {
			name, src string
			delivered bool
		}{
			{name: "another pod's address on the same node", src: neighbour.IP},
			{name: "a pod's address on another node", src: remote.IP},
			{name: "the node's own address", src: node2IP},
			{name: "its own address (control)", src: spoofer.IP, delivered: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tag := fmt.Sprintf("spoof %s %d", tc.src, time.Now().UnixNano())
				pkt := udpPacket(t, netip.MustParseAddr(tc.src), netip.MustParseAddr(target.IP), []byte(tag))
				capture, err := lab.StartCapture(node2, spoofer.HostIface)
				if err != nil {
					t.Fatal(err)
				}
				before := metric(t, node2, "calyx_firewall_rule_packets_total", rule)
				sendRaw(t, spoofer.NetNS, unix.IPPROTO_RAW, netip.MustParseAddr(target.IP), pkt)
				got := rx.count(tag, time.Second)
				after := metric(t, node2, "calyx_firewall_rule_packets_total", rule)
				seen := 0
				for _, p := range capture.Stop() {
					d := lab.Dissect(capture.LinkType(), p.Data)
					if d.Src == tc.src && d.Dst == target.IP && strings.Contains(string(d.InnerPayload), tag) {
						seen++
					}
				}
				t.Logf("%d packets from pod %s (%s) with source %s → pod %s (%s): %d seen on host veth %s, %d received, antispoof counter +%.0f",
					burst, spoofer.Key(), spoofer.IP, tc.src, target.Key(), target.IP, seen, spoofer.HostIface, got, after-before)
				if seen != burst {
					t.Fatalf("the capture on %s saw %d of the %d packets sent: they were not sent", spoofer.HostIface, seen, burst)
				}
				if tc.delivered {
					if got != burst {
						t.Errorf("the receiver got %d of %d packets with the pod's true source, want all", got, burst)
					}
					if after != before {
						t.Errorf("the antispoof counter rose by %.0f for the pod's true source", after-before)
					}
					return
				}
				if got != 0 {
					t.Errorf("the receiver got %d spoofed packets", got)
				}
				if after-before < burst {
					t.Errorf("the antispoof counter rose by %.0f, want %d", after-before, burst)
				}
			})
		}
	})
}

// datapathMode is what the node's agent says drives tunl0.
func datapathMode(t *testing.T, node string) string {
	t.Helper()
	for _, m := range []string{"ebpf", "kernel"} {
		text, err := lab.AgentMetrics(context.Background(), node)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := sample(text, "calyx_datapath_info", `mode="`+m+`"`); ok && v == 1 {
			return m
		}
	}
	t.Fatalf("%s's agent metrics name no datapath (calyx_datapath_info)", node)
	return ""
}

// udpPacket is lab.UDPPacket on the tests' port.
func udpPacket(t *testing.T, src, dst netip.Addr, payload []byte) []byte {
	t.Helper()
	p, err := lab.UDPPacket(src, dst, udpPort, payload)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sendRaw is lab.SendRaw, burst times.
func sendRaw(t *testing.T, netnsName string, proto int, dst netip.Addr, payload []byte) {
	t.Helper()
	if err := lab.SendRaw(netnsName, proto, dst, payload, burst); err != nil {
		t.Fatal(err)
	}
}

// udpReceiver collects the datagrams a pod gets on udpPort.
type udpReceiver struct{ got chan string }

func listenUDP(t *testing.T, p *lab.PodState) *udpReceiver {
	t.Helper()
	var conn net.PacketConn
	err := lab.InNetNS(p.NetNS, func() (err error) {
		conn, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", udpPort))
		return err
	})
	if err != nil {
		t.Fatalf("listening on UDP %d in %s: %v", udpPort, p.Key(), err)
	}
	r := &udpReceiver{got: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				close(r.got)
				return
			}
			r.got <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return r
}

// count waits wait for datagrams and says how many carried tag.
func (r *udpReceiver) count(tag string, wait time.Duration) int {
	n := 0
	deadline := time.After(wait)
	for {
		select {
		case m, ok := <-r.got:
			if !ok {
				return n
			}
			if m == tag {
				n++
			}
		case <-deadline:
			return n
		}
	}
}
