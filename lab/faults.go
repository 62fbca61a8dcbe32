package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/node"
)

// What fault-injection tests (test/fault) do to a running lab: stop the API
// server, stop a node and delete its Node, drive CNI by hand, attach a
// stranger to the underlay, and run code inside any of the lab's
// namespaces.

// InNetNS runs fn on a thread switched into the named network namespace (a
// node, a pod's PodState.NetNS, UnderlayNS). Sockets fn opens stay in that
// namespace after it returns, so a test can use them from any goroutine.
func InNetNS(name string, fn func() error) error { return inNetNS(name, fn) }

// StopAPIServer kills kube-apiserver as a crash would, leaving etcd.
func (l *Lab) StopAPIServer() { l.cp.StopAPIServer() }

// StartAPIServer starts kube-apiserver again on the same address and waits
// until it is ready.
func (l *Lab) StartAPIServer(ctx context.Context) error {
	if err := l.cp.StartAPIServer(ctx); err != nil {
		return fmt.Errorf("restarting kube-apiserver (its log is in %s): %w", l.cp.Dir, err)
	}
	return nil
}

// StopNode turns a node off: its kubelet, containerd, calyx-node and every
// pod end at once, as when a machine loses power. Its network namespace,
// with the routes and devices the agent made, stays, as a machine's
// kernel state would until it reboots.
func (l *Lab) StopNode(name string) error {
	n, ok := l.nodes[name]
	if !ok {
		return fmt.Errorf("no running node %q", name)
	}
	n.Stop()
	delete(l.nodes, name)
	return l.recordInits()
}

// StartNode boots a node StopNode turned off: the same files, an empty
// /run, a new containerd and kubelet that register the Node again.
func (l *Lab) StartNode(ctx context.Context, name string) error {
	i := -1
	for j, n := range l.opts.nodeNames() {
		if n == name {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("no node %q in the lab", name)
	}
	s, err := ReadState(l.opts.Dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(l.nodeDir(name), "fs", "run")); err != nil {
		return err
	}
	cfg, err := l.nodeConfig(i, name, s.Hierarchies, filepath.Join(s.Cgroup, name))
	if err != nil {
		return err
	}
	n, err := node.Start(ctx, cfg)
	if err != nil {
		return err
	}
	l.nodes[name] = n
	return l.recordInits()
}

// DeleteNode deletes the Node object, as `kubectl delete node` does.
func (l *Lab) DeleteNode(ctx context.Context, name string) error {
	err := l.Kube.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting Node %s: %w", name, err)
	}
	return nil
}

// Sandbox is a pod's network namespace as a runtime holds it between
// CNI ADD and the kubelet's Pod status, wired (or not) by the node's real
// plugins through libcni, on the node, with no Pod object. Tests that need
// each CNI call's own outcome (its error code) use it instead of AddPod.
type Sandbox struct {
	Namespace, Name, Node string
	// NetNS is the namespace's path on the node, ContainerID fresh.
	NetNS, ContainerID string
	// IP and HostIface are set by a successful Add.
	IP, HostIface string
}

// NewSandbox creates the sandbox's network namespace on the node, as the
// runtime does, with a fresh container ID.
func (c *Client) NewSandbox(namespace, name, nodeName string) (*Sandbox, error) {
	id := make([]byte, 32)
	rand.Read(id)
	sb := &Sandbox{Namespace: namespace, Name: name, Node: nodeName, ContainerID: hex.EncodeToString(id)}
	nsName := "sb-" + sb.ContainerID[:12]
	sb.NetNS = "/run/netns/" + nsName
	n, err := c.Node(nodeName)
	if err != nil {
		return nil, err
	}
	if out, err := n.Command(context.Background(), "ip", "netns", "add", nsName).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("creating a sandbox namespace on %s: %w: %s", nodeName, err, out)
	}
	return sb, nil
}

// CNIAdd runs CNI ADD for the sandbox with its node's conflist and
// plugins, on the node. A plugin's error is returned wrapped: errors.As
// finds its *types.Error with the CNI code.
func (c *Client) CNIAdd(ctx context.Context, sb *Sandbox) error {
	n, err := c.Node(sb.Node)
	if err != nil {
		return err
	}
	cni, list, rt, err := cniRuntime(n, sb)
	if err != nil {
		return err
	}
	r, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		return fmt.Errorf("CNI ADD for %s/%s on %s: %w", sb.Namespace, sb.Name, sb.Node, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return err
	}
	for _, ip := range res.IPs {
		sb.IP = ip.Address.IP.String()
	}
	for _, iface := range res.Interfaces {
		if iface.Sandbox == "" {
			sb.HostIface = iface.Name
		}
	}
	return nil
}

// CNIDel runs CNI DEL for the sandbox, as the runtime does after a failed
// ADD and when the pod goes.
func (c *Client) CNIDel(ctx context.Context, sb *Sandbox) error {
	n, err := c.Node(sb.Node)
	if err != nil {
		return err
	}
	cni, list, rt, err := cniRuntime(n, sb)
	if err != nil {
		return err
	}
	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		return fmt.Errorf("CNI DEL for %s/%s on %s: %w", sb.Namespace, sb.Name, sb.Node, err)
	}
	return nil
}

// RemoveSandbox deletes the sandbox's namespace on its node.
func (c *Client) RemoveSandbox(sb *Sandbox) error {
	n, err := c.Node(sb.Node)
	if err != nil {
		return err
	}
	out, err := n.Command(context.Background(), "ip", "netns", "del", filepath.Base(sb.NetNS)).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("deleting sandbox namespace %s on %s: %w: %s", sb.NetNS, sb.Node, err, out)
	}
	return nil
}

// cniRuntime is libcni as the node's runtime uses it: the node's conflist
// and plugin directory, and plugins executed on the node.
func cniRuntime(n *node.Node, sb *Sandbox) (*libcni.CNIConfig, *libcni.NetworkConfigList, *libcni.RuntimeConf, error) {
	list, err := libcni.ConfListFromFile(n.Path("/etc/cni/net.d/10-calyx.conflist"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("loading %s's conflist (has calyx-node installed it?): %w", n.Name, err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{"/opt/cni/bin"}, filepath.Join(n.Dir, "lab-cni-cache"), &onNode{n})
	rt := &libcni.RuntimeConf{
		ContainerID: sb.ContainerID,
		NetNS:       sb.NetNS,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", sb.Namespace},
			{"K8S_POD_NAME", sb.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", sb.ContainerID},
		},
		CapabilityArgs: map[string]any{"portMappings": []any{}},
	}
	return cni, list, rt, nil
}

// onNode runs CNI plugins on a node, in its namespaces, as its runtime
// would (libcni's invoke.Exec).
type onNode struct{ n *node.Node }

func (e *onNode) ExecPlugin(ctx context.Context, plugin string, stdin []byte, environ []string) ([]byte, error) {
	cmd := e.n.Command(ctx, plugin)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// As libcni's RawExec: the plugin's error JSON, with its code.
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Code != 0 {
			return nil, &perr
		}
		return nil, errors.Join(err, errors.New(strings.TrimSpace(stderr.String())))
	}
	return stdout.Bytes(), nil
}

func (e *onNode) FindInPath(plugin string, paths []string) (string, error) {
	for _, dir := range paths {
		if _, err := os.Stat(e.n.Path(filepath.Join(dir, plugin))); err == nil {
			return filepath.Join(dir, plugin), nil
		}
	}
	return "", fmt.Errorf("no plugin %s in %v on %s (has calyx-node installed it?)", plugin, paths, e.n.Name)
}

func (e *onNode) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

// Stranger is a namespace wired to the underlay bridge like a node, with an
// address in the node subnet, that is not a node: no Node object, no agent.
type Stranger struct {
	NetNS string
	IP    netip.Addr
	peer  string
}

// AttachStranger wires a new namespace named name to the underlay with
// address addr (in UnderlayCIDR). Remove it with Detach.
func AttachStranger(name string, addr netip.Addr) (_ *Stranger, err error) {
	if !netip.MustParsePrefix(UnderlayCIDR).Contains(addr) {
		return nil, fmt.Errorf("%s is not in the underlay %s: pick an address there that no node has", addr, UnderlayCIDR)
	}
	st := &Stranger{NetNS: name, IP: addr, peer: name}
	if len(st.peer) > 15 {
		st.peer = st.peer[len(st.peer)-15:]
	}
	defer func() {
		if err != nil {
			st.Detach()
		}
	}()
	if err := attachToUnderlay(name, st.peer, addr); err != nil {
		return nil, err
	}
	return st, nil
}

// Detach removes the stranger's namespace and its port on the bridge.
func (s *Stranger) Detach() error {
	var errs []error
	// Deleting the namespace deletes its veth end, and with it the pair.
	if err := nsexec.DeleteNamed(s.NetNS); err != nil {
		errs = append(errs, err)
	}
	err := inNetNS(UnderlayNS, func() error {
		l, err := netlink.LinkByName(s.peer)
		if err != nil {
			return nil
		}
		// The namespace's deletion removes the pair in the background:
		// the port found a moment ago may be gone now.
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			return err
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// HostCNI is the node's CNI configuration for a caller on the host that
// runs the node's plugins itself, in the node's network namespace but the
// host's mount namespace (the bench, to time the plugins alone): the
// plugin directory and the conflist, with the paths the host side opens
// turned into the host's paths to the node's files. With ipamOnHost false
// the node's agent answers calyx-ipam on its socket and reads the IPAM's
// files in its own mount namespace: only the calyx plugin's state_dir and
// the socket change. With ipamOnHost true, agent_socket is removed and
// calyx-ipam runs as a binary on the host: every IPAM path changes too.
func (c *Client) HostCNI(nodeName string, ipamOnHost bool) (binDir string, conflist []byte, err error) {
	n, err := c.Node(nodeName)
	if err != nil {
		return "", nil, err
	}
	b, err := os.ReadFile(n.Path("/etc/cni/net.d/10-calyx.conflist"))
	if err != nil {
		return "", nil, fmt.Errorf("reading %s's conflist (has calyx-node installed it?): %w", nodeName, err)
	}
	var list map[string]any
	if err := json.Unmarshal(b, &list); err != nil {
		return "", nil, fmt.Errorf("%s's conflist: %w", nodeName, err)
	}
	hostPath := func(m map[string]any, key string) {
		if s, ok := m[key].(string); ok && strings.HasPrefix(s, "/") {
			m[key] = n.Path(s)
		}
	}
	plugins, _ := list["plugins"].([]any)
	for _, p := range plugins {
		m, _ := p.(map[string]any)
		if m["type"] != "calyx" {
			continue
		}
		hostPath(m, "state_dir")
		ipam, _ := m["ipam"].(map[string]any)
		if !ipamOnHost {
			hostPath(ipam, "agent_socket")
			continue
		}
		delete(ipam, "agent_socket")
		for _, k := range []string{"kubeconfig", "nodename_file", "lock_file"} {
			hostPath(ipam, k)
		}
	}
	out, err := json.Marshal(list)
	return n.Path("/opt/cni/bin"), out, err
}
