package e2e

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/lab"
)

// The lab's nodes, with the runtime each runs and its underlay address.
var nodes = []struct{ name, runtime, ip string }{
	{"learn-k8s-1", "containerd://2.2.9", "10.10.100.207"},
	{"learn-k8s-2", "containerd://1.6.20", "10.10.100.208"},
	{"learn-k8s-3", "containerd://2.2.9", "10.10.100.209"},
}

// TestLab adds pods through the real kubelets and runtimes on every node
// (the control plane's too, with a toleration) and checks what a user
// checks: each pod's address comes from a /26 of its node, `ip route` on
// every node, pod to pod across every pair of nodes, tftp-hpa against
// tftpd-hpa, kubectl exec and logs, masquerade to the internet, and a
// deleted pod's address, veth and route gone.
func TestLab(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	c := l.Client()
	t.Run("nodes run the runtimes users run, with the shipped conflist", func(t *testing.T) {
		for _, n := range nodes {
			node, err := l.Kube.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := node.Status.NodeInfo.ContainerRuntimeVersion; !strings.HasPrefix(got, n.runtime) {
				t.Errorf("%s runs %s, want %s", n.name, got, n.runtime)
			}
			conf, err := c.Output(ctx, n.name, "cat", "/etc/cni/net.d/10-calyx.conflist")
			if err != nil || !strings.Contains(conf, `"cniVersion": "1.0.0"`) {
				t.Errorf("%s's /etc/cni/net.d/10-calyx.conflist (from install-cni): %v\n%s", n.name, err, conf)
			}
		}
	})
	t.Run("kube-proxy as kubeadm runs it: mode \"\" in its ConfigMap, iptables on every node", func(t *testing.T) {
		cm, err := c.Kubectl(ctx, nil, "describe", "cm", "-n", "kube-system", "kube-proxy")
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^mode: ""$`).MatchString(cm) {
			t.Errorf("kubectl describe cm -n kube-system kube-proxy has no `mode: \"\"`:\n%s", cm)
		}
		for _, n := range nodes {
			if mode, err := lab.ProxyMode(ctx, n.name); err != nil || mode != "iptables" {
				t.Errorf("curl 127.0.0.1:10249/proxyMode on %s: %q, %v; want iptables", n.name, mode, err)
			}
		}
	})
	pods := map[string]*lab.PodState{}
	for _, n := range nodes {
		spec := lab.PodSpec{Namespace: "e2e", Name: "pod-" + n.name, Node: n.name}
		pod := lab.PodObject(spec)
		pod.Spec.Tolerations = []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}
		p, err := c.CreatePod(ctx, pod)
		if err != nil {
			t.Fatal(err)
		}
		pods[n.name] = p
	}
	t.Run("each pod's address is from a block of its node", func(t *testing.T) { checkBlocks(t, l, pods) })
	t.Run("ip route on every node", func(t *testing.T) { checkRoutes(t, c, pods) })
	t.Run("kubectl exec: ping pod to pod across every pair of nodes", func(t *testing.T) {
		for _, from := range nodes {
			for _, to := range nodes {
				if from == to {
					continue
				}
				if out, err := c.Exec(ctx, pods[from.name].Key(), "ping", "-c", "2", "-W", "2", pods[to.name].IP); err != nil {
					t.Errorf("%s → %s: %v\n%s", from.name, to.name, err, out)
				}
			}
		}
	})
	t.Run("a node reaches a pod on another node", func(t *testing.T) {
		if _, err := c.Output(ctx, "learn-k8s-2", "ping", "-c", "2", "-W", "2", pods["learn-k8s-3"].IP); err != nil {
			t.Error(err)
		}
	})
	t.Run("tftp", func(t *testing.T) { checkTFTP(t, c, pods["learn-k8s-3"]) })
	t.Run("pod to the internet is masqueraded to the node IP", func(t *testing.T) { checkMasquerade(t, c, pods["learn-k8s-3"]) })
	t.Run("deleting a pod frees its address, host veth and route", func(t *testing.T) {
		gone := pods["learn-k8s-2"]
		before := allocations(t, l)
		if err := c.DelPod(ctx, gone.Key()); err != nil {
			t.Fatal(err)
		}
		if after := allocations(t, l); len(after) != len(before)-1 {
			t.Errorf("%d allocations after deleting a pod, want %d", len(after), len(before)-1)
		}
		if out, err := c.Output(ctx, "learn-k8s-2", "ip", "link", "show", gone.HostIface); err == nil {
			t.Errorf("host veth %s is still there:\n%s", gone.HostIface, out)
		}
		if out, _ := c.Output(ctx, "learn-k8s-2", "ip", "route"); strings.Contains(out, gone.IP+" dev") {
			t.Errorf("the route to %s is still there:\n%s", gone.IP, out)
		}
	})
}

// checkBlocks checks that every pod's IP is in a block whose affinity is
// the pod's node.
func checkBlocks(t *testing.T, l *lab.Lab, pods map[string]*lab.PodState) {
	blocks, err := l.Calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for node, p := range pods {
		ip := netip.MustParseAddr(p.IP)
		var owner string
		for _, b := range blocks.Items {
			if netip.MustParsePrefix(b.Spec.CIDR).Contains(ip) {
				owner = b.Spec.Node
				if !strings.HasSuffix(b.Spec.CIDR, "/26") {
					t.Errorf("%s's block %s is not a /26", p.Key(), b.Spec.CIDR)
				}
			}
		}
		if owner != node {
			t.Errorf("%s on %s has %s, from a block of %q", p.Key(), node, p.IP, owner)
		}
	}
}

// checkRoutes reads `ip route` on every node: a /32 to each local pod
// through its cali… veth, and each other node's pod block through tunl0.
func checkRoutes(t *testing.T, c *lab.Client, pods map[string]*lab.PodState) {
	ctx := context.Background()
	for _, n := range nodes {
		out, err := c.Output(ctx, n.name, "ip", "route")
		if err != nil {
			t.Fatal(err)
		}
		local := pods[n.name]
		if want := local.IP + " dev " + local.HostIface + " scope link"; !strings.Contains(out, want) {
			t.Errorf("%s: no %q in ip route:\n%s", n.name, want, out)
		}
		for _, m := range nodes {
			if m == n {
				continue
			}
			re := regexp.MustCompile(`192\.168\.\d+\.\d+/26 via ` + regexp.QuoteMeta(m.ip) + ` dev tunl0 proto calyx onlink`)
			if !re.MatchString(out) {
				t.Errorf("%s: no route to %s's block via tunl0:\n%s", n.name, m.name, out)
			}
		}
	}
}

// checkTFTP downloads from tftpd-hpa in a pod on learn-k8s-2: with
// tftp-hpa (the host's, in the client pod's namespace), with busybox's
// tftp through kubectl exec, and reads the server's kubectl logs.
func checkTFTP(t *testing.T, c *lab.Client, client *lab.PodState) {
	ctx := context.Background()
	server, err := c.AddTFTPServer(ctx, lab.PodSpec{Namespace: "e2e", Name: "tftpd", Node: "learn-k8s-2"})
	if err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(t.TempDir(), "hpa.bin")
	if out, err := c.Output(ctx, client.Key(), "tftp", "-m", "binary", server.IP, "-c", "get", lab.DemoFile, got); err != nil {
		t.Errorf("tftp-hpa: %v\n%s", err, out)
	}
	assertFile(t, got)
	out, err := c.Exec(ctx, client.Key(), "tftp", "-g", "-r", lab.DemoFile, "-l", "-", server.IP)
	if err != nil || out != string(lab.DemoContent()) {
		t.Errorf("kubectl exec … busybox tftp: %v, %d bytes", err, len(out))
	}
	logs, err := c.Kubectl(ctx, nil, "logs", "-n", "e2e", "tftpd")
	if err != nil {
		t.Fatal(err)
	}
	if want := "RRQ from " + client.IP + " filename " + lab.DemoFile; strings.Count(logs, want) != 2 {
		t.Errorf("kubectl logs tftpd: want two %q:\n%s", want, logs)
	}
	os.Remove(got)
}

// checkMasquerade pings "the internet" from a pod, and looks at what
// arrives there: the node's address, not the pod's.
func checkMasquerade(t *testing.T, c *lab.Client, client *lab.PodState) {
	cp, err := lab.StartCapture(lab.InternetNS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	_, pingErr := c.Exec(context.Background(), client.Key(), "ping", "-c", "2", "-W", "2", lab.InternetIP)
	packets := cp.Stop()
	if pingErr != nil {
		t.Fatalf("ping from a pod to %s: %v", lab.InternetIP, pingErr)
	}
	var sources []string
	for _, p := range packets {
		d := lab.Dissect(cp.LinkType(), p.Data)
		if d.Dst == lab.InternetIP && strings.HasSuffix(d.Stack, "icmp") {
			sources = append(sources, d.Src)
		}
	}
	if len(sources) == 0 {
		t.Fatal("no ICMP reached the internet namespace")
	}
	for _, s := range sources {
		if s != "10.10.100.209" {
			t.Errorf("the internet saw source %s, want the node's 10.10.100.209 (the pod's %s masqueraded)", s, client.IP)
		}
	}
}
