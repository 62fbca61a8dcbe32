package plugin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

var pluginPath string

// TestMain builds the real binary: the tests invoke it as a runtime does,
// a process per call with the CNI environment and the netconf on stdin.
func TestMain(m *testing.M) {
	// Fuzz workers run only the Fuzz targets, which never exec the
	// plugin: building it in each worker took most of `make fuzz`'s time.
	if slices.Contains(os.Args, "-test.fuzzworker") {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "calyx-ipam-bin-")
	if err != nil {
		panic(err)
	}
	pluginPath = filepath.Join(dir, "calyx-ipam")
	if out, err := exec.Command("go", "build", "-o", pluginPath, "github.com/calyx-net/calyx/cmd/calyx-ipam").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building calyx-ipam: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	t    testing.TB
	cp   *controlplane.ControlPlane
	cs   versioned.Interface
	dir  string
	node string
}

func newEnv(t testing.TB, pools ...v1alpha1.IPPool) *env {
	t.Helper()
	cp := cptest.Start(t)
	e := &env{t: t, cp: cp, cs: versioned.NewForConfigOrDie(cp.Config), dir: t.TempDir(), node: "learn-k8s-2"}
	for _, p := range pools {
		if _, err := e.cs.CalyxV1alpha1().IPPools().Create(context.Background(), &p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func pool(name, cidr string, blockSize int) v1alpha1.IPPool {
	return v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: blockSize}}
}

// conf is the netconf as the calyx plugin passes it down: the network with
// its ipam section.
func (e *env) conf(version string, ipam map[string]any) []byte {
	base := map[string]any{
		"type":       "calyx-ipam",
		"kubeconfig": e.cp.Kubeconfig,
		"nodename":   e.node,
		"timeout":    "3s",
		"lock_file":  filepath.Join(e.dir, "ipam-"+e.node+".lock"),
	}
	for k, v := range ipam {
		if v == nil {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": version, "name": "k8s-pod-network", "type": "calyx", "ipam": base})
	return b
}

func (e *env) args(cmd, id string) *invoke.Args {
	return &invoke.Args{
		Command: cmd, ContainerID: id, NetNS: "/var/run/netns/" + id, IfName: "eth0",
		PluginArgsStr: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-" + id, Path: filepath.Dir(pluginPath),
	}
}

func (e *env) add(conf []byte, id string) (*current.Result, error) {
	r, err := invoke.ExecPluginWithResult(context.Background(), pluginPath, conf, e.args("ADD", id), nil)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}

func (e *env) run(cmd string, conf []byte, id string) error {
	return invoke.ExecPluginWithoutResult(context.Background(), pluginPath, conf, e.args(cmd, id), nil)
}

func (e *env) used() int {
	e.t.Helper()
	l, err := e.cs.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, b := range l.Items {
		n += len(b.Spec.Allocations)
	}
	return n
}

func code(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestAddDelCheck(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			conf := e.conf(v, nil)
			id := "c" + v[:1] + v[2:3]
			r, err := e.add(conf, id)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if len(r.IPs) != 1 || r.IPs[0].Gateway != nil {
				t.Fatalf("ADD result %+v: want one address and no gateway", r.IPs)
			}
			addr := r.IPs[0].Address
			if ones, _ := addr.Mask.Size(); ones != 32 || !netip.MustParsePrefix("192.168.0.0/16").Contains(netip.MustParseAddr(addr.IP.String())) {
				t.Errorf("address %s: want a /32 from 192.168.0.0/16", addr.String())
			}
			again, err := e.add(conf, id)
			if err != nil || again.IPs[0].Address.String() != addr.String() {
				t.Errorf("a repeated ADD = %v, %v; want the same %s", again, err, addr.String())
			}
			if v != "0.3.1" { // CHECK exists from 0.4.0
				withPrev := checkConf(t, conf, r)
				if err := e.run("CHECK", withPrev, id); err != nil {
					t.Errorf("CHECK of a live allocation: %v", err)
				}
			}
			for i := 0; i < 2; i++ {
				if err := e.run("DEL", conf, id); err != nil {
					t.Errorf("DEL #%d: %v", i+1, err)
				}
			}
			if v != "0.3.1" {
				err := e.run("CHECK", checkConf(t, conf, r), id)
				if code(err) != 101 {
					t.Errorf("CHECK after DEL = %v, want code 101", err)
				}
			}
		})
	}
	if n := e.used(); n != 0 {
		t.Errorf("%d addresses still allocated", n)
	}
}

// checkConf adds prevResult, as a runtime does for CHECK.
func checkConf(t *testing.T, conf []byte, r *current.Result) []byte {
	t.Helper()
	var m map[string]any
	json.Unmarshal(conf, &m)
	prev, err := r.GetAsVersion(m["cniVersion"].(string))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(prev)
	var pm map[string]any
	json.Unmarshal(b, &pm)
	m["prevResult"] = pm
	out, _ := json.Marshal(m)
	return out
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, pool("tiny", "10.30.0.0/30", 30))
	// Take the whole /30 so that the exhaustion case has nothing left.
	for i := 0; i < 4; i++ {
		if _, err := e.add(e.conf("1.1.0", nil), fmt.Sprintf("fill%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := e.used()
	tests := []struct {
		name string
		conf []byte
		args string
		code uint
	}{
		{"malformed JSON", []byte(`{"cniVersion": "1.1.0", "name": `), "", types.ErrDecodingFailure},
		{"unsupported version", e.conf("9.9.9", nil), "", types.ErrIncompatibleCNIVersion},
		{"missing kubeconfig", e.conf("1.1.0", map[string]any{"kubeconfig": nil}), "", types.ErrInvalidNetworkConfig},
		{"kubeconfig that does not exist", e.conf("1.1.0", map[string]any{"kubeconfig": "/nonexistent/kubeconfig"}), "", types.ErrInvalidNetworkConfig},
		{"bad timeout", e.conf("1.1.0", map[string]any{"timeout": "soon"}), "", types.ErrInvalidNetworkConfig},
		{"unknown pool", e.conf("1.1.0", map[string]any{"pools": []string{"nope"}}), "", types.ErrInvalidNetworkConfig},
		{"no node name yet", e.conf("1.1.0", map[string]any{"nodename": nil, "nodename_file": filepath.Join(e.dir, "missing")}), "", types.ErrTryAgainLater},
		{"hostile CNI_ARGS", e.conf("1.1.0", nil), "K8S_POD_NAMESPACE=../../etc;K8S_POD_NAME=x", types.ErrInvalidEnvironmentVariables},
		{"pool exhausted", e.conf("1.1.0", map[string]any{"strict_affinity": true}), "", 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := e.args("ADD", "bad")
			if tc.args != "" {
				args.PluginArgsStr = tc.args
			}
			_, err := invoke.ExecPluginWithResult(context.Background(), pluginPath, tc.conf, args, nil)
			if code(err) != tc.code {
				t.Fatalf("ADD = %v, want code %d", err, tc.code)
			}
			var te *types.Error
			errors.As(err, &te)
			if te.Msg == "" || (te.Details == "" && tc.code != types.ErrIncompatibleCNIVersion && tc.code != types.ErrDecodingFailure) {
				t.Errorf("error %+v does not say what is wrong", te)
			}
			t.Logf("code %d: %s: %s", te.Code, te.Msg, te.Details)
		})
	}
	if after := e.used(); after != before {
		t.Errorf("failed ADDs changed the allocations: %d before, %d after", before, after)
	}
}

// TestAPIServerDown stops kube-apiserver and freezes it: ADD fails with
// code 11 within the configured timeout either way, STATUS says 50, and
// both work again once it is back.
func TestAPIServerDown(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	conf := e.conf("1.1.0", map[string]any{"timeout": "2s"})
	if _, err := e.add(conf, "before"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	t.Run("frozen", func(t *testing.T) {
		pid := e.cp.APIServerPID()
		syscall.Kill(pid, syscall.SIGSTOP)
		begin := time.Now()
		_, err := e.add(conf, "frozen")
		took := time.Since(begin)
		syscall.Kill(pid, syscall.SIGCONT)
		if code(err) != types.ErrTryAgainLater {
			t.Fatalf("ADD with a frozen API server = %v, want code 11", err)
		}
		if took > 5*time.Second {
			t.Errorf("ADD took %s with a 2s timeout", took)
		}
		t.Logf("ADD failed after %s: %v", took.Round(time.Millisecond), err)
	})

	e.cp.StopAPIServer()
	begin := time.Now()
	_, err := e.add(conf, "down")
	if code(err) != types.ErrTryAgainLater {
		t.Fatalf("ADD with the API server stopped = %v, want code 11", err)
	}
	t.Logf("ADD failed after %s: %v", time.Since(begin).Round(time.Millisecond), err)
	if err := e.run("STATUS", conf, ""); code(err) != types.ErrPluginNotAvailable {
		t.Errorf("STATUS with the API server stopped = %v, want code 50", err)
	}
	if err := e.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.run("STATUS", conf, ""); err != nil {
		t.Errorf("STATUS once the API server is back: %v", err)
	}
	if _, err := e.add(conf, "down"); err != nil {
		t.Errorf("ADD once the API server is back: %v", err)
	}
	if n := e.used(); n != 2 {
		t.Errorf("%d addresses allocated, want 2 (before, down)", n)
	}
}

func TestGC(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	conf := e.conf("1.1.0", nil)
	for _, id := range []string{"keep", "gone1", "gone2"} {
		if _, err := e.add(conf, id); err != nil {
			t.Fatal(err)
		}
	}
	var m map[string]any
	json.Unmarshal(conf, &m)
	m["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "eth0"}}
	gcConf, _ := json.Marshal(m)
	if err := e.run("GC", gcConf, ""); err != nil {
		t.Fatalf("GC: %v", err)
	}
	l, _ := e.cs.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	var handles []string
	for _, b := range l.Items {
		for _, a := range b.Spec.Allocations {
			handles = append(handles, a.Handle)
		}
	}
	if diff := cmp.Diff([]string{"k8s-pod-network.keep"}, handles); diff != "" {
		t.Errorf("allocations after GC (-want +got):\n%s", diff)
	}
}

// TestConcurrentProcesses runs 8 nodes × 50 ADDs as separate calyx-ipam
// processes, as kubelets on 8 nodes starting pods at once would.
func TestConcurrentProcesses(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	const nodes, perNode = 8, 50
	sem := make(chan struct{}, 32) // bounded: 400 Go processes at once would just swap
	type res struct {
		node string
		addr string
		err  error
	}
	out := make(chan res, nodes*perNode)
	var wg sync.WaitGroup
	begin := time.Now()
	for n := 0; n < nodes; n++ {
		node := fmt.Sprintf("node-%d", n)
		ne := *e
		ne.node = node
		conf := ne.conf("1.1.0", nil)
		for i := 0; i < perNode; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				r, err := ne.add(conf, fmt.Sprintf("%s-%d", node, i))
				if err != nil {
					out <- res{node, "", err}
					return
				}
				out <- res{node, r.IPs[0].Address.IP.String(), nil}
			}()
		}
	}
	wg.Wait()
	close(out)
	took := time.Since(begin)
	seen := map[string]string{}
	for r := range out {
		if r.err != nil {
			t.Fatalf("%s: %v", r.node, r.err)
		}
		if other, dup := seen[r.addr]; dup {
			t.Fatalf("%s given to %s and %s", r.addr, other, r.node)
		}
		seen[r.addr] = r.node
	}
	t.Logf("%d ADD processes in %s: %.0f allocations/s", len(seen), took.Round(time.Millisecond), float64(len(seen))/took.Seconds())
	l, _ := e.cs.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	for _, b := range l.Items {
		for _, a := range b.Spec.Allocations {
			if a.Node != b.Spec.Node {
				t.Errorf("block %s of %s holds an address of %s", b.Name, b.Spec.Node, a.Node)
			}
		}
	}
	var dwg sync.WaitGroup
	for n := 0; n < nodes; n++ {
		ne := *e
		ne.node = fmt.Sprintf("node-%d", n)
		conf := ne.conf("1.1.0", nil)
		for i := 0; i < perNode; i++ {
			dwg.Add(1)
			go func() {
				defer dwg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := ne.run("DEL", conf, fmt.Sprintf("%s-%d", ne.node, i)); err != nil {
					t.Errorf("DEL: %v", err)
				}
			}()
		}
	}
	dwg.Wait()
	if n := e.used(); n != 0 {
		t.Errorf("%d addresses left after deleting all", n)
	}
}
