// Package pools tests the pool features Calico users steer addresses with
// on the lab's real nodes (kubelets, containerd, calyx from
// deploy/calyx.yaml), with every object made from a manifest through the
// real kubectl, as a user makes them: IPPools selected by node labels, a
// namespace's and a pod's calyx.dev/ipv4pools, a StatefulSet's pod pinned
// with calyx.dev/ipAddrs, bad annotations, calyxctl ipam release after a
// force-deleted pod, and a migration off a disabled pool under traffic.
//
// One lab serves the whole package. Its namespaces have fixed names, so
// run it under the machine's lab lock:
//
//	flock /tmp/calyx-lab.lock go test -count=1 -v -timeout 30m ./test/pools/
package pools

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/calyx-net/calyx/api/v1alpha1"
	cniplugin "github.com/calyx-net/calyx/cni-plugin"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

// The lab's workers and their underlay addresses.
const (
	node2, node2IP = "learn-k8s-2", "10.10.100.208"
	node3, node3IP = "learn-k8s-3", "10.10.100.209"
	// defaultPool is the pool deploy/calyx.yaml creates.
	defaultPool = "default-ipv4-ippool"
)

var (
	binDir string
	shared labtest.Shared
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := labtest.Binaries("calyx-pools-bin-", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	shared.Options = lab.Options{BinDir: dir}
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

func sharedLab(t *testing.T) *lab.Lab { return shared.Get(t) }

// kubectl runs the real kubectl against the lab, with stdin when not "".
func kubectl(t *testing.T, l *lab.Lab, stdin string, args ...string) string {
	t.Helper()
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	out, err := l.Client().Kubectl(context.Background(), in, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies a manifest, and deletes what it made when t ends (and
// waits until it is gone: pods' sandboxes torn down, their addresses
// released).
func apply(t *testing.T, l *lab.Lab, manifest string) {
	t.Helper()
	kubectl(t, l, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		out, err := l.Client().Kubectl(context.Background(), strings.NewReader(manifest), "delete", "--ignore-not-found", "--wait", "--timeout=2m", "-f", "-")
		if err != nil {
			t.Errorf("deleting what the test applied: %v\n%s", err, out)
		}
	})
}

// podYAML is a Pod of the lab's toolbox image (it sleeps) on node.
func podYAML(namespace, name, node, annotations string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  annotations: {%s}
spec:
%s`, name, namespace, annotations, specYAML(node, "  "))
}

// specYAML is the spec of podYAML's pods, each line indented.
func specYAML(node, indent string) string {
	spec := fmt.Sprintf(`nodeSelector: {kubernetes.io/hostname: %s}
terminationGracePeriodSeconds: 1
containers:
- name: main
  image: %s
  imagePullPolicy: IfNotPresent
`, node, lab.Toolbox)
	return indent + strings.ReplaceAll(strings.TrimSuffix(spec, "\n"), "\n", "\n"+indent) + "\n"
}

// waitFor polls fn until it says done, and fails t with what it last saw
// when it does not within timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() (bool, string)) time.Duration {
	t.Helper()
	begin := time.Now()
	var last string
	err := wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		var ok bool
		ok, last = fn()
		return ok, nil
	})
	if err != nil {
		t.Fatalf("no %s after %s; last seen:\n%s", what, timeout, last)
	}
	return time.Since(begin)
}

// ready waits until the pod NAMESPACE/NAME runs and returns it.
func ready(t *testing.T, l *lab.Lab, key string) *lab.PodState {
	t.Helper()
	p, err := l.Client().WaitPod(context.Background(), key, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// routes is `ip route` on node.
func routes(t *testing.T, l *lab.Lab, node string) string {
	t.Helper()
	out, err := l.Client().Output(context.Background(), node, "ip", "route")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// blockOf is the IPAMBlock that holds addr.
func blockOf(t *testing.T, l *lab.Lab, addr string) *v1alpha1.IPAMBlock {
	t.Helper()
	blocks, err := l.Calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blocks.Items {
		if prefixHas(b.Spec.CIDR, addr) {
			return &blocks.Items[i]
		}
	}
	t.Fatalf("no IPAMBlock holds %s", addr)
	return nil
}

// allocatedTo lists the addresses the IPAM holds for the pod.
func allocatedTo(t *testing.T, l *lab.Lab, namespace, pod string) []string {
	t.Helper()
	blocks, err := l.Calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			if a.Namespace == namespace && a.Pod == pod {
				out = append(out, fmt.Sprintf("%s#%d", b.Spec.CIDR, a.Ordinal))
			}
		}
	}
	return out
}

// refused waits until `kubectl describe pod` shows the CNI error a user
// would read there, then checks the refusal left nothing: no address in
// the IPAM, no host veth, no route to one.
func refused(t *testing.T, l *lab.Lab, namespace, name, node, want string) {
	t.Helper()
	var describe string
	waitFor(t, 90*time.Second, fmt.Sprintf("%q in kubectl describe pod %s/%s", want, namespace, name), func() (bool, string) {
		describe = kubectl(t, l, "", "describe", "pod", "-n", namespace, name)
		return strings.Contains(describe, want), describe
	})
	t.Logf("kubectl describe pod %s/%s shows: …%s…", namespace, name, want)
	if got := allocatedTo(t, l, namespace, name); len(got) > 0 {
		t.Errorf("pod %s/%s was refused but holds %v", namespace, name, got)
	}
	veth := cniplugin.HostVethName("cali", cniplugin.PodArgs{Namespace: namespace, Name: name}, "")
	if out, err := l.Client().Output(context.Background(), node, "ip", "link", "show", veth); err == nil {
		t.Errorf("pod %s/%s was refused but %s has its veth:\n%s", namespace, name, node, out)
	}
	if r := routes(t, l, node); strings.Contains(r, "dev "+veth) {
		t.Errorf("pod %s/%s was refused but %s routes to its veth:\n%s", namespace, name, node, r)
	}
}

// ctl runs calyxctl with the lab's admin kubeconfig and returns its
// standard output and exit status.
func ctl(t *testing.T, l *lab.Lab, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "calyxctl"), append([]string{"--kubeconfig", l.Kubeconfig()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("calyxctl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("calyxctl %s (exit %d):\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return stdout.String(), code
}

// ctlJSON runs calyxctl with -o json into v.
func ctlJSON(t *testing.T, l *lab.Lab, v any, args ...string) int {
	t.Helper()
	out, code := ctl(t, l, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("calyxctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return code
}

// prefixHas says whether the CIDR holds the address.
func prefixHas(cidr, addr string) bool {
	p, err := netip.ParsePrefix(cidr)
	a, aerr := netip.ParseAddr(addr)
	return err == nil && aerr == nil && p.Contains(a)
}

// containsAll says whether text has every line of lines.
func containsAll(text string, lines []string) bool {
	for _, l := range lines {
		if !strings.Contains(text, l) {
			return false
		}
	}
	return true
}
