package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/agent/tunnel"
	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// ifbDatapath stands in for tunl0's datapath where a test is about the
// routes and the control loop, not about encapsulation: an ifb device
// named tunl0 (this kernel has neither the ipip nor the dummy driver) with
// the address and MTU Set asks for. agent/tunnel tests the real datapaths;
// RealDatapath is what calyx-agent uses.
type ifbDatapath struct {
	h *netlink.Handle
}

func ifbFactory(_ string, opts DatapathOptions) (tunnel.Datapath, string, error) {
	h, err := netlink.NewHandleAt(opts.NetNS)
	if err != nil {
		return nil, "", err
	}
	return &ifbDatapath{h: h}, "test stand-in: ifb device", nil
}

func (d *ifbDatapath) Mode() tunnel.Mode { return "test-ifb" }

func (d *ifbDatapath) Set(cfg desired.TunnelConfig) error {
	l, err := d.h.LinkByName(desired.TunnelDevice)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = desired.TunnelDevice
		if err := d.h.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("creating %s: %w", desired.TunnelDevice, err)
		}
		if l, err = d.h.LinkByName(desired.TunnelDevice); err != nil {
			return err
		}
	}
	if cfg.MTU > 0 && l.Attrs().MTU != cfg.MTU {
		if err := d.h.LinkSetMTU(l, cfg.MTU); err != nil {
			return err
		}
	}
	if l.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
		if err := d.h.LinkSetUp(l); err != nil {
			return err
		}
	}
	addrs, err := d.h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	found := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if cfg.Address.IsValid() && ip.Unmap() == cfg.Address && ones == 32 {
			found = true
			continue
		}
		if err := d.h.AddrDel(l, &a); err != nil {
			return err
		}
	}
	if !found && cfg.Address.IsValid() {
		a, _ := netlink.ParseAddr(cfg.Address.String() + "/32")
		if err := d.h.AddrAdd(l, a); err != nil {
			return err
		}
	}
	return nil
}

func (d *ifbDatapath) Stats() (tunnel.Stats, error) { return tunnel.Stats{}, nil }
func (d *ifbDatapath) Close() error                 { d.h.Close(); return nil }

// logBuffer collects an agent's log lines for assertions and shows them in
// the test's output.
type logBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	t    testing.TB
	done bool
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if !l.done {
		l.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// runningAgent is an agent run in-process for one node namespace.
type runningAgent struct {
	*Agent
	node  *testnet.NS
	name  string
	dir   string
	logs  *logBuffer
	stop  func()
	ended chan struct{}
}

type agentOpts struct {
	underlay string
	datapath DatapathFactory
	rest     *rest.Config
	resync   time.Duration
}

func startAgent(t testing.TB, cfg *rest.Config, node *testnet.NS, name string, o agentOpts) *runningAgent {
	t.Helper()
	dir := t.TempDir()
	logs := &logBuffer{t: t}
	if o.underlay == "" {
		o.underlay = "interface=^ens160$"
	}
	if o.datapath == nil {
		o.datapath = ifbFactory
	}
	if o.rest != nil {
		cfg = o.rest
	}
	if o.resync == 0 {
		o.resync = 30 * time.Second
	}
	ns := node.Handle
	a, err := New(Config{
		NodeName:         name,
		RESTConfig:       cfg,
		Underlay:         o.underlay,
		Datapath:         "auto",
		StateDir:         dir + "/state",
		ProtocolNamesDir: dir + "/rt_protos.d",
		HealthAddr:       "127.0.0.1:0",
		ResyncPeriod:     o.resync,
		NetNS:            &ns,
		EnableForwarding: true,
		NewDatapath:      o.datapath,
		Logger:           slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("agent", name),
	})
	if err != nil {
		t.Fatalf("agent.New for %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningAgent{Agent: a, node: node, name: name, dir: dir, logs: logs, ended: make(chan struct{})}
	go func() {
		defer close(r.ended)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %s: Run: %v", name, err)
		}
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-r.ended:
			case <-time.After(10 * time.Second):
				t.Errorf("agent %s did not stop within 10s", name)
			}
			logs.mu.Lock()
			logs.done = true
			logs.mu.Unlock()
		})
	}
	t.Cleanup(r.stop)
	return r
}

// readyz is the agent's /readyz status and body.
func (r *runningAgent) readyz(t testing.TB) (int, string) {
	t.Helper()
	resp, err := http.Get(r.HealthURL() + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz of %s: %v", r.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (r *runningAgent) waitReady(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body := r.readyz(t)
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s not ready after %s:\n%s", r.name, within, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventually polls cond every few milliseconds until it holds, and says how
// long that took.
func eventually(t testing.TB, within time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < within {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, within, err)
	return 0
}

// cluster is a control plane's clients and its nodes.
type cluster struct {
	cfg   *rest.Config
	kube  kubernetes.Interface
	calyx calyxclient.Interface
}

func newCluster(t testing.TB, cfg *rest.Config) *cluster {
	t.Helper()
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := calyxclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{cfg: cfg, kube: k, calyx: c}
}

// addNode creates the Node object as a kubelet would.
func (c *cluster) addNode(t testing.TB, name, ip string) {
	t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}},
	}
	if _, err := c.kube.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
}

func (c *cluster) addPool(t testing.TB, name, cidr string, mode v1alpha1.IPIPMode) {
	t.Helper()
	p := &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: 26, IPIPMode: mode, NATOutgoing: true},
	}
	if _, err := c.calyx.CalyxV1alpha1().IPPools().Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pool %s: %v", name, err)
	}
}

// expectedRoutes is what `ip route` should show on node, worked out by
// hand from the blocks in the API: blackholes for its own, tunl0 routes to
// the others' underlay addresses.
func (c *cluster) expectedRoutes(t testing.TB, node string, nodeIPs map[string]string) []string {
	t.Helper()
	blocks, err := c.calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range blocks.Items {
		if b.Spec.Node == node {
			out = append(out, fmt.Sprintf("blackhole %s proto calyx", b.Spec.CIDR))
		} else {
			out = append(out, fmt.Sprintf("%s via %s dev tunl0 proto calyx onlink", b.Spec.CIDR, nodeIPs[b.Spec.Node]))
		}
	}
	slices.Sort(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func nodeAnnotations(t testing.TB, c *cluster, name string) map[string]string {
	n, err := c.kube.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range []string{v1alpha1.AnnotationIPv4Address, v1alpha1.AnnotationTunnelAddress} {
		if v, ok := n.Annotations[k]; ok {
			out[k] = v
		}
	}
	return out
}

var errNotYet = errors.New("not yet")
