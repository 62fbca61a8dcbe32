package calyxctl_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/calyxctl"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/kubebin"
	"github.com/calyx-net/calyx/lab/labtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// buildBinaries builds the lab's binaries (calyxctl among them) and
// calyxctl's kubectl-calyx link into a temporary directory. Only the lab test pays for it.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..")
	if err := lab.BuildBinaries(context.Background(), root, dir, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("calyxctl", filepath.Join(dir, "kubectl-calyx")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// result is one calyxctl run.
type result struct {
	out  string
	code int
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestLab -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-golden +got):\n%s", name, diff)
	}
}

// TestLab runs every calyxctl command against the lab with the demo's two
// pods, as a user would: the binary, its exit status and its output.
func TestLab(t *testing.T) {
	binDir := buildBinaries(t)
	dir := filepath.Join(t.TempDir(), "lab")
	// No deadline on Up: on a fresh machine it builds the Kubernetes
	// binaries first (minutes), and each of its steps has its own timeout.
	l, err := lab.Up(context.Background(), lab.Options{Dir: dir, BinDir: binDir, WaitForSlot: labtest.SlotWait, Progress: labtest.Log(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	c := l.Client()
	// The golden tables count every address of every block: CoreDNS's two
	// replicas would add theirs on whichever nodes the scheduler picks.
	if _, err := c.Kubectl(ctx, nil, "-n", "kube-system", "scale", "deployment/coredns", "--replicas=0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, nil, "-n", "kube-system", "wait", "--for=delete", "pod", "-l", "k8s-app=kube-dns", "--timeout=1m"); err != nil {
		t.Fatal(err)
	}
	server, err := c.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "tftp-server", Node: lab.DemoServerNode})
	if err != nil {
		t.Fatal(err)
	}
	client, err := c.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "tftp-client", Node: lab.DemoClientNode})
	if err != nil {
		t.Fatal(err)
	}
	ctl := filepath.Join(binDir, "calyxctl")
	// run runs calyxctl with the host's kubeconfig.
	run := func(args ...string) result {
		t.Helper()
		cmd := exec.CommandContext(ctx, ctl, append([]string{"--kubeconfig", l.Kubeconfig()}, args...)...)
		return wait(t, cmd, args)
	}
	// onNode runs calyxctl on node as users do: in that node's calyx-node
	// pod (host network, the agent's service account), with kubectl exec.
	onNode := func(node string, args ...string) result {
		t.Helper()
		pod, err := c.CalyxNodePod(ctx, node)
		if err != nil || pod == nil {
			t.Fatalf("no calyx-node pod on %s: %v", node, err)
		}
		cmd, err := c.KubectlCommand(ctx, append([]string{"exec", "-n", "kube-system", pod.Name, "-c", "calyx-agent", "--", "calyxctl"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return wait(t, cmd, args)
	}

	t.Run("ipam show", func(t *testing.T) {
		r := run("ipam", "show", "--blocks")
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		golden(t, "ipam-show.golden", r.out)
		var u ipam.Usage
		mustJSON(t, run("ipam", "show", "-o", "json"), &u)
		// Three tunnel addresses and two pods.
		if len(u.Pools) != 1 || u.Pools[0].Used != 5 || u.Pools[0].Free != 65536-5 || u.Pools[0].Blocks != 3 {
			t.Errorf("pools = %+v, want one with 5 used, 65531 free, 3 blocks", u.Pools)
		}
		if len(u.Blocks) != 3 {
			t.Errorf("blocks = %+v, want 3", u.Blocks)
		}
	})

	t.Run("nodes", func(t *testing.T) {
		r := run("nodes")
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		golden(t, "nodes.golden", r.out)
		var ns []calyxctl.NodeInfo
		mustJSON(t, run("nodes", "-o", "json"), &ns)
		got := map[string]string{}
		for _, n := range ns {
			got[n.Name] = fmt.Sprintf("%s %s blocks=%d", n.UnderlayIP, n.Agent, len(n.Blocks))
		}
		want := map[string]string{
			"learn-k8s-1": "10.10.100.207/24 registered blocks=1",
			"learn-k8s-2": "10.10.100.208/24 registered blocks=1",
			"learn-k8s-3": "10.10.100.209/24 registered blocks=1",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("nodes (-want +got):\n%s", diff)
		}
		// On a node, that node's agent is asked /readyz.
		var onN []calyxctl.NodeInfo
		mustJSON(t, onNode(lab.DemoServerNode, "nodes", "-o", "json"), &onN)
		agents := map[string]string{}
		for _, n := range onN {
			agents[n.Name] = n.Agent + " " + n.AgentHealth
		}
		wantAgents := map[string]string{"learn-k8s-1": "registered ", "learn-k8s-2": "ready ok", "learn-k8s-3": "registered "}
		if diff := cmp.Diff(wantAgents, agents); diff != "" {
			t.Errorf("agents seen from %s (-want +got):\n%s", lab.DemoServerNode, diff)
		}
	})

	t.Run("trace", func(t *testing.T) {
		r := run("trace", "--nic", lab.NICName, lab.DemoClientPod, lab.DemoServerPod)
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		t.Logf("trace:\n%s", r.out)
		for _, want := range []string{client.HostIface, server.HostIface, "10.10.100.209", "10.10.100.208", client.IP, server.IP,
			"tunl0", "outer 10.10.100.209 → 10.10.100.208", "via 10.10.100.208 dev tunl0 proto calyx onlink", lab.NICName} {
			if !strings.Contains(r.out, want) {
				t.Errorf("trace lacks %q", want)
			}
		}
		var p calyxctl.Path
		mustJSON(t, run("trace", lab.DemoClientPod, lab.DemoServerPod, "-o", "json"), &p)
		var devs []string
		for _, h := range p.Hops {
			devs = append(devs, h.Device)
		}
		want := []string{"eth0", client.HostIface, "", "tunl0", "NIC", "NIC", "tunl0", "", server.HostIface, "eth0"}
		if diff := cmp.Diff(want, devs); diff != "" || !p.Encapsulated || p.Problem != "" {
			t.Errorf("hops' devices (-want +got):\n%s\nencapsulated %v, problem %q", diff, p.Encapsulated, p.Problem)
		}
		svg := filepath.Join(t.TempDir(), "diagram.svg")
		if r := run("trace", lab.DemoClientPod, lab.DemoServerPod, "-o", svg); r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		checkSVG(t, svg, client.HostIface, server.HostIface, client.IP, server.IP, "10.10.100.208", "10.10.100.209")
	})

	t.Run("kubectl plugin", func(t *testing.T) {
		kubectl, err := kubebin.Ensure(ctx, "kubectl", nil)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, kubectl, "calyx", "ipam", "show", "--blocks")
		cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"), "KUBECONFIG="+l.Kubeconfig())
		r := wait(t, cmd, []string{"kubectl calyx ipam show --blocks"})
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		golden(t, "ipam-show.golden", r.out)
	})

	t.Run("routes", func(t *testing.T) {
		r := onNode(lab.DemoClientNode, "routes")
		if r.code != 0 {
			t.Fatalf("exit %d:\n%s", r.code, r.out)
		}
		golden(t, "routes.golden", r.out)
		var rep calyxctl.RouteReport
		mustJSON(t, onNode(lab.DemoClientNode, "routes", "-o", "json"), &rep)
		var dst string
		for _, row := range rep.Routes {
			if row.Node == lab.DemoServerNode {
				dst = row.Dst
			}
		}
		if dst == "" {
			t.Fatalf("no route to %s's block in %+v", lab.DemoServerNode, rep)
		}
		// The agent repairs a deleted route at once: freeze it first, as
		// a hung agent would be.
		if err := c.SignalAgent(ctx, lab.DemoClientNode, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer c.SignalAgent(ctx, lab.DemoClientNode, syscall.SIGCONT)
		if out, err := c.Output(ctx, lab.DemoClientNode, "ip", "route", "del", dst); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		r = onNode(lab.DemoClientNode, "routes", "-o", "json")
		if r.code != 1 {
			t.Errorf("routes exited %d after a route was deleted, want 1:\n%s", r.code, r.out)
		}
		var after calyxctl.RouteReport
		if err := json.Unmarshal([]byte(r.out), &after); err != nil {
			t.Fatalf("%v:\n%s", err, r.out)
		}
		status := map[string]string{}
		for _, row := range after.Routes {
			status[row.Dst] = row.Status
		}
		if status[dst] != calyxctl.RouteMissing || after.Drift != 1 {
			t.Errorf("after deleting %s: statuses %v, drift %d; want %s missing, drift 1", dst, status, after.Drift, dst)
		}
		if r := onNode(lab.DemoClientNode, "routes"); !strings.Contains(r.out, "missing  "+dst) {
			t.Errorf("the table does not mark %s missing:\n%s", dst, r.out)
		}
	})

	t.Run("ipam check", func(t *testing.T) {
		r := run("ipam", "check")
		if r.code != 0 {
			t.Fatalf("exit %d on a clean cluster:\n%s", r.code, r.out)
		}
		// A runtime that died between CNI ADD and DEL leaves an address
		// of a pod the API server never knew.
		ghost, err := c.NewSandbox("default", "ghost", lab.DemoClientNode)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { c.CNIDel(ctx, ghost); c.RemoveSandbox(ghost) }()
		if err := c.CNIAdd(ctx, ghost); err != nil {
			t.Fatal(err)
		}
		r = run("ipam", "check", "-o", "json")
		if r.code != 1 {
			t.Errorf("ipam check exited %d with a stale allocation, want 1:\n%s", r.code, r.out)
		}
		var ps []calyxctl.Problem
		if err := json.Unmarshal([]byte(r.out), &ps); err != nil {
			t.Fatalf("%v:\n%s", err, r.out)
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Kind+" "+p.Address)
		}
		if diff := cmp.Diff([]string{calyxctl.StalePod + " " + ghost.IP}, got); diff != "" {
			t.Errorf("problems (-want +got):\n%s", diff)
		}
	})
}

func wait(t *testing.T, cmd *exec.Cmd, args []string) result {
	t.Helper()
	var out strings.Builder
	cmd.Stdout = &out
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return result{out: out.String()}
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return result{out: out.String(), code: 1}
	}
	t.Fatalf("calyxctl %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
	return result{}
}

func mustJSON(t *testing.T, r result, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.out), v); err != nil {
		t.Fatalf("parsing calyxctl's JSON: %v\n%s", err, r.out)
	}
}

// checkSVG parses the diagram as XML and looks for the names in its text.
func checkSVG(t *testing.T, path string, want ...string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := xml.NewDecoder(f)
	var text strings.Builder
	root := ""
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v", path, err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Space + " " + tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
			text.WriteByte('\n')
		}
	}
	if root != "http://www.w3.org/2000/svg svg" {
		t.Errorf("root element %q, want svg in the SVG namespace", root)
	}
	for _, w := range want {
		if !strings.Contains(text.String(), w) {
			t.Errorf("the diagram's text lacks %q", w)
		}
	}
}
