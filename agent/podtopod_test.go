package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestPodToPod is the article's scenario with the real datapath behind
// tunl0 (on this kernel, without an ipip module, the eBPF one): a client
// pod on learn-k8s-3 reaches a server pod on learn-k8s-2 by ping, TCP and
// UDP; the server sees the client's pod address, and the server node's NIC
// carries IP protocol 4 between the node addresses.
func TestPodToPod(t *testing.T) {
	cp := cptest.Start(t)
	c := newCluster(t, cp.Config)
	c.addPool(t, "default", "192.168.0.0/16", v1alpha1.IPIPModeAlways)
	ul := testnet.NewUnderlay(t)
	nodes := map[string]*testnet.NS{}
	agents := map[string]*runningAgent{}
	for _, n := range []string{"learn-k8s-2", "learn-k8s-3"} {
		c.addNode(t, n, nodeIPs[n])
		nodes[n] = ul.AddNode(t, "cx-"+strings.TrimPrefix(n, "learn-k8s-"), nodeIPs[n]+"/24")
		// Nodes have a default route; proxy ARP answers pods for
		// 169.254.1.1 only because of it. Nothing is sent there.
		nodes[n].IP(t, "route", "add", "default", "via", "10.10.100.1")
		agents[n] = startAgent(t, cp.Config, nodes[n], n, agentOpts{datapath: RealDatapath})
	}
	for _, a := range agents {
		a.waitReady(t, 30*time.Second)
	}

	alloc, err := ipam.NewForConfig(cp.Config, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	podIP := func(node, pod string) string {
		a, err := alloc.AutoAssign(context.Background(), node, "k8s-pod-network."+pod, ipam.Attrs{Namespace: "default", Pod: pod, ContainerID: pod})
		if err != nil {
			t.Fatalf("IP for %s: %v", pod, err)
		}
		return a.Addr.String()
	}
	server := testnet.AddPod(t, nodes["learn-k8s-2"], podIP("learn-k8s-2", "tftp-server"))
	client := testnet.AddPod(t, nodes["learn-k8s-3"], podIP("learn-k8s-3", "tftp-client"))
	t.Logf("server pod %s on learn-k8s-2, client pod %s on learn-k8s-3", server.IP, client.IP)

	// The routes the article shows, on the client's node.
	want := c.expectedRoutes(t, "learn-k8s-3", nodeIPs)
	eventually(t, 2*time.Second, "routes on learn-k8s-3", func() error {
		if got := sorted(nodes["learn-k8s-3"].Routes(t, agents["learn-k8s-3"].dir+"/rt_protos.d")); !slices.Equal(want, got) {
			return fmt.Errorf("routes %q, want %q", got, want)
		}
		return nil
	})
	t.Logf("learn-k8s-3:\n  %s", strings.Join(nodes["learn-k8s-3"].Routes(t, agents["learn-k8s-3"].dir+"/rt_protos.d"), "\n  "))

	nic := nodes["learn-k8s-2"].Listen(t, "ens160")

	t.Run("ping", func(t *testing.T) {
		if got := client.NS.Ping(t, netip.MustParseAddr(server.IP), 3); got != 3 {
			t.Fatalf("ping %s from the client pod: %d of 3 answered", server.IP, got)
		}
	})

	t.Run("the server node's NIC carries IPIP between node addresses", func(t *testing.T) {
		pkt := nic.Next(2*time.Second, func(ip []byte) bool { return ip[9] == 4 })
		if pkt == nil {
			t.Fatal("no IP protocol 4 packet on learn-k8s-2's ens160")
		}
		ihl := int(pkt[0]&0xf) * 4
		outer := fmt.Sprintf("%s > %s", netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])))
		inner := fmt.Sprintf("%s > %s", netip.AddrFrom4([4]byte(pkt[ihl+12:ihl+16])), netip.AddrFrom4([4]byte(pkt[ihl+16:ihl+20])))
		t.Logf("captured on ens160: outer %s proto 4, inner %s", outer, inner)
		wantOuter := map[string]bool{"10.10.100.209 > 10.10.100.208": true, "10.10.100.208 > 10.10.100.209": true}
		wantInner := map[string]bool{client.IP + " > " + server.IP: true, server.IP + " > " + client.IP: true}
		if !wantOuter[outer] || !wantInner[inner] {
			t.Errorf("outer %s inner %s: want node addresses outside, pod addresses inside", outer, inner)
		}
	})

	t.Run("TCP, and the server sees the client's pod address", func(t *testing.T) {
		var ln net.Listener
		server.NS.Do(t, func() (err error) {
			ln, err = net.Listen("tcp4", server.IP+":6969")
			return err
		})
		defer ln.Close()
		accepted := make(chan string, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			defer conn.Close()
			io.Copy(conn, conn)
			accepted <- conn.RemoteAddr().(*net.TCPAddr).IP.String()
		}()
		var reply string
		client.NS.Do(t, func() error {
			conn, err := net.DialTimeout("tcp4", server.IP+":6969", 3*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			msg := strings.Repeat("tftp ", 2000) // several segments
			go func() { conn.Write([]byte(msg)); conn.(*net.TCPConn).CloseWrite() }()
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			b, err := io.ReadAll(conn)
			reply = string(b)
			if err == nil && reply != msg {
				err = fmt.Errorf("echoed %d bytes, sent %d", len(reply), len(msg))
			}
			return err
		})
		if from := <-accepted; from != client.IP {
			t.Errorf("server saw the connection from %s, want the client pod's %s", from, client.IP)
		}
	})

	t.Run("a capture on tunl0 makes every packet cross it, and its end makes the datapath fast again", func(t *testing.T) {
		url := agents["learn-k8s-3"].MetricsURL()
		if !strings.Contains(scrape(t, url), `calyx_datapath_info{mode="ebpf"}`) {
			if strings.Contains(scrape(t, url), "calyx_datapath_fast_mode") {
				t.Error("the kernel's datapath reports a fast mode")
			}
			return // the kernel's tunl0 has no other mode
		}
		eventually(t, 2*time.Second, "the fast mode while nothing captures on tunl0", fastMode(t, url, "1"))
		tun := nodes["learn-k8s-3"].Listen(t, "tunl0")
		took := eventually(t, 2*time.Second, "the observable mode once tcpdump runs on tunl0", fastMode(t, url, "0"))
		t.Logf("observable %v after the capture opened (the agent polls every %v)", took.Round(time.Millisecond), tapPoll)
		if got := client.NS.Ping(t, netip.MustParseAddr(server.IP), 2); got != 2 {
			t.Fatalf("ping in the observable mode: %d of 2 answered", got)
		}
		if tun.Next(time.Second, func(ip []byte) bool { return ip[9] == 1 }) == nil {
			t.Error("the capture on tunl0 saw no ICMP packet of the ping")
		}
		tun.Close()
		took = eventually(t, 2*time.Second, "the fast mode once the capture ended", fastMode(t, url, "1"))
		t.Logf("fast %v after the capture closed", took.Round(time.Millisecond))
		if got := client.NS.Ping(t, netip.MustParseAddr(server.IP), 2); got != 2 {
			t.Fatalf("ping in the fast mode: %d of 2 answered", got)
		}
	})
	// A strict rp_filter drops what the fast decapsulation hands to the NIC
	// (the inner source is routed via tunl0): arriving packets keep
	// crossing tunl0, leaving ones skip it. The ping's answers prove the
	// first (the fast decapsulation would lose them), the metric the second.
	t.Run("strict rp_filter keeps arriving packets on tunl0 and leaving ones fast", func(t *testing.T) {
		url := agents["learn-k8s-3"].MetricsURL()
		if !strings.Contains(scrape(t, url), `calyx_datapath_info{mode="ebpf"}`) {
			return // the kernel's tunl0 has no other mode
		}
		node := nodes["learn-k8s-3"]
		node.Sysctl(t, "net/ipv4/conf/all/rp_filter", "1")
		eventually(t, 2*time.Second, "fast out only under a strict rp_filter", func() error {
			if err := fastMode(t, url, "1")(); err != nil {
				return err
			}
			return gaugeIs(t, url, "calyx_datapath_fast_receive", "0")()
		})
		if got := client.NS.Ping(t, netip.MustParseAddr(server.IP), 2); got != 2 {
			t.Errorf("ping under a strict rp_filter: %d of 2 answered", got)
		}
		node.Sysctl(t, "net/ipv4/conf/all/rp_filter", "2")
		eventually(t, 2*time.Second, "the fast mode both ways under a loose rp_filter", gaugeIs(t, url, "calyx_datapath_fast_receive", "1"))
		if got := client.NS.Ping(t, netip.MustParseAddr(server.IP), 2); got != 2 {
			t.Errorf("ping under a loose rp_filter in the fast mode: %d of 2 answered", got)
		}
		node.Sysctl(t, "net/ipv4/conf/all/rp_filter", "0")
	})

	t.Run("datapath counters", func(t *testing.T) {
		m := scrape(t, agents["learn-k8s-3"].MetricsURL())
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, "calyx_datapath_") {
				t.Log(line)
			}
		}
		if !strings.Contains(m, `calyx_datapath_info{mode="`) {
			t.Error("no calyx_datapath_info")
		}
		if strings.Contains(m, `calyx_datapath_packets_total{direction="tx"} 0`+"\n") {
			t.Error("the client node's datapath counted no packets sent")
		}
	})
}

// fastMode is a condition for eventually: the agent at url reports
// calyx_datapath_fast_mode want.
func fastMode(t *testing.T, url, want string) func() error {
	return gaugeIs(t, url, "calyx_datapath_fast_mode", want)
}

// gaugeIs is a condition for eventually: the agent at url reports metric
// (without labels) at want.
func gaugeIs(t *testing.T, url, metric, want string) func() error {
	return func() error {
		if m := scrape(t, url); !strings.Contains(m, "\n"+metric+" "+want+"\n") {
			return fmt.Errorf("%s is not %s", metric, want)
		}
		return nil
	}
}
