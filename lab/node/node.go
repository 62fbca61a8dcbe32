// Package node runs one Kubernetes node of the lab: a real containerd and a
// real kubelet in the node's own network namespace, and in mount, PID and
// UTS namespaces of its own, so that the node has its own /etc/cni/net.d,
// /opt/cni/bin, /var/lib/kubelet, /var/log/pods, /run/containerd,
// /var/lib/calyx and /var/run/calyx (a DaemonSet's hostPath volumes land on
// that node alone) while the host's file system and mounts stay untouched.
//
// The node's PID 1 is `calyx-lab node-init` (InitMain): it makes the
// mounts, joins the node's cgroup, and starts and reaps containerd and the
// kubelet. Killing it ends every process of the node, containers included:
// the kernel ends a PID namespace with its init.
package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/images"
	"github.com/calyx-net/calyx/lab/spawn"
)

// Runtime is a node's container runtime.
type Runtime string

const (
	// Containerd16 is Debian 12's containerd 1.6, the oldest that users
	// run: it knows CNI versions up to 1.0.0.
	Containerd16 Runtime = "containerd-1.6"
	// Containerd2 is containerd 2.x, built from its module.
	Containerd2 Runtime = "containerd-2"
)

// ParseRuntime reads a Runtime's name.
func ParseRuntime(s string) (Runtime, error) {
	switch r := Runtime(s); r {
	case Containerd16, Containerd2:
		return r, nil
	}
	return "", fmt.Errorf("runtime %q: want %s or %s", s, Containerd16, Containerd2)
}

// Config describes a node.
type Config struct {
	Name string
	IP   netip.Addr
	// NetNS is the path of the node's network namespace.
	NetNS string
	// Dir holds the node's files on the host: the upper layers of its
	// /etc, /opt and /var, its /run, its containerd root.
	Dir     string
	Runtime Runtime
	// RuntimeDir holds containerd, containerd-shim-runc-v2 and ctr.
	RuntimeDir string
	Runc       string
	Kubelet    string
	// Init runs node-init: e.g. {"/path/calyx-lab", "node-init"}.
	Init []string
	// APIServer is the URL the kubelet reaches the API server at.
	APIServer string
	// CA is the cluster CA; ClientCert and ClientKey the kubelet's
	// credential (PEM).
	CA, ClientCert, ClientKey []byte
	// Hierarchies and CgroupRoot place the node's processes: its pods
	// under CgroupRoot (the kubelet's cgroupRoot), containerd and the
	// kubelet in CgroupRoot/system.
	Hierarchies []string
	CgroupRoot  string
	// KubeletArgs are added to the kubelet's command line (labels, taints).
	KubeletArgs []string
	// ClusterDNS is the cluster DNS Service's address the kubelet gives
	// pods (kube-dns, CoreDNS).
	ClusterDNS string
	// RefCNI adds containerd's runtime handler "ref", whose CNI
	// configuration is /etc/cni/ref.d (RefCNIHandler).
	RefCNI bool
}

// RefCNIHandler is the runtime handler of Config.RefCNI.
const RefCNIHandler = "ref"

// Node is a running node.
type Node struct {
	Config
	pid int
	// exited is closed when init ends; nil for a node this process did
	// not start (Attach).
	exited chan struct{}
	err    error
}

// Attach is the node whose init runs with host PID pid, started by another
// process (the lab's supervisor).
func Attach(cfg Config, pid int) *Node { return &Node{Config: cfg, pid: pid} }

// initConfig is what node-init reads from Dir/init.json.
type initConfig struct {
	Name        string   `json:"name"`
	Dir         string   `json:"dir"`
	Hierarchies []string `json:"hierarchies"`
	Cgroup      string   `json:"cgroup"`
	Path        string   `json:"path"`
	Containerd  []string `json:"containerd"`
	Kubelet     []string `json:"kubelet"`
}

// Start lays out the node's files and starts its init, and returns once
// containerd serves CRI and the kubelet is healthy.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := layout(cfg); err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	log, err := os.OpenFile(filepath.Join(cfg.Dir, "init.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(cfg.Init[0], append(cfg.Init[1:], filepath.Join(cfg.Dir, "init.json"))...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS,
		// As unshare(1) does, Go also makes every mount private, so
		// that nothing the node mounts reaches the host.
		Unshareflags: syscall.CLONE_NEWNS,
	}
	waited, err := spawn.Start(cmd, cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("starting node %s's init: %w", cfg.Name, err)
	}
	n := &Node{Config: cfg, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		n.err = <-waited
		close(n.exited)
	}()
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	if err := n.waitReady(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return n, nil
}

// InitPID is the host's PID of the node's init: /proc/PID/root is the
// node's file system, /proc/PID/ns its namespaces.
func (n *Node) InitPID() int { return n.pid }

// Exited is closed when the node's init has ended (never, for an attached
// node).
func (n *Node) Exited() <-chan struct{} { return n.exited }

// Path is the host's path to the node's path p, while the node runs.
func (n *Node) Path(p string) string {
	// /var/run is a symlink to /run, and an absolute symlink met under
	// /proc/PID/root resolves against the caller's root, not the node's.
	if rest, ok := strings.CutPrefix(p, "/var/run/"); ok {
		p = "/run/" + rest
	}
	return filepath.Join("/proc", strconv.Itoa(n.InitPID()), "root", p)
}

// Log is the path of a node component's log (containerd, kubelet).
func (n *Node) Log(component string) string {
	return filepath.Join(n.Dir, "fs", "var", "log", component+".log")
}

// CRISocket is the host's path to the node's containerd socket.
func (n *Node) CRISocket() string {
	return filepath.Join(n.Dir, "fs", "run", "containerd", "containerd.sock")
}

// Stop ends the node: its init, and with it every process of the node.
func (n *Node) Stop() {
	if n == nil || n.pid <= 0 {
		return
	}
	syscall.Kill(n.pid, syscall.SIGKILL)
	if n.exited != nil {
		<-n.exited
		return
	}
	for i := 0; i < 200 && syscall.Kill(n.pid, 0) == nil; i++ {
		time.Sleep(25 * time.Millisecond)
	}
}

// Command runs argv on the node: in its network, mount, PID and UTS
// namespaces, as `docker exec` into a kind node does, with the node's
// runtime tools (ctr, talking to the CRI's namespace) in PATH.
func (n *Node) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := CommandIn(ctx, n.InitPID(), argv...)
	cmd.Env = append(os.Environ(), "PATH="+n.RuntimeDir+":"+os.Getenv("PATH"), "CONTAINERD_NAMESPACE=k8s.io")
	return cmd
}

// CommandIn runs argv in the namespaces of the node whose init has host
// PID pid.
func CommandIn(ctx context.Context, pid int, argv ...string) *exec.Cmd {
	args := append([]string{"--target", strconv.Itoa(pid), "--mount", "--net", "--pid", "--uts", "--"}, argv...)
	return exec.CommandContext(ctx, "nsenter", args...)
}

// waitReady waits for containerd's socket and the kubelet's /healthz.
func (n *Node) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := n.kubeletHealthy(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("node %s stopped during start-up (%v): %s", n.Name, n.err, tail(filepath.Join(n.Dir, "init.log"), 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not ready after %s (%v): %s", n.Name, timeout, err, tail(n.Log("kubelet"), 10))
		}
	}
}

// kubeletHealthy asks the kubelet's /healthz on the node's loopback.
func (n *Node) kubeletHealthy(ctx context.Context) error {
	if _, err := os.Stat(n.CRISocket()); err != nil {
		return fmt.Errorf("containerd not serving yet: %w", err)
	}
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       nsexec.Dialer(n.NetNS),
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10248/healthz", nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kubelet /healthz: %s", resp.Status)
	}
	return nil
}

// layout creates the node's directories and writes its configuration
// into the upper layers before anything is mounted (files changed in an
// upper layer while mounted may go unseen).
func layout(cfg Config) error {
	if err := checkDir(cfg.Dir); err != nil {
		return err
	}
	for _, d := range []string{"fs/etc/kubernetes/pki", "fs/etc/containerd", "fs/opt", "fs/var/lib/kubelet", "fs/var/log", "fs/run", "containerd", ".work/etc", ".work/opt", ".work/var", ".cgroup"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files, err := configFiles(cfg)
	if err != nil {
		return err
	}
	for path, f := range files {
		if err := os.WriteFile(filepath.Join(cfg.Dir, "fs", path), f.data, f.mode); err != nil {
			return err
		}
	}
	return writeInitConfig(cfg)
}

type file struct {
	data []byte
	mode os.FileMode
}

// configFiles are the node's configuration files, by their path on the
// node.
func configFiles(cfg Config) (map[string]file, error) {
	tmpl, ok := containerdConfigs[cfg.Runtime]
	if !ok {
		return nil, fmt.Errorf("no containerd configuration for runtime %q", cfg.Runtime)
	}
	ctrd, err := render(tmpl, map[string]any{"SandboxImage": images.PauseTag, "Runc": cfg.Runc, "RefCNI": cfg.RefCNI})
	if err != nil {
		return nil, err
	}
	kc, err := render(kubeletConfig, map[string]string{"CgroupRoot": cfg.CgroupRoot, "IP": cfg.IP.String(), "ClusterDNS": cfg.ClusterDNS})
	if err != nil {
		return nil, err
	}
	kubeconfig, err := render(kubeletKubeconfig, map[string]string{"APIServer": cfg.APIServer, "User": "system:node:" + cfg.Name})
	if err != nil {
		return nil, err
	}
	return map[string]file{
		"etc/containerd/config.toml":            {ctrd, 0o644},
		"var/lib/kubelet/config.yaml":           {kc, 0o644},
		"etc/kubernetes/kubelet.conf":           {kubeconfig, 0o600},
		"etc/kubernetes/pki/ca.crt":             {cfg.CA, 0o644},
		"etc/kubernetes/pki/kubelet-client.crt": {cfg.ClientCert, 0o644},
		"etc/kubernetes/pki/kubelet-client.key": {cfg.ClientKey, 0o600},
		"etc/kubernetes/resolv.conf":            {[]byte("# the lab runs no DNS server\noptions ndots:1\n"), 0o644},
		"etc/hostname":                          {[]byte(cfg.Name + "\n"), 0o644},
	}, nil
}

func writeInitConfig(cfg Config) error {
	kubelet := append([]string{cfg.Kubelet,
		"--config=/var/lib/kubelet/config.yaml",
		"--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--hostname-override=" + cfg.Name,
		"--node-ip=" + cfg.IP.String(),
	}, cfg.KubeletArgs...)
	ic := initConfig{
		Name: cfg.Name, Dir: cfg.Dir,
		Hierarchies: cfg.Hierarchies, Cgroup: filepath.Join(cfg.CgroupRoot, "system"),
		// containerd finds its shim, and the shim runc, in PATH.
		Path:       cfg.RuntimeDir + ":" + filepath.Dir(cfg.Runc) + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		Containerd: []string{filepath.Join(cfg.RuntimeDir, "containerd"), "--config=/etc/containerd/config.toml"},
		Kubelet:    kubelet,
	}
	b, err := json.MarshalIndent(ic, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.Dir, "init.json"), b, 0o644)
}

// checkDir refuses a node directory under a directory the node overlays:
// overlayfs refuses layers inside each other.
func checkDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("node directory %q is not absolute", dir)
	}
	for _, o := range overlaid {
		if dir == o || strings.HasPrefix(dir, o+"/") {
			return fmt.Errorf("node directory %s is under %s, which each node overlays: put the lab elsewhere (--dir /run/calyx-lab or under /tmp)", dir, o)
		}
	}
	return nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "last lines of " + path + ":\n" + strings.Join(lines, "\n")
}
