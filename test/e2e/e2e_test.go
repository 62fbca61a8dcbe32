// Package e2e runs calyx end to end on the lab: a real control plane, real
// nodes (kubelet and containerd: Debian's 1.6 on learn-k8s-2, 2.x on the
// others), calyx installed from deploy/calyx.yaml and kube-proxy as
// kubeadm's DaemonSet, and real traffic between pods the kubelets made,
// checked the way a user checks it.
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
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

var (
	binDir string
	// shared is the lab TestLab, TestService and the upgrade tests share:
	// it comes up with the first of them and goes down after the last,
	// when TestMain checks it left nothing behind.
	shared labtest.Shared
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := labtest.Binaries("calyx-e2e-bin-", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	shared.Options = lab.Options{BinDir: binDir}
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

func sharedLab(t *testing.T) *lab.Lab { return shared.Get(t) }

// TestDemo runs `make demo`'s scenario and checks it reports success and
// cleans up after itself.
func TestDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lab")
	out := t.TempDir()
	var log strings.Builder
	before := labtest.Mounts()
	begin := time.Now()
	// A relative binary directory, as `make demo` passes bin/.
	wd, _ := os.Getwd()
	relBin, err := filepath.Rel(wd, binDir)
	if err != nil {
		t.Fatal(err)
	}
	err = lab.Demo(context.Background(), lab.DemoOptions{Lab: lab.Options{Dir: dir, BinDir: relBin, WaitForSlot: labtest.SlotWait}, OutDir: out, Out: &log})
	t.Logf("demo output:\n%s", log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("demo took %s", time.Since(begin).Round(time.Millisecond))
	for _, want := range []string{
		"calyx-node-", "kube-proxy-", // kubectl get pods -A
		"via 10.10.100.208 dev tunl0 proto calyx onlink", "eth:ip:ip:udp:tftp", "outer 10.10.100.209 → 10.10.100.208 proto 4",
		"kubectl logs deployment/tftp-server", "RRQ from 192.168.",
		// The Service: kube-proxy's chains, the request to the ClusterIP.
		"KUBE-SERVICES → KUBE-SVC-", "-j DNAT --to-destination 192.168.", "→ 10.96.62.142:69  RRQ test.bin",
	} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	// kubectl get pods -A -o wide, as the demo printed it: calyx-node
	// Running on every node, the article's pods on theirs.
	running := map[string]string{}
	for _, line := range strings.Split(log.String(), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[3] == "Running" {
			name := f[1]
			for _, owned := range []string{"calyx-node", "tftp-server"} {
				if strings.HasPrefix(name, owned+"-") {
					name = owned
				}
			}
			running[name+" on "+f[7]] = f[2]
		}
	}
	for _, want := range []string{"calyx-node on learn-k8s-1", "calyx-node on learn-k8s-2", "calyx-node on learn-k8s-3", "tftp-server on learn-k8s-2", "tftp-client on learn-k8s-3"} {
		if running[want] != "1/1" {
			t.Errorf("kubectl get pods -A -o wide in the demo's output: no %s Running 1/1 (%v)", want, running)
		}
	}
	checkPcaps(t, out)
	if left := labtest.LeftOver(dir, before); len(left) > 0 {
		t.Errorf("the demo left behind:\n  %s", strings.Join(left, "\n  "))
	}
}

// checkPcaps reads the demo's captures with tcpdump, an independent
// reader.
func checkPcaps(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{"clientNode.pcap", "serverNode.pcap"} {
		b, err := exec.Command("tcpdump", "-nr", filepath.Join(dir, f)).CombinedOutput()
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

// allocations lists the allocated pod addresses, as block+ordinal.
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

func waitFor(t *testing.T, timeout time.Duration, what string, fn func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := fn()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s; last seen:\n%s", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
