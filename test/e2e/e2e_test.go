// Package e2e runs calyx end to end on the lab: a real control plane, real
// agents in node namespaces, pods wired by the real plugins through libcni,
// and real traffic between them, checked the way a user checks it.
//
// The lab uses fixed namespace names (learn-k8s-1 …): these tests cannot
// run while a lab of `calyx-lab up` is up on the same machine.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/lab"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "calyx-e2e-bin-")
	if err != nil {
		panic(err)
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if err := lab.BuildBinaries(context.Background(), root, dir, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// labNamespaces lists the network namespaces of a lab that exist.
func labNamespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	var found []string
	for _, l := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(l, " ")
		if strings.HasPrefix(name, "learn-k8s-") || strings.HasPrefix(name, "calyx-lab-") || strings.HasPrefix(name, "pod-") {
			found = append(found, name)
		}
	}
	return found
}

func requireNoLab(t *testing.T) {
	t.Helper()
	if ns := labNamespaces(t); len(ns) > 0 {
		t.Fatalf("a lab is already up (%v): run `calyx-lab down` before the tests", ns)
	}
}

// assertNothingLeft checks what a user checks after `calyx-lab down`.
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if ns := labNamespaces(t); len(ns) > 0 {
		t.Errorf("network namespaces left behind: %v", ns)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s left behind", dir)
	}
	out, _ := exec.Command("pgrep", "-f", dir).CombinedOutput()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("processes of the lab left behind: %s", s)
	}
}

// TestDemo runs `make demo`'s scenario and checks it reports success and
// cleans up after itself.
func TestDemo(t *testing.T) {
	requireNoLab(t)
	dir := filepath.Join(t.TempDir(), "lab")
	out := t.TempDir()
	var log strings.Builder
	begin := time.Now()
	// A relative binary directory, as `make demo` passes bin/.
	wd, _ := os.Getwd()
	relBin, err := filepath.Rel(wd, binDir)
	if err != nil {
		t.Fatal(err)
	}
	err = lab.Demo(context.Background(), lab.DemoOptions{Lab: lab.Options{Dir: dir, BinDir: relBin}, OutDir: out, Out: &log})
	t.Logf("demo output:\n%s", log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("demo took %s", time.Since(begin).Round(time.Millisecond))
	for _, want := range []string{"via 10.10.100.208 dev tunl0 proto calyx onlink", "eth:ip:ip:udp:tftp", "outer 10.10.100.209 → 10.10.100.208 proto 4",
		// The Service: kube-proxy's chains, the request to the ClusterIP.
		"KUBE-SERVICES → KUBE-SVC-", "-j DNAT --to-destination 192.168.", "→ 10.96.62.142:69  RRQ test.bin"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	// tcpdump, an independent reader, agrees with the demo about the pcap.
	for _, f := range []string{"clientNode.pcap", "serverNode.pcap"} {
		b, err := exec.Command("tcpdump", "-nr", filepath.Join(out, f)).CombinedOutput()
		if err != nil {
			t.Fatalf("tcpdump -r %s: %v\n%s", f, err, b)
		}
		text := string(b)
		if n := strings.Count(text, "IP 10.10.100.209 > 10.10.100.208: IP 192.168."); n != 5 {
			t.Errorf("%s: %d packets client node → server node (RRQ + 4 ACK), want 5:\n%s", f, n, text)
		}
		if n := strings.Count(text, "IP 10.10.100.208 > 10.10.100.209: IP 192.168."); n != 4 {
			t.Errorf("%s: %d packets server node → client node (4 DATA), want 4:\n%s", f, n, text)
		}
		if !strings.Contains(text, `RRQ "test.bin"`) {
			t.Errorf("%s: tcpdump does not see the RRQ:\n%s", f, text)
		}
	}
	assertNothingLeft(t, dir)
}

// TestLab checks the paths a pod's packets take, with independent tools
// (ping, tftp-hpa, tftpd-hpa) as well as the lab's own.
func TestLab(t *testing.T) {
	l, dir, root := upLab(t)
	ctx := context.Background()
	c := l.Client()
	add := func(ns, name, node string, cmd ...string) *lab.PodState {
		t.Helper()
		p, err := c.AddPod(ctx, lab.PodSpec{Namespace: ns, Name: name, Node: node, Command: cmd})
		if err != nil {
			t.Fatalf("adding %s/%s: %v", ns, name, err)
		}
		return p
	}
	// tftpd-hpa, as PXE setups run it, in a pod on learn-k8s-2.
	server := add("default", "tftpd", "learn-k8s-2", "/usr/sbin/in.tftpd", "--foreground", "--listen", "--address", ":69", "--secure", root)
	peer := add("default", "peer", "learn-k8s-2")
	client := add("default", "client", "learn-k8s-3")
	time.Sleep(300 * time.Millisecond) // in.tftpd binds

	run := func(target string, argv ...string) string {
		t.Helper()
		out, err := c.Output(ctx, target, argv...)
		if err != nil {
			t.Errorf("%v", err)
		}
		return out
	}
	t.Run("ping", func(t *testing.T) {
		for _, tc := range []struct{ from, to, what string }{
			{"default/peer", server.IP, "pod to pod on one node"},
			{"default/client", server.IP, "pod to pod across nodes"},
			{"default/tftpd", client.IP, "pod to pod across nodes, the other way"},
			{"learn-k8s-2", client.IP, "node to a pod on another node"},
			{"learn-k8s-3", client.IP, "node to its own pod"},
		} {
			if _, err := c.Output(ctx, tc.from, "ping", "-c", "2", "-W", "2", tc.to); err != nil {
				t.Errorf("%s (%s → %s): %v", tc.what, tc.from, tc.to, err)
			}
		}
	})
	t.Run("tftp-hpa against tftpd-hpa across nodes", func(t *testing.T) {
		got := filepath.Join(dir, "hpa.bin")
		run("default/client", "tftp", "-m", "binary", server.IP, "-c", "get", lab.DemoFile, got)
		assertFile(t, got)
	})
	t.Run("the lab's client against tftpd-hpa", func(t *testing.T) {
		got := filepath.Join(dir, "lab.bin")
		run("default/client", filepath.Join(binDir, "calyx-lab"), "tftp-get", "--server", server.IP, "--file", lab.DemoFile, "--out", got)
		assertFile(t, got)
	})
	t.Run("pod to the internet is masqueraded to the node IP", func(t *testing.T) {
		cp, err := lab.StartCapture(lab.InternetNS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		_, pingErr := c.Output(ctx, "default/client", "ping", "-c", "2", "-W", "2", lab.InternetIP)
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
	})
	t.Run("deleting a pod frees its address and host veth", func(t *testing.T) {
		blocksBefore := allocations(t, l)
		if err := c.DelPod(ctx, "default/peer"); err != nil {
			t.Fatal(err)
		}
		after := allocations(t, l)
		if len(after) != len(blocksBefore)-1 {
			t.Errorf("%d allocations after deleting a pod, want %d", len(after), len(blocksBefore)-1)
		}
		if out, err := c.Output(ctx, "learn-k8s-2", "ip", "link", "show", peer.HostIface); err == nil {
			t.Errorf("host veth %s is still there:\n%s", peer.HostIface, out)
		}
		if out := run("learn-k8s-2", "ip", "route"); strings.Contains(out, peer.IP+" dev") {
			t.Errorf("the route to %s is still there:\n%s", peer.IP, out)
		}
	})
	if err := l.Down(); err != nil {
		t.Errorf("down: %v", err)
	}
	assertNothingLeft(t, dir)
}

// upLab starts a lab for t, once no other lab is up, with the demo's file
// in a TFTP root. It goes down when t ends; a test may take it down
// itself first, a second Down does nothing.
func upLab(t *testing.T) (l *lab.Lab, dir, root string) {
	t.Helper()
	waitNoLab(t, 3*time.Minute)
	dir = filepath.Join(t.TempDir(), "lab")
	l, err := lab.Up(context.Background(), lab.Options{Dir: dir, BinDir: binDir, Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down() })
	root = filepath.Join(dir, "tftp-root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, lab.DemoFile), lab.DemoContent(), 0o644); err != nil {
		t.Fatal(err)
	}
	return l, dir, root
}

func assertFile(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(lab.DemoContent()) {
		t.Errorf("%s: %d bytes that differ from the served file", path, len(b))
	}
}

// allocations lists the allocated pod addresses.
func allocations(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	blocks, err := l.Calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			if a.Type == "pod" {
				out = append(out, fmt.Sprintf("%s+%d", b.Spec.CIDR, a.Ordinal))
			}
		}
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
