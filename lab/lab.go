// Package lab builds a Kubernetes cluster out of network namespaces on one
// machine, with real parts only: etcd, kube-apiserver, kube-scheduler and
// kube-controller-manager on the control-plane node, and on every node a
// real kubelet and containerd in the node's own network, mount and PID
// namespaces. calyx is installed as users install it, `kubectl apply -f
// deploy/calyx.yaml`, and kube-proxy runs as kubeadm's DaemonSet. Nothing
// of it touches the host's own network namespace or mounts.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/lab/cgroups"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/node"
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
	// BinDir holds calyx's binaries (make build): the lab builds calyx's
	// image from them, and runs calyx-lab node-init as each node's init.
	BinDir string
	// Runtimes gives nodes, by name, a container runtime other than the
	// default: Debian's containerd 1.6 on learn-k8s-2 (and every second
	// worker after it), containerd 2 on the others, so that every lab
	// meets the oldest runtime users run and a current one.
	Runtimes map[string]node.Runtime
	// Datapath, unless empty or auto, is set as the calyx-node
	// DaemonSet's CALYX_IPIP_DATAPATH after the manifest is applied.
	Datapath string
	// KernelNode adds learn-k8s-4, a qemu guest with Debian's kernel
	// (which has ipip), whose agent picks the kernel's datapath.
	KernelNode bool
	// Conformance adds the images Kubernetes' e2e network tests run
	// (agnhost, glibc-dns-testing, nginx, pause 3.10.2) to every node.
	Conformance bool
	// ReferenceCNI gives every node's containerd the runtime handler
	// node.RefCNIHandler, for the bench's reference sandboxes.
	ReferenceCNI bool
	// WaitForSlot is how long Up waits for another lab on this machine
	// to go (see SlotFile); 0 fails at once and says whose lab it is.
	WaitForSlot time.Duration
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
	kit    *kit
	nodes  map[string]*node.Node
	// kubeProcs are kube-scheduler and kube-controller-manager.
	kubeProcs  []*process
	kernelNode *KernelNode
	// slot is the machine's lab slot, held until Down (see SlotFile).
	slot *os.File
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

// nodeNames are the lab's nodes, the control plane first.
func (o *Options) nodeNames() []string {
	names := []string{ControlPlaneNode}
	for i := range o.Workers {
		names = append(names, NodeName(i))
	}
	return names
}

// runtime is the container runtime of the node at index i (0: the
// control plane).
func (o *Options) runtime(i int) node.Runtime {
	if r, ok := o.Runtimes[o.nodeNames()[i]]; ok {
		return r
	}
	if i%2 == 1 {
		return node.Containerd16
	}
	return node.Containerd2
}

func (o *Options) defaults() {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	// Nodes run binaries from BinDir and from other directories:
	// relative paths (make demo's bin/) would break.
	if abs, err := filepath.Abs(o.BinDir); err == nil {
		o.BinDir = abs
	}
	if abs, err := filepath.Abs(o.Dir); err == nil {
		o.Dir = abs
	}
	if o.Workers == 0 {
		o.Workers = 2
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

// Up builds the whole lab and returns once calyx-node runs on every node
// and every node is Ready. On error it tears down what it made.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	opts.defaults()
	if err := preflight(opts); err != nil {
		return nil, err
	}
	slot, err := takeSlot(ctx, opts.Dir, opts.WaitForSlot, opts.Progress)
	if err != nil {
		return nil, err
	}
	l := &Lab{opts: opts, nodes: map[string]*node.Node{}, slot: slot}
	defer func() {
		if err != nil {
			if kept := l.keepLogs(); kept != "" {
				err = fmt.Errorf("%w\n(the nodes' and the control plane's logs are kept in %s)", err, kept)
			}
			l.Down()
		}
	}()
	if err := updateState(opts.Dir, func(s *State) error { s.SupervisorPID = os.Getpid(); return nil }); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		fn   func() error
	}{
		{"the nodes' kit: Kubernetes binaries, containerd 1.6 and 2, runc, images", func() error {
			l.kit, err = l.prepareKit(ctx)
			return err
		}},
		{fmt.Sprintf("network namespaces: underlay %s with router %s, internet %s, nodes %v", UnderlayCIDR, RouterIP, InternetIP, opts.nodeNames()), l.setupNetwork},
		{fmt.Sprintf("control plane on %s: etcd and kube-apiserver at https://%s:%d", ControlPlaneNode, firstNodeIP, apiServerPort), func() error { return l.startControlPlane(ctx) }},
		{fmt.Sprintf("kube-scheduler and kube-controller-manager on %s", ControlPlaneNode), func() error { return l.startControllers(ctx) }},
		{"nodes: containerd and the kubelet on each, the images imported", func() error { return l.startNodes(ctx) }},
		{"kube-proxy, as kubeadm's DaemonSet (mode \"\": iptables)", func() error { return l.installKubeProxy(ctx) }},
		{"calyx: kubectl apply -f deploy/calyx.yaml", func() error { return l.installCalyx(ctx) }},
		{"CoreDNS, as kubeadm's add-on: the cluster's DNS at " + DNSIP, func() error { return l.installCoreDNS(ctx) }},
	}
	if opts.KernelNode {
		steps = append(steps, struct {
			what string
			fn   func() error
		}{KernelNodeName + ": a qemu guest with Debian's kernel (ipip), calyx-agent --ipip-datapath auto", func() error { return l.startKernelNode(ctx) }})
	}
	for _, s := range steps {
		if err := l.step(s.what, s.fn); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// preflight says what the machine lacks. (Another lab on the machine is
// the slot's business: see takeSlot.)
func preflight(opts Options) error {
	if err := checkBinaries(opts.BinDir); err != nil {
		return err
	}
	return checkHostPackages(opts.Progress, opts.Conformance, opts.KernelNode)
}

// setupNetwork creates the underlay, the internet and the nodes'
// namespaces.
func (l *Lab) setupNetwork() error {
	if err := setupUnderlay(); err != nil {
		return err
	}
	return updateState(l.opts.Dir, func(s *State) error {
		for i, n := range l.opts.nodeNames() {
			if err := setupNode(n, nodeIP(i)); err != nil {
				return err
			}
			s.Nodes = append(s.Nodes, NodeState{Name: n, IP: nodeIP(i).String(), NetNS: n,
				Dir: l.nodeDir(n), Runtime: string(l.opts.runtime(i)), RuntimeDir: l.kit.runtimes[l.opts.runtime(i)]})
		}
		return nil
	})
}

func (l *Lab) startControlPlane(ctx context.Context) error {
	var err error
	l.cp, err = controlplane.Start(ctx, controlplane.Options{
		Dir: filepath.Join(l.opts.Dir, "controlplane"), NetNS: nsexec.NamedPath(ControlPlaneNode),
		BindAddress: "0.0.0.0", AdvertiseAddress: firstNodeIP, Port: apiServerPort,
		Progress: l.opts.Progress, Logger: l.opts.Logger,
	})
	if err != nil {
		return err
	}
	l.Config = l.cp.Config
	l.Kube = kubernetes.NewForConfigOrDie(l.Config)
	l.Calyx = versioned.NewForConfigOrDie(l.Config)
	return updateState(l.opts.Dir, func(s *State) error {
		s.Kubeconfig = l.cp.Kubeconfig
		s.APIServer = l.cp.URL
		return nil
	})
}

// nodeDir is where a node's files live on the host.
func (l *Lab) nodeDir(node string) string { return filepath.Join(l.opts.Dir, "nodes", node) }

// Node is the running node of that name.
func (l *Lab) Node(name string) (*node.Node, bool) {
	n, ok := l.nodes[name]
	return n, ok
}

// Down removes every namespace, process, cgroup and file of the lab in
// dir. It works from the state file alone, so it also cleans up after a
// supervisor that died.
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
	if l != nil {
		if l.kernelNode != nil {
			l.kernelNode.Stop()
		}
		for _, n := range l.nodes {
			n.Stop()
		}
		for _, p := range l.kubeProcs {
			p.stop()
		}
		if l.cp != nil {
			if err := l.cp.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	} else if s.SupervisorPID != os.Getpid() && ours(s.SupervisorPID, dir) {
		// The supervisor stops the control plane and the nodes itself.
		stopPID(s.SupervisorPID, 20*time.Second)
	}
	// Whatever is left (a supervisor that died): a node's init takes its
	// whole PID namespace with it.
	for _, n := range s.Nodes {
		killPID(n.InitPID, dir)
	}
	for _, pid := range s.KubePIDs {
		killPID(pid, dir)
	}
	if s.Cgroup != "" {
		if err := cgroups.Remove(s.Hierarchies, s.Cgroup, s.CgroupsCreated); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, deleteNamespaces(s)...)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if l != nil && l.slot != nil {
		l.slot.Close() // frees the slot: the next lab may come up
		l.slot = nil
	}
	return errors.Join(errs...)
}

// deleteNamespaces deletes the lab's network namespaces: the state's, and
// the fixed names, should the state file be gone.
func deleteNamespaces(s *State) []error {
	var errs []error
	for _, n := range labNamespaceNames(s) {
		if err := nsexec.DeleteNamed(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// labNamespaceNames are the state's namespaces and the fixed names.
func labNamespaceNames(s *State) []string {
	names := []string{ControlPlaneNode, UnderlayNS, InternetNS}
	for _, n := range s.Nodes {
		if n.NetNS != "" && !slices.Contains(names, n.NetNS) {
			names = append(names, n.NetNS)
		}
	}
	for i := 0; i < 16; i++ {
		if !slices.Contains(names, NodeName(i)) {
			names = append(names, NodeName(i))
		}
	}
	return names
}

// killPID ends a process the lab in dir started, if it still runs.
func killPID(pid int, dir string) {
	if ours(pid, dir) {
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

// keepLogs copies every log of the lab into a new directory under
// $TMPDIR, for a start-up that failed (Down removes the lab's own), and
// returns it; "" when there was none.
func (l *Lab) keepLogs() string {
	var logs []string
	filepath.WalkDir(l.opts.Dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".log") && !strings.Contains(p, "/containerd/") {
			logs = append(logs, p)
		}
		return nil
	})
	if len(logs) == 0 {
		return ""
	}
	dir, err := os.MkdirTemp("", "calyx-lab-logs-")
	if err != nil {
		return ""
	}
	for _, p := range logs {
		rel, _ := filepath.Rel(l.opts.Dir, p)
		dst := filepath.Join(dir, strings.ReplaceAll(rel, "/", "_"))
		if b, err := os.ReadFile(p); err == nil {
			os.WriteFile(dst, b, 0o644)
		}
	}
	return dir
}
