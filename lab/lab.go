// Package lab builds a Kubernetes cluster out of network namespaces on one
// machine, with real parts: etcd and kube-apiserver on the control-plane
// node, the real calyx-agent on every node, pods wired by the real CNI
// plugins through libcni, and Node and Pod objects as a kubelet writes them.
// Nothing of it touches the host's own network namespace.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/lab/controlplane"
)

// The article's cluster: learn-k8s-1 is the control plane, the workers
// follow from .208 on.
const (
	ControlPlaneNode = "learn-k8s-1"
	firstNodeIP      = "10.10.100.207"
	apiServerPort    = 6443
	DefaultPool      = "default-ipv4-ippool"
	DefaultPoolCIDR  = "192.168.0.0/16"
)

// Options configure a lab.
type Options struct {
	// Dir holds the lab's files; default DefaultDir.
	Dir string
	// Workers is the number of worker nodes; default 2.
	Workers int
	// BinDir holds calyx-agent, calyx-lab and the CNI binaries.
	BinDir string
	// Datapath is the agents' --ipip-datapath; default auto.
	Datapath string
	// Progress receives a line per step, with its duration.
	Progress io.Writer
	Logger   *slog.Logger
}

// Lab is a running lab, held by the process that supervises it.
type Lab struct {
	opts   Options
	cp     *controlplane.ControlPlane
	Config *rest.Config
	Kube   kubernetes.Interface
	Calyx  versioned.Interface
	agents map[string]*process
	// kubeProcs are kube-controller-manager and the kube-proxies.
	kubeProcs []*process
	kcm       *process
}

// NodeName is the name of worker i (0-based): learn-k8s-2, learn-k8s-3, …
func NodeName(i int) string { return "learn-k8s-" + strconv.Itoa(i+2) }

// nodeIP is the underlay address of the node at index i, the control plane
// being index 0.
func nodeIP(i int) netip.Addr {
	a := netip.MustParseAddr(firstNodeIP).As4()
	a[3] += byte(i)
	return netip.AddrFrom4(a)
}

func (o *Options) defaults() {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	// Nodes link their CNI binaries to BinDir and processes run from
	// other directories: relative paths (make demo's bin/) would break.
	if abs, err := filepath.Abs(o.BinDir); err == nil {
		o.BinDir = abs
	}
	if abs, err := filepath.Abs(o.Dir); err == nil {
		o.Dir = abs
	}
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.Datapath == "" {
		o.Datapath = "auto"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// step runs one stage of start-up and says how long it took.
func (l *Lab) step(what string, fn func() error) error {
	begin := time.Now()
	fmt.Fprintf(l.opts.Progress, "• %s …\n", what)
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(l.opts.Progress, "  done in %s\n", time.Since(begin).Round(time.Millisecond))
	return nil
}

// Up builds the whole lab and returns once every agent is ready. On error
// it tears down what it made.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	opts.defaults()
	if err := checkBinaries(opts.BinDir); err != nil {
		return nil, err
	}
	if err := checkIptables(opts.Progress); err != nil {
		return nil, err
	}
	if _, err := ReadState(opts.Dir); err == nil {
		return nil, fmt.Errorf("a lab is already up in %s: use it, or run `calyx-lab down` first", opts.Dir)
	}
	// The namespaces have fixed names: a second lab, from another
	// directory, would take over the first one's nodes.
	if _, err := os.Stat(netnsPath(ControlPlaneNode)); err == nil {
		return nil, fmt.Errorf("network namespace %s exists: another lab is up on this machine; run `calyx-lab down --dir <its dir>` (or `ip netns del` its namespaces) first", ControlPlaneNode)
	}
	l := &Lab{opts: opts, agents: map[string]*process{}}
	defer func() {
		if err != nil {
			l.Down()
		}
	}()
	if err := updateState(opts.Dir, func(s *State) error { s.SupervisorPID = os.Getpid(); return nil }); err != nil {
		return nil, err
	}

	nodes := []string{ControlPlaneNode}
	for i := 0; i < opts.Workers; i++ {
		nodes = append(nodes, NodeName(i))
	}
	err = l.step(fmt.Sprintf("network namespaces: underlay %s with router %s, internet %s, nodes %v", UnderlayCIDR, RouterIP, InternetIP, nodes), func() error {
		if err := setupUnderlay(); err != nil {
			return err
		}
		return updateState(opts.Dir, func(s *State) error {
			for i, n := range nodes {
				if err := setupNode(n, nodeIP(i)); err != nil {
					return err
				}
				s.Nodes = append(s.Nodes, NodeState{Name: n, IP: nodeIP(i).String(), NetNS: n, Dir: filepath.Join(opts.Dir, "nodes", n)})
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}

	err = l.step(fmt.Sprintf("control plane on %s: etcd and kube-apiserver at https://%s:%d", ControlPlaneNode, firstNodeIP, apiServerPort), func() error {
		l.cp, err = controlplane.Start(ctx, controlplane.Options{
			Dir: filepath.Join(opts.Dir, "controlplane"), NetNS: netnsPath(ControlPlaneNode),
			BindAddress: "0.0.0.0", AdvertiseAddress: firstNodeIP, Port: apiServerPort,
			Progress: opts.Progress, Logger: opts.Logger,
		})
		if err != nil {
			return err
		}
		l.Config = l.cp.Config
		l.Kube = kubernetes.NewForConfigOrDie(l.Config)
		l.Calyx = versioned.NewForConfigOrDie(l.Config)
		return updateState(opts.Dir, func(s *State) error {
			s.Kubeconfig = l.cp.Kubeconfig
			s.APIServer = l.cp.URL
			return nil
		})
	})
	if err != nil {
		return nil, err
	}

	err = l.step("default IPPool "+DefaultPoolCIDR+" (blockSize 26, ipipMode Always, natOutgoing)", func() error {
		p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: DefaultPool},
			Spec: v1alpha1.IPPoolSpec{CIDR: DefaultPoolCIDR, BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways, NATOutgoing: true}}
		_, err := l.Calyx.CalyxV1alpha1().IPPools().Create(ctx, p, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return nil, err
	}

	for i, n := range nodes {
		err = l.step(fmt.Sprintf("node %s (%s): Node object, CNI config and binaries, calyx-agent", n, nodeIP(i)), func() error {
			if err := l.registerNode(ctx, n, nodeIP(i), i == 0); err != nil {
				return err
			}
			if err := l.installNode(n); err != nil {
				return err
			}
			return l.startAgent(n)
		})
		if err != nil {
			return nil, err
		}
	}
	err = l.step("waiting for every agent to be ready", func() error {
		return l.waitAgentsReady(ctx, 60*time.Second)
	})
	if err != nil {
		return nil, err
	}
	err = l.step(fmt.Sprintf("kube-controller-manager on %s, kube-proxy (iptables mode) on every worker", ControlPlaneNode), func() error {
		kcm, proxy, err := l.ensureKubeBinaries(ctx)
		if err != nil {
			return err
		}
		if err := l.startControllerManager(kcm); err != nil {
			return err
		}
		for _, n := range nodes[1:] {
			if err := l.startKubeProxy(n, proxy); err != nil {
				return err
			}
		}
		for _, n := range nodes[1:] {
			if err := l.waitKubeProxy(ctx, n, 60*time.Second); err != nil {
				return err
			}
		}
		return l.waitControllerManager(ctx, 60*time.Second)
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// nodeDir is where a node's files live: its CNI config and binaries, the
// agent's state and log.
func (l *Lab) nodeDir(node string) string { return filepath.Join(l.opts.Dir, "nodes", node) }

// installNode does what calyx's install-cni does on a real node: the CNI
// binaries, the shipped conflist pointed at this node's paths, and a
// kubeconfig for the plugins.
func (l *Lab) installNode(node string) error {
	dir := l.nodeDir(node)
	for _, d := range []string{"bin", "net.d", "state", "cni-cache"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, b := range cniBinaries {
		dst := filepath.Join(dir, "bin", b)
		os.Remove(dst)
		if err := os.Symlink(filepath.Join(l.opts.BinDir, b), dst); err != nil {
			return err
		}
	}
	kubeconfig := filepath.Join(dir, "net.d", "calyx-kubeconfig")
	if err := l.cp.WriteKubeconfig(kubeconfig, l.cp.URL); err != nil {
		return err
	}
	conflist, err := nodeConflist(dir, kubeconfig)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "net.d", "10-calyx.conflist"), conflist, 0o644)
}

// nodeConflist is the shipped conflist with this node's paths: several
// nodes share the machine's file system.
func nodeConflist(dir, kubeconfig string) ([]byte, error) {
	var list map[string]any
	if err := json.Unmarshal(deploy.Conflist, &list); err != nil {
		return nil, fmt.Errorf("parsing the shipped conflist: %w", err)
	}
	plugins, _ := list["plugins"].([]any)
	for _, p := range plugins {
		m, _ := p.(map[string]any)
		if m["type"] != "calyx" {
			continue
		}
		m["state_dir"] = filepath.Join(dir, "state")
		ipamConf, _ := m["ipam"].(map[string]any)
		if ipamConf == nil {
			return nil, errors.New("the shipped conflist's calyx entry has no ipam section")
		}
		ipamConf["kubeconfig"] = kubeconfig
		ipamConf["nodename_file"] = filepath.Join(dir, "state", "nodename")
		ipamConf["lock_file"] = filepath.Join(dir, "ipam.lock")
		ipamConf["agent_socket"] = filepath.Join(dir, "ipam.sock")
	}
	return json.MarshalIndent(list, "", "  ")
}

// Down removes every namespace, process and file of the lab in dir. It
// works from the state file alone, so it also cleans up after a supervisor
// that died.
func (l *Lab) Down() error {
	return down(l.opts.Dir, l)
}

// Down tears down the lab in dir from another process than its supervisor.
func Down(dir string) error {
	if dir == "" {
		dir = DefaultDir
	}
	return down(dir, nil)
}

func down(dir string, l *Lab) error {
	var errs []error
	s, _ := ReadState(dir)
	if s == nil {
		s = &State{}
	}
	for _, p := range s.Pods {
		killPod(p.CommandPID)
		deleteNetNS(p.NetNS)
	}
	if l != nil {
		for _, p := range l.kubeProcs {
			p.stop()
		}
		for _, a := range l.agents {
			a.stop()
		}
		if l.cp != nil {
			if err := l.cp.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	} else if s.SupervisorPID > 0 && s.SupervisorPID != os.Getpid() {
		// The supervisor stops the control plane and the agents itself.
		stopPID(s.SupervisorPID, 20*time.Second)
	}
	for _, n := range s.Nodes {
		killPID(n.AgentPID)
	}
	for _, pid := range s.KubePIDs {
		killPID(pid)
	}
	nodes := map[string]bool{}
	for _, n := range s.Nodes {
		nodes[n.NetNS] = true
	}
	// Also the fixed names, should the state file be gone.
	nodes[ControlPlaneNode] = true
	for i := 0; i < 16; i++ {
		nodes[NodeName(i)] = true
	}
	for n := range nodes {
		if err := deleteNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range []string{UnderlayNS, InternetNS} {
		if err := deleteNetNS(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killPod ends a pod's command and everything it started (tftpd-hpa
// forks a child per transfer): the command leads a session and process
// group of its own, as a container's processes share its fate.
func killPod(pid int) {
	if pid > 0 {
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// killPID ends a process the lab started, if it still runs.
func killPID(pid int) {
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// stopPID asks a process to stop and waits for it, then kills it.
func stopPID(pid int, wait time.Duration) {
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
}

// Dir is where the lab keeps its files.
func (l *Lab) Dir() string { return l.opts.Dir }

// Kubeconfig is an admin kubeconfig that works from the host.
func (l *Lab) Kubeconfig() string { return l.cp.Kubeconfig }
