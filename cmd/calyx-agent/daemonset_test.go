package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/calyx-net/calyx/agent/installcni"
	"github.com/calyx-net/calyx/agent/testnet"
	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/deploy/poolinit"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// The agent as deploy/calyx.yaml runs it, with nothing more: the
// calyx-node service account's token (the manifest's ClusterRole) and,
// although root, only the DaemonSet's capabilities (NET_ADMIN, BPF, read
// from the manifest) with no_new_privs. On two nodes it registers,
// allocates tunl0's address through the IPAM, loads the eBPF datapath
// (this kernel has no ipip module), becomes ready, routes each node's
// block to the other through tunl0, and writes the CNI plugins' kubeconfig
// with a token of their account (the manifest's Role calyx-cni-token).
func TestLeastPrivilegeOfTheDaemonSet(t *testing.T) {
	caps := daemonSetCaps(t)
	cp := cptest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	installCalyx(t, ctx, cp)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	tok, err := kube.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "calyx-node",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token for calyx-node: %v", err)
	}

	ul := testnet.NewUnderlay(t)
	ips := map[string]string{"learn-k8s-2": "10.10.100.208", "learn-k8s-3": "10.10.100.209"}
	names := []string{"learn-k8s-2", "learn-k8s-3"}
	nodes, dirs, procs := map[string]*testnet.NS{}, map[string]string{}, map[string]*process{}
	for _, n := range names {
		if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		nodes[n] = ul.AddNode(t, "cx-lp"+n[len(n)-1:], ips[n]+"/24")
		nodes[n].IP(t, "route", "add", "default", "via", "10.10.100.1") // for proxy ARP; nothing is sent there
		// As kubeadm requires: the container's /proc/sys is read-only.
		nodes[n].Sysctl(t, "net/ipv4/ip_forward", "1")
		kc := saKubeconfig(t, nodeKubeconfig(t, cp, nodes[n]), tok.Status.Token)
		dirs[n] = t.TempDir()
		// As in the DaemonSet, the agent keeps the CNI plugins' token
		// fresh, requesting it with its own account.
		sa := saDir(t, cp, tok.Status.Token)
		procs[n] = startConfined(t, nodes[n], n, kc, dirs[n], caps, "--cni-kubeconfig="+filepath.Join(dirs[n], "calyx-kubeconfig"),
			"--server=https://127.0.0.1:6443", "--token-file="+filepath.Join(sa, "token"), "--ca-file="+filepath.Join(sa, "ca.crt"))
	}
	for _, n := range names {
		procs[n].waitReady(t, 30*time.Second)
	}
	for _, n := range names {
		var held installcni.Held
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			held, err = installcni.ReadKubeconfig(filepath.Join(dirs[n], "calyx-kubeconfig"))
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil || held.Token.Subject != pluginUser {
			t.Errorf("%s: the agent wrote no CNI kubeconfig for %s: %+v, %v\nlog:\n%s", n, pluginUser, held, err, procs[n].logs)
		}
	}
	// What the agent runs with, as the kernel sees it.
	for _, n := range names {
		status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(procs[n].cmd.Process.Pid), "status"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "CapEff:") || strings.HasPrefix(l, "NoNewPrivs:") {
				t.Logf("%s: %s", n, l)
			}
		}
	}
	for _, pair := range [][2]string{{"learn-k8s-3", "learn-k8s-2"}, {"learn-k8s-2", "learn-k8s-3"}} {
		from, to := pair[0], pair[1]
		var found []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			found = nil
			for _, r := range nodes[from].Routes(t, filepath.Join(dirs[from], "protos")) {
				if strings.Contains(r, "via "+ips[to]+" dev tunl0 proto calyx onlink") {
					found = append(found, r)
				}
			}
			if len(found) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(found) == 0 {
			t.Errorf("%s has no route to %s's block via tunl0; routes: %v\nlog:\n%s", from, to,
				nodes[from].Routes(t, filepath.Join(dirs[from], "protos")), procs[from].logs)
		} else {
			t.Logf("%s: %s", from, strings.Join(found, "; "))
		}
	}
	for _, n := range names {
		if strings.Contains(procs[n].logs.String(), "forbidden") {
			t.Errorf("%s: the API server refused the agent something:\n%s", n, procs[n].logs)
		}
	}
}

// installCalyx is `kubectl apply -f deploy/calyx.yaml` and the work of
// its calyx-ippool-init Job (no controller runs the Job here).
func installCalyx(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane) {
	t.Helper()
	kubectl, err := kubebin.Ensure(ctx, "kubectl", nil)
	if err != nil {
		t.Fatalf("building kubectl: %v", err)
	}
	apply := exec.CommandContext(ctx, kubectl, "--kubeconfig", cp.Kubeconfig, "apply", "--server-side", "-f", "-")
	apply.Stdin = bytes.NewReader(deploy.Manifest)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply -f deploy/calyx.yaml: %v\n%s", err, out)
	}
	pool, err := poolinit.Parse([]byte(manifestConfigMap(t, "calyx-default-ippool").Data["ippool.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if err := poolinit.Create(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), calyxclient.NewForConfigOrDie(cp.Config), pool); err != nil {
		t.Fatal(err)
	}
}

// startConfined starts calyx-agent in node as root with only caps, through
// setpriv: the bounding set limits what root gets at exec, and
// no_new_privs keeps it there, as in a container of the DaemonSet.
func startConfined(t *testing.T, node *testnet.NS, name, kubeconfig, stateDir string, caps []string, extra ...string) *process {
	t.Helper()
	var bounding []string
	for _, c := range caps {
		bounding = append(bounding, "+"+strings.ToLower(c))
	}
	p := &process{node: node, logs: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", node.Name,
		"setpriv", "--bounding-set=-all,"+strings.Join(bounding, ","), "--inh-caps=-all", "--no-new-privs", "--",
		agentBinary(t), "--underlay=interface=^ens160$", "--ipip-datapath=ebpf",
		"--state-dir="+stateDir, "--rt-protos-dir="+filepath.Join(stateDir, "protos"), "--ipam-socket="+filepath.Join(stateDir, "ipam.sock"),
		"--health-address=127.0.0.1:9099", "--metrics-address=127.0.0.1:9099")
	p.cmd.Args = append(p.cmd.Args, extra...)
	p.cmd.Env = append(os.Environ(), "NODENAME="+name, "KUBECONFIG="+kubeconfig)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
	})
	return p
}

// saKubeconfig is the kubeconfig at path with every user replaced by the
// bearer token.
func saKubeconfig(t *testing.T, path, token string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	}
	out := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// manifestConfigMap is the ConfigMap of deploy/calyx.yaml with that name.
func manifestConfigMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.Manifest)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			t.Fatalf("deploy/calyx.yaml has no ConfigMap %s", name)
		}
		if err != nil {
			t.Fatal(err)
		}
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal(doc, &cm); err == nil && cm.Kind == "ConfigMap" && cm.Name == name {
			return &cm
		}
	}
}

// daemonSetCaps is the calyx-agent container's added capabilities in
// deploy/calyx.yaml, after checking it drops every other one.
func daemonSetCaps(t *testing.T) []string {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.Manifest)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			t.Fatal("deploy/calyx.yaml has no DaemonSet")
		}
		if err != nil {
			t.Fatal(err)
		}
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal(doc, &ds); err != nil || ds.Kind != "DaemonSet" {
			continue
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if c.Name != "calyx-agent" {
				continue
			}
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Fatalf("the calyx-agent container does not drop ALL capabilities: %+v", sc)
			}
			var caps []string
			for _, c := range sc.Capabilities.Add {
				caps = append(caps, string(c))
			}
			if diff := cmp.Diff([]string{"NET_ADMIN", "SYS_ADMIN"}, caps); diff != "" {
				t.Logf("capabilities changed (-was +now):\n%s", diff)
			}
			return caps
		}
	}
}
