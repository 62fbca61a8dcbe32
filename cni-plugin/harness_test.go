package cniplugin_test

// The harness runs the real binaries through libcni, the library
// containerd uses, against network namespaces it makes: one per "node" and
// one per pod. The plugins run in the namespace they are invoked in, so
// every libcni call runs on a thread locked into the node's namespace; the
// host's own namespace is never touched.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// ipamKind selects the IPAM plugin behind calyx in a test environment.
type ipamKind string

const (
	// ipamCalyx is the shipped calyx-ipam against a real kube-apiserver.
	ipamCalyx ipamKind = "calyx-ipam"
	// ipamHostLocal is containernetworking's host-local: no API server,
	// used as the reference in the benchmark.
	ipamHostLocal ipamKind = "host-local"
)

// acceptanceIPAM is the IPAM plugin the acceptance tests run calyx with:
// the shipped calyx-ipam. Setting ipamHostLocal runs the same tests
// without an API server, all but "ADD twice", which needs an IPAM that
// answers a repeated ADD with the same address.
const acceptanceIPAM = ipamCalyx

// pluginPackages are built into one directory, the CNI_PATH of every test.
var pluginPackages = map[string]string{
	"calyx":      "github.com/calyx-net/calyx/cmd/calyx",
	"calyx-ipam": "github.com/calyx-net/calyx/cmd/calyx-ipam",
	"portmap":    "github.com/containernetworking/plugins/plugins/meta/portmap",
	"loopback":   "github.com/containernetworking/plugins/plugins/main/loopback",
	"host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// plugins builds the binaries once per test binary and returns their
// directory.
func plugins(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "calyx-cni-bin-")
		if buildErr != nil {
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the tests build the plugins and need the go command in PATH: %w", err)
			return
		}
		args := []string{"build", "-o", binDir + "/"}
		for name, pkg := range pluginPackages {
			if name == "calyx-ipam" && acceptanceIPAM != ipamCalyx {
				continue
			}
			args = append(args, pkg)
		}
		cmd := exec.Command(goBin, args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the plugins: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// env is what the nodes of one test share: the binaries and, for
// calyx-ipam, the control plane with its IPPool.
type env struct {
	bin    string
	ipam   ipamKind
	cp     *controlplane.ControlPlane
	client versioned.Interface
}

func newEnv(t testing.TB, kind ipamKind) *env {
	t.Helper()
	e := &env{bin: plugins(t), ipam: kind}
	if kind == ipamCalyx {
		e.cp = cptest.Start(t)
		var err error
		if e.client, err = versioned.NewForConfig(e.cp.Config); err != nil {
			t.Fatal(err)
		}
		e.createPool(t, "default-ipv4-ippool", "192.168.0.0/16", 26)
	}
	return e
}

func (e *env) createPool(t testing.TB, name, cidr string, blockSize int) {
	t.Helper()
	_, err := e.client.CalyxV1alpha1().IPPools().Create(context.Background(), &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: blockSize, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating IPPool %s %s: %v", name, cidr, err)
	}
}

// nodeAddr is every test node's own address, on an "uplink" that
// also carries its default route: proxy ARP on a cali interface answers
// for 169.254.1.1 only when the node has a route to it.
var nodeAddr = net.IPv4(10, 99, 0, 1).To4()

// node is a network namespace standing in for a Kubernetes node.
type node struct {
	t        testing.TB
	env      *env
	name     string
	netns    ns.NetNS
	dir      string
	stateDir string
	cni      *libcni.CNIConfig
	// kind is the IPAM plugin behind calyx; ipamConf is the "ipam" object
	// of the conflist.
	kind      ipamKind
	ipamConf  map[string]any
	ipamExtra map[string]any
	// baseLinks and baseRoutes are the node's state before any pod:
	// what must be left after every DEL and every failed ADD.
	baseLinks, baseRoutes string
}

type nodeOpt func(*node)

// withoutState leaves out the files calyx-agent writes when it is ready.
func withoutState() nodeOpt { return func(n *node) { n.stateDir = "" } }

// withIPAM replaces entries of the "ipam" object.
func withIPAM(kv map[string]any) nodeOpt { return func(n *node) { n.ipamExtra = kv } }

// withIPAMKind runs calyx with another IPAM plugin than the env's.
func withIPAMKind(k ipamKind) nodeOpt { return func(n *node) { n.kind = k } }

// agentMTU is what the test nodes' agent "wrote" into state_dir/mtu; it
// differs from the 1480 default to show the file is read.
const agentMTU = 1430

func newNode(t testing.TB, e *env, opts ...nodeOpt) *node {
	t.Helper()
	n := &node{t: t, env: e, name: "node-" + randHex(4), dir: t.TempDir(), kind: e.ipam}
	n.stateDir = filepath.Join(n.dir, "state")
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{e.bin}, filepath.Join(n.dir, "cache"), nil)
	for _, o := range opts {
		o(n)
	}
	switch n.kind {
	case ipamHostLocal:
		n.ipamConf = map[string]any{
			"type":    "host-local",
			"dataDir": filepath.Join(n.dir, "host-local"),
			"ranges":  []any{[]any{map[string]any{"subnet": "10.244.0.0/16"}}},
		}
	case ipamCalyx:
		n.ipamConf = map[string]any{
			"type":          "calyx-ipam",
			"kubeconfig":    e.cp.Kubeconfig,
			"nodename_file": filepath.Join(n.dir, "state", "nodename"),
			"timeout":       "10s",
			"lock_file":     filepath.Join(n.dir, "ipam.lock"),
		}
	}
	for k, v := range n.ipamExtra {
		n.ipamConf[k] = v
	}
	if n.stateDir != "" {
		writeFile(t, filepath.Join(n.stateDir, "nodename"), n.name+"\n")
		writeFile(t, filepath.Join(n.stateDir, "mtu"), fmt.Sprintf("%d\n", agentMTU))
	} else {
		n.stateDir = filepath.Join(n.dir, "state") // empty: the agent has not run
	}

	n.netns = newNetNS(t)
	err := n.netns.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// A veth pair with both ends in the node stands in for the NIC
		// (this kernel has no dummy driver).
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0", Flags: net.FlagUp}, PeerName: "uplink0peer"}
		if err := netlink.LinkAdd(up); err != nil {
			return fmt.Errorf("adding uplink0: %w", err)
		}
		peer, err := netlink.LinkByName("uplink0peer")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		if err := netlink.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: nodeAddr, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: nil, Gw: net.IPv4(10, 99, 0, 254)})
	})
	if err != nil {
		t.Fatalf("setting up node netns: %v", err)
	}
	if n.kind == ipamCalyx {
		cptest.ForwardInto(t, n.netns.Path(), e.cp.URL)
	}
	n.baseLinks, n.baseRoutes = n.links(), n.routes()
	return n
}

// conflist is the shipped deploy/10-calyx.conflist with this node's paths
// and IPAM, at cniVersion version ("" keeps the shipped one); edit may
// change the calyx entry further.
func (n *node) conflist(version string, edit func(calyx map[string]any)) *libcni.NetworkConfigList {
	n.t.Helper()
	var list map[string]any
	if err := json.Unmarshal(deploy.Conflist, &list); err != nil {
		n.t.Fatalf("the shipped conflist is not JSON: %v", err)
	}
	if version != "" {
		list["cniVersion"] = version
	}
	calyx := list["plugins"].([]any)[0].(map[string]any)
	calyx["state_dir"] = n.stateDir
	ipam := calyx["ipam"].(map[string]any)
	for k := range ipam {
		delete(ipam, k)
	}
	for k, v := range n.ipamConf {
		ipam[k] = v
	}
	if edit != nil {
		edit(calyx)
	}
	return toConfList(n.t, list)
}

func toConfList(t testing.TB, list map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	b, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, b)
	}
	return l
}

// do runs f on a thread in the node's namespace: the plugins libcni
// starts from there inherit it.
func (n *node) do(f func() error) error {
	return n.netns.Do(func(ns.NetNS) error { return f() })
}

func (n *node) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := n.do(func() (err error) {
		res, err = n.cni.AddNetworkList(context.Background(), list, rt)
		return err
	})
	return res, err
}

func (n *node) del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.do(func() error { return n.cni.DelNetworkList(context.Background(), list, rt) })
}

func (n *node) check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.do(func() error { return n.cni.CheckNetworkList(context.Background(), list, rt) })
}

func (n *node) status(list *libcni.NetworkConfigList) error {
	return n.do(func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
}

func (n *node) gc(list *libcni.NetworkConfigList, valid ...*pod) error {
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.id, IfName: p.ifname})
	}
	return n.do(func() error { return n.cni.GCNetworkList(context.Background(), list, args) })
}

// ip runs iproute2 in the node's namespace.
func (n *node) ip(args ...string) string { return ipIn(n.t, n.netns, args...) }

// links are the node's interfaces, one "name type" per line, sorted.
func (n *node) links() string {
	var out []string
	for _, l := range ipJSON(n.t, n.netns, "-d", "link", "show") {
		info, _ := l["linkinfo"].(map[string]any)
		kind, _ := info["info_kind"].(string)
		out = append(out, strings.TrimSpace(fmt.Sprint(l["ifname"], " ", kind)))
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// routes is the node's main IPv4 table as `ip route` prints it.
func (n *node) routes() string { return n.ip("-4", "route", "show") }

// inUse lists the addresses the node's IPAM holds.
func (n *node) inUse() []string {
	n.t.Helper()
	var out []string
	switch n.kind {
	case ipamHostLocal:
		dir := filepath.Join(n.ipamConf["dataDir"].(string), "k8s-pod-network")
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			n.t.Fatal(err)
		}
		for _, e := range entries {
			if net.ParseIP(e.Name()) != nil {
				out = append(out, e.Name())
			}
		}
	case ipamCalyx:
		ctx := context.Background()
		blocks, err := n.env.client.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
		if err != nil {
			n.t.Fatal(err)
		}
		mine := map[string]bool{}
		for _, b := range blocks.Items {
			if b.Spec.Node != n.name {
				continue
			}
			mine[b.Name] = true
			cidr := netip.MustParsePrefix(b.Spec.CIDR)
			for _, a := range b.Spec.Allocations {
				addr := cidr.Addr()
				for range a.Ordinal {
					addr = addr.Next()
				}
				out = append(out, addr.String())
			}
		}
		handles, err := n.env.client.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
		if err != nil {
			n.t.Fatal(err)
		}
		for _, h := range handles.Items {
			if mine[h.Spec.Block] && len(h.Spec.Ordinals) > 0 {
				out = append(out, "handle "+h.Spec.Handle)
			}
		}
	}
	slices.Sort(out)
	return out
}

// assertClean fails unless the node is as it was before any pod: no veth,
// no route, no address allocated.
func (n *node) assertClean(t testing.TB) {
	t.Helper()
	if got := n.links(); got != n.baseLinks {
		t.Errorf("node links left behind:\n%s\nwant:\n%s", got, n.baseLinks)
	}
	if got := n.routes(); got != n.baseRoutes {
		t.Errorf("node routes left behind:\n%s\nwant:\n%s", got, n.baseRoutes)
	}
	if got := n.inUse(); len(got) != 0 {
		t.Errorf("addresses still allocated: %v", got)
	}
}

// pod is a sandbox: a network namespace and the runtime's identifiers.
type pod struct {
	netns     ns.NetNS
	id        string
	namespace string
	name      string
	ifname    string
}

func newPod(t testing.TB, namespace, name string) *pod {
	return &pod{netns: newNetNS(t), id: randHex(32), namespace: namespace, name: name, ifname: "eth0"}
}

// rt is the RuntimeConf a kubelet-driven runtime passes.
func (p *pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.id,
		NetNS:       p.netns.Path(),
		IfName:      p.ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.id},
		},
	}
}

func (p *pod) ip(t testing.TB, args ...string) string { return ipIn(t, p.netns, args...) }

// newNetNS makes a named namespace under /var/run/netns (so that `ip -n`
// reaches it) and removes it when the test ends. iproute2 creates it in a
// child process: creating it in-process (testutils.NewNS) ends the OS
// thread it used, and a thread that ends takes with it every child that
// thread started with Pdeathsig, such as the test's kube-apiserver.
func newNetNS(t testing.TB) ns.NetNS {
	t.Helper()
	name := "calyxcni-" + randHex(6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	n, err := ns.GetNS(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatalf("opening netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		n.Close()
		if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
			return // removeNetNS got there first
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return n
}

// removeNetNS deletes a namespace early, as a runtime does when a sandbox
// dies before its DEL.
func removeNetNS(t testing.TB, n ns.NetNS) {
	t.Helper()
	n.Close()
	name := filepath.Base(n.Path())
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v\n%s", name, err, out)
	}
}

func ipIn(t testing.TB, n ns.NetNS, args ...string) string {
	t.Helper()
	full := append([]string{"-n", filepath.Base(n.Path())}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(full, " "), err, out)
	}
	// iproute2 ends route lines with a space; users do not see it.
	var lines []string
	for l := range strings.Lines(string(out)) {
		lines = append(lines, strings.TrimRight(l, " \n"))
	}
	return strings.Join(lines, "\n")
}

func ipJSON(t testing.TB, n ns.NetNS, args ...string) []map[string]any {
	t.Helper()
	var v []map[string]any
	out := ipIn(t, n, append([]string{"-j"}, args...)...)
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("ip -j %v: %v\n%s", args, err, out)
	}
	return v
}

// sysctl reads a /proc/sys/net entry as the namespace n sees it.
func sysctl(t testing.TB, n ns.NetNS, path string) string {
	t.Helper()
	var v []byte
	err := n.Do(func(ns.NetNS) (err error) {
		v, err = os.ReadFile("/proc/sys/net/" + path)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// ping sends ICMP echo requests from src inside n to dst until one is
// answered, as ping(8) would; the first may wait for ARP.
func ping(n ns.NetNS, src, dst net.IP) error {
	return n.Do(func(ns.NetNS) error {
		c, err := icmp.ListenPacket("ip4:icmp", src.String())
		if err != nil {
			return fmt.Errorf("opening an ICMP socket on %s: %w", src, err)
		}
		defer c.Close()
		id := int(randUint16())
		buf := make([]byte, 1500)
		for seq := 1; seq <= 5; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("calyx")}}
			b, err := msg.Marshal(nil)
			if err != nil {
				return err
			}
			if _, err := c.WriteTo(b, &net.IPAddr{IP: dst}); err != nil {
				return fmt.Errorf("sending an echo request %s -> %s: %w", src, dst, err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				nr, peer, err := c.ReadFrom(buf)
				if err != nil {
					break // timeout: send the next one
				}
				m, err := icmp.ParseMessage(1, buf[:nr])
				if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
					continue
				}
				if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && peer.(*net.IPAddr).IP.Equal(dst) {
					return nil
				}
			}
		}
		return fmt.Errorf("no echo reply %s -> %s after 5 requests", src, dst)
	})
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randUint16() uint16 {
	b := make([]byte, 2)
	rand.Read(b)
	return uint16(b[0])<<8 | uint16(b[1])
}

// cniCode is the CNI error code in err, 0 when there is none.
func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
