package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

// The article's Service.
const (
	serviceKey = "default/tftp-server"
	clusterIP  = "10.96.62.142"
)

// TestService downloads through the ClusterIP kube-proxy programs, the
// article's path: kube-proxy's DNAT to the pod IP on the client's node,
// then calyx's tunnel to the server's node.
func TestService(t *testing.T) {
	for _, b := range []string{"atftp", "tftp"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s is needed (apt-get install atftp tftp-hpa): %v", b, err)
		}
	}
	l := sharedLab(t)
	dir := t.TempDir()
	ctx := context.Background()
	c := l.Client()
	server, err := c.AddTFTPServer(ctx, lab.PodSpec{Namespace: "default", Name: "tftpd", Node: "learn-k8s-2", Labels: map[string]string{"app": "tftpd"}})
	if err != nil {
		t.Fatal(err)
	}
	client, err := c.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "client", Node: "learn-k8s-3"})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.AddService(ctx, lab.ServiceSpec{Namespace: "default", Name: "tftp-server", Selector: map[string]string{"app": "tftpd"}, Ports: []string{"69/UDP"}, ClusterIP: clusterIP})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != clusterIP {
		t.Fatalf("ClusterIP %s, want %s", svc.Spec.ClusterIP, clusterIP)
	}
	eps, err := c.WaitEndpoints(ctx, serviceKey, 1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if eps[0] != server.IP {
		t.Fatalf("the EndpointSlice lists %v, want the server pod's %s", eps, server.IP)
	}
	// kube-proxy on the client's node programs the Service's chains.
	waitFor(t, 30*time.Second, "kube-proxy's KUBE-SEP for "+server.IP+" on learn-k8s-3", func() (bool, string) {
		out, _ := c.Output(ctx, "learn-k8s-3", "iptables-save", "-t", "nat")
		return strings.Contains(out, "-j DNAT --to-destination "+server.IP+":69"), out
	})

	get := func(t *testing.T, name string, argv ...string) (string, error) {
		t.Helper()
		out := filepath.Join(dir, name)
		os.Remove(out)
		for i, a := range argv {
			argv[i] = strings.ReplaceAll(a, "OUT", out)
		}
		_, err := c.Output(ctx, "default/client", argv...)
		return out, err
	}
	labGet := func(t *testing.T, name string) (string, error) {
		return get(t, name, filepath.Join(binDir, "calyx-lab"), "tftp-get", "--server", clusterIP, "--file", lab.DemoFile, "--out", "OUT")
	}
	hpaGet := func(t *testing.T, name string) (string, error) {
		// tftp-hpa retries for a long time: a stall ends at the timeout.
		return get(t, name, "timeout", "8", "tftp", "-m", "binary", clusterIP, "-c", "get", lab.DemoFile, "OUT")
	}

	// kube-proxy's DNAT and its reverse on the reply (conntrack) in both
	// datapath modes: the fast one hands decapsulated packets to the NIC's
	// receive path instead of tunl0's.
	labtest.InBothModes(t, []string{"learn-k8s-2", "learn-k8s-3"}, func(t *testing.T) {
		t.Run("atftp through the ClusterIP, IPIP between the nodes, the server sees the pod IP", func(t *testing.T) {
			nic, err := lab.StartCapture("learn-k8s-3", lab.NICName)
			if err != nil {
				t.Fatal(err)
			}
			veth, err := lab.StartCapture("learn-k8s-2", server.HostIface)
			if err != nil {
				nic.Stop()
				t.Fatal(err)
			}
			out, getErr := get(t, "atftp.bin", "timeout", "20", "atftp", "--get", "-r", lab.DemoFile, "-l", "OUT", clusterIP, "69")
			time.Sleep(200 * time.Millisecond)
			nicPackets, vethPackets := nic.Stop(), veth.Stop()
			if getErr != nil {
				t.Fatalf("atftp: %v", getErr)
			}
			assertFile(t, out)
			var tftpOnNIC int
			for _, p := range nicPackets {
				d := lab.Dissect(nic.LinkType(), p.Data)
				if d.Src != client.IP && d.Dst != client.IP {
					continue
				}
				tftpOnNIC++
				if d.OuterProto != 4 || !((d.OuterSrc == "10.10.100.209" && d.OuterDst == "10.10.100.208") || (d.OuterSrc == "10.10.100.208" && d.OuterDst == "10.10.100.209")) {
					t.Errorf("on learn-k8s-3's %s: %s outer %s → %s proto %d, want IPIP between 10.10.100.209 and 10.10.100.208", lab.NICName, d.Stack, d.OuterSrc, d.OuterDst, d.OuterProto)
				}
				if d.Src == clusterIP || d.Dst == clusterIP {
					t.Errorf("on the wire: %s → %s: the ClusterIP leaves the node, want the pod IP (kube-proxy's DNAT)", d.Src, d.Dst)
				}
			}
			if tftpOnNIC < 9 {
				t.Errorf("%d packets of the client pod on learn-k8s-3's %s, want at least 9 (RRQ + 4 DATA + 4 ACK)", tftpOnNIC, lab.NICName)
			}
			var rrqFrom []string
			for _, p := range vethPackets {
				d := lab.Dissect(veth.LinkType(), p.Data)
				if strings.HasPrefix(d.TFTP, "RRQ") {
					rrqFrom = append(rrqFrom, d.Src+" → "+d.Dst+":"+strconv.Itoa(d.DstPort))
				}
			}
			want := client.IP + " → " + server.IP + ":69"
			if len(rrqFrom) != 1 || rrqFrom[0] != want {
				t.Errorf("RRQs on the server's %s: %v, want [%s]: the server sees the client pod's real IP", server.HostIface, rrqFrom, want)
			}
		})
		t.Run("the lab's client through the ClusterIP", func(t *testing.T) {
			out, err := labGet(t, "lab.bin")
			if err != nil {
				t.Fatal(err)
			}
			assertFile(t, out)
		})
	})
	t.Run("tftp-hpa without the helper stalls", func(t *testing.T) {
		out, err := hpaGet(t, "hpa-stall.bin")
		b, _ := os.ReadFile(out)
		if err == nil && len(b) == lab.DemoFileSize {
			t.Fatalf("tftp-hpa downloaded through the DNAT without a conntrack helper: this test cannot tell the helper works")
		}
		t.Logf("tftp-hpa without the helper: %v, %d of %d bytes", err, len(b), lab.DemoFileSize)
	})
	t.Run("tftp-hpa with calyx.dev/conntrack-helper: tftp", func(t *testing.T) {
		if err := c.AnnotateService(ctx, serviceKey, desired.AnnotationConntrackHelper, "tftp"); err != nil {
			t.Fatal(err)
		}
		for _, node := range []string{"learn-k8s-2", "learn-k8s-3"} {
			waitFor(t, 15*time.Second, "the helper rule on "+node, func() (bool, string) {
				out, _ := c.Output(ctx, node, "nft", "list", "chain", "ip", "calyx", "helpers-prerouting")
				return strings.Contains(out, "ip daddr "+clusterIP+" udp dport 69") && strings.Contains(out, `ct helper set "tftp-udp"`), out
			})
		}
		out, err := hpaGet(t, "hpa.bin")
		if err != nil {
			t.Fatalf("tftp-hpa with the helper: %v", err)
		}
		assertFile(t, out)

		if err := c.AnnotateService(ctx, serviceKey, desired.AnnotationConntrackHelper, ""); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "the helper rule gone from learn-k8s-3", func() (bool, string) {
			out, _ := c.Output(ctx, "learn-k8s-3", "nft", "list", "table", "ip", "calyx")
			return !strings.Contains(out, clusterIP) && !strings.Contains(out, "ct helper tftp-udp"), out
		})
	})
	t.Run("two server pods on two nodes share 20 downloads", func(t *testing.T) {
		server2, err := c.AddTFTPServer(ctx, lab.PodSpec{Namespace: "default", Name: "tftpd-2", Node: "learn-k8s-3", Labels: map[string]string{"app": "tftpd"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitEndpoints(ctx, serviceKey, 2, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "kube-proxy's KUBE-SEP for "+server2.IP, func() (bool, string) {
			out, _ := c.Output(ctx, "learn-k8s-3", "iptables-save", "-t", "nat")
			return strings.Contains(out, "-j DNAT --to-destination "+server2.IP+":69"), out
		})
		caps := map[string]*lab.Capture{}
		for _, s := range []*lab.PodState{server, server2} {
			cp, err := lab.StartCapture(s.Node, s.HostIface)
			if err != nil {
				t.Fatal(err)
			}
			caps[s.IP] = cp
		}
		ok := 0
		for i := range 20 {
			out, err := labGet(t, "scaled.bin")
			if err != nil {
				t.Errorf("download %d: %v", i+1, err)
				continue
			}
			if b, _ := os.ReadFile(out); string(b) == string(lab.DemoContent()) {
				ok++
			}
		}
		served := map[string]int{}
		for ip, cp := range caps {
			for _, p := range cp.Stop() {
				if d := lab.Dissect(cp.LinkType(), p.Data); strings.HasPrefix(d.TFTP, "RRQ") && d.Dst == ip {
					served[ip]++
				}
			}
		}
		t.Logf("20 downloads through %s: %d complete; RRQs served: %v", clusterIP, ok, served)
		if ok != 20 {
			t.Errorf("%d of 20 downloads complete, want 20", ok)
		}
		for _, s := range []*lab.PodState{server, server2} {
			if served[s.IP] == 0 {
				t.Errorf("server pod %s (%s on %s) served no download: %v", s.Key(), s.IP, s.Node, served)
			}
		}
	})
	t.Run("the helper goes with the Service", func(t *testing.T) {
		if err := c.AnnotateService(ctx, serviceKey, desired.AnnotationConntrackHelper, "tftp"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "the helper rule on learn-k8s-3", func() (bool, string) {
			out, _ := c.Output(ctx, "learn-k8s-3", "nft", "list", "chain", "ip", "calyx", "helpers-output")
			return strings.Contains(out, "ip daddr "+clusterIP+" udp dport 69"), out
		})
		if err := c.DelService(ctx, serviceKey); err != nil {
			t.Fatal(err)
		}
		for _, node := range []string{"learn-k8s-2", "learn-k8s-3"} {
			waitFor(t, 15*time.Second, "the helper rule gone from "+node, func() (bool, string) {
				out, _ := c.Output(ctx, node, "nft", "list", "table", "ip", "calyx")
				return !strings.Contains(out, clusterIP) && !strings.Contains(out, "ct helper tftp-udp"), out
			})
		}
	})
}
