package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

func poolWith(name, cidr string, blockSize int, mod func(*v1alpha1.IPPoolSpec)) v1alpha1.IPPool {
	p := pool(name, cidr, blockSize)
	mod(&p.Spec)
	return p
}

func selector(key, value string) func(*v1alpha1.IPPoolSpec) {
	return func(s *v1alpha1.IPPoolSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{key: value}}
	}
}

// nodeLabels are labels a test changes while allocators read them.
type nodeLabels struct {
	mu     sync.Mutex
	byNode map[string]map[string]string
}

func (l *nodeLabels) read(_ context.Context, node string) (map[string]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.byNode[node]), nil
}

func (l *nodeLabels) set(node string, labels map[string]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byNode[node] = labels
}

// inPool says which of the env's pools holds addr.
func (e *env) inPool(t *testing.T, addr netip.Addr) string {
	t.Helper()
	l, err := e.cs.CalyxV1alpha1().IPPools().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Items {
		if netip.MustParsePrefix(p.Spec.CIDR).Contains(addr) {
			return p.Name
		}
	}
	return ""
}

// TestNodeSelectors: each node takes blocks from the pools that select it,
// borrows only within them, and after its labels change keeps its blocks
// and takes new addresses from the pools that select it now.
func TestNodeSelectors(t *testing.T) {
	e := newEnv(t,
		poolWith("pool-a", "10.50.0.0/29", 30, selector("pool", "a")),
		poolWith("pool-b", "10.60.0.0/30", 30, selector("pool", "b")),
	)
	ctx := context.Background()
	labels := &nodeLabels{byNode: map[string]map[string]string{"n-a": {"pool": "a"}, "n-b": {"pool": "b"}, "n-c": {"pool": "b"}}}
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{NodeLabels: labels.read})

	a, err := m.AutoAssign(ctx, "n-a", "net.a0", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.inPool(t, a.Addr); got != "pool-a" {
		t.Errorf("n-a (pool=a) got %s from %s, want pool-a", a.Addr, got)
	}
	for i := range 4 { // pool-b's one block, full
		b, err := m.AutoAssign(ctx, "n-b", fmt.Sprintf("net.b%d", i), ipam.Attrs{})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.inPool(t, b.Addr); got != "pool-b" {
			t.Errorf("n-b (pool=b) got %s from %s, want pool-b", b.Addr, got)
		}
	}
	// pool-a has a free block and free addresses in n-a's, but does not
	// select n-c: no borrowing across.
	_, err = m.AutoAssign(ctx, "n-c", "net.c0", ipam.Attrs{})
	if !errors.Is(err, ipam.ErrExhausted) || !strings.Contains(err.Error(), "pool-b") || strings.Contains(err.Error(), "pool-a") {
		t.Fatalf("n-c with pool-b full = %v, want ErrExhausted naming pool-b only", err)
	}

	// n-a moves to pool b: it keeps its pool-a block and borrows the
	// address n-b frees.
	if _, err := m.ReleaseByHandle(ctx, "net.b2"); err != nil {
		t.Fatal(err)
	}
	labels.set("n-a", map[string]string{"pool": "b"})
	moved, err := m.AutoAssign(ctx, "n-a", "net.a1", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.inPool(t, moved.Addr); got != "pool-b" || !moved.Borrowed {
		t.Errorf("n-a relabelled pool=b got %s from %s (borrowed %v), want a borrowed pool-b address", moved.Addr, got, moved.Borrowed)
	}
	if owner := e.blocks(t)[a.Block.String()]; owner != "n-a" {
		t.Errorf("n-a's pool-a block %s is now %q's, want it kept", a.Block, owner)
	}
	if got := e.used(t); got != 5 {
		t.Errorf("%d addresses in use, want 5", got)
	}
}

// TestRequestedPools: pools asked for by name or CIDR, in their order,
// over the netconf's; a pool that does not exist or is disabled is an
// error naming it, and nothing is allocated. The agent's cached allocator
// decides the same.
func TestRequestedPools(t *testing.T) {
	e := newEnv(t,
		pool("default", "192.168.0.0/16", 26),
		pool("blue", "10.50.0.0/16", 26),
		pool("green", "10.60.0.0/16", 26),
		poolWith("old", "10.70.0.0/16", 26, func(s *v1alpha1.IPPoolSpec) { s.Disabled = true }),
	)
	ctx := context.Background()
	cached, _ := cachedIPAM(t, e, "n1")
	for name, m := range map[string]*ipam.IPAM{"direct": ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Pools: []string{"blue"}}), "cached": cached} {
		t.Run(name, func(t *testing.T) {
			node := "node-" + name
			n := 0
			assign := func(req ipam.Request) (netip.Addr, error) {
				n++
				a, err := m.Assign(ctx, node, fmt.Sprintf("net.%s-%d", name, n), ipam.Attrs{}, req)
				return a.Addr, err
			}
			for _, tc := range []struct {
				pools []string
				want  string
			}{
				{[]string{"green", "blue"}, "green"},
				{[]string{"10.50.0.0/16"}, "blue"},
				{[]string{"blue", "green"}, "blue"}, // both have a block of the node's now
				{[]string{"green", "blue"}, "green"},
			} {
				addr, err := assign(ipam.Request{Pools: tc.pools})
				if err != nil {
					t.Fatalf("pools %v: %v", tc.pools, err)
				}
				if got := e.inPool(t, addr); got != tc.want {
					t.Errorf("pools %v gave %s from %s, want %s", tc.pools, addr, got, tc.want)
				}
			}
			before := e.used(t)
			for _, tc := range []struct {
				pools []string
				err   error
				names string
			}{
				{[]string{"nope"}, ipam.ErrUnknownPool, `"nope"`},
				{[]string{"172.16.0.0/16"}, ipam.ErrUnknownPool, `"172.16.0.0/16"`}, // not a name to read by
				{[]string{"blue", "old"}, ipam.ErrPoolDisabled, "old (10.70.0.0/16) is disabled"},
			} {
				if _, err := assign(ipam.Request{Pools: tc.pools}); !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.names) {
					t.Errorf("pools %v = %v, want %v naming %s", tc.pools, err, tc.err, tc.names)
				}
			}
			if after := e.used(t); after != before {
				t.Errorf("refused requests allocated: %d addresses before, %d after", before, after)
			}
		})
	}
	// No request: the netconf's pools.
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Pools: []string{"blue"}})
	a, err := m.AutoAssign(ctx, "n2", "net.n2", ipam.Attrs{})
	if err != nil || e.inPool(t, a.Addr) != "blue" {
		t.Errorf("the netconf's pools [blue] gave %s (%v), want an address of blue", a.Addr, err)
	}
}

// TestManualPools: a pool with assignmentMode Manual serves only those who
// name it; a pod that names no pool, or a node's tunl0, gets an address of
// another, even on a node that already has a block of the Manual pool.
func TestManualPools(t *testing.T) {
	e := newEnv(t,
		pool("default", "192.168.0.0/16", 26),
		poolWith("reserved", "10.80.0.0/16", 26, func(s *v1alpha1.IPPoolSpec) { s.AssignmentMode = v1alpha1.AssignmentManual }),
	)
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	asked, err := m.Assign(ctx, "n1", "net.asked", ipam.Attrs{}, ipam.Request{Pools: []string{"reserved"}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := m.AutoAssign(ctx, "n1", "net.plain", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	tun, err := m.AssignTunnelAddress(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	got := []string{e.inPool(t, asked.Addr), e.inPool(t, plain.Addr), e.inPool(t, tun.Addr)}
	if diff := cmp.Diff([]string{"reserved", "default", "default"}, got); diff != "" {
		t.Errorf("pools of the asking pod, the plain pod and tunl0 (-want +got):\n%s", diff)
	}

	only := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	p, err := e.cs.CalyxV1alpha1().IPPools().Get(ctx, "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Disabled = true
	if _, err := e.cs.CalyxV1alpha1().IPPools().Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = only.AutoAssign(ctx, "n2", "net.n2", ipam.Attrs{})
	if !errors.Is(err, ipam.ErrNoPool) || !strings.Contains(err.Error(), "reserved (10.80.0.0/16): assignmentMode Manual") {
		t.Errorf("a plain pod with only a Manual pool enabled = %v, want ErrNoPool saying why", err)
	}
}

// TestAllowedUses: a pool for tunnels never gives a pod its address, a
// pool for pods never a node its tunl0's.
func TestAllowedUses(t *testing.T) {
	only := func(u v1alpha1.IPPoolUse) func(*v1alpha1.IPPoolSpec) {
		return func(s *v1alpha1.IPPoolSpec) { s.AllowedUses = []v1alpha1.IPPoolUse{u} }
	}
	e := newEnv(t,
		poolWith("pods", "10.50.0.0/16", 26, only(v1alpha1.IPPoolUseWorkload)),
		poolWith("tunnels", "10.99.0.0/24", 30, only(v1alpha1.IPPoolUseTunnel)),
	)
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	tun, err := m.AssignTunnelAddress(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := m.AutoAssign(ctx, "n1", "net.p", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	got := []string{e.inPool(t, tun.Addr), e.inPool(t, pod.Addr)}
	if diff := cmp.Diff([]string{"tunnels", "pods"}, got); diff != "" {
		t.Errorf("pools of the tunnel and the pod address (-want +got):\n%s", diff)
	}

	p, err := e.cs.CalyxV1alpha1().IPPools().Get(ctx, "tunnels", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.Disabled = true
	if _, err := e.cs.CalyxV1alpha1().IPPools().Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = m.AssignTunnelAddress(ctx, "n2")
	if !errors.Is(err, ipam.ErrNoPool) || !strings.Contains(err.Error(), "pods (10.50.0.0/16): allowedUses [Workload] has no Tunnel") {
		t.Errorf("a tunnel address with only a pods pool enabled = %v, want ErrNoPool saying why", err)
	}
}

// TestFixedAddress: calyx.dev/ipAddrs as the IPAM sees it. The address's
// block is claimed or borrowed as needed; a taken address names its
// holder; one outside every usable pool is refused; a StatefulSet's pod
// recreated gets its address again.
func TestFixedAddress(t *testing.T) {
	e := newEnv(t,
		pool("default", "192.168.0.0/16", 26),
		poolWith("old", "10.70.0.0/16", 26, func(s *v1alpha1.IPPoolSpec) { s.Disabled = true }),
	)
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	addr := netip.MustParseAddr
	server := ipam.Attrs{Namespace: "default", Pod: "tftp-server", ContainerID: "0123456789abcdef"}
	fixed := func(node, handle, a string, attrs ipam.Attrs) (ipam.Assignment, error) {
		return m.Assign(ctx, node, handle, attrs, ipam.Request{Addr: addr(a)})
	}

	got, err := fixed("n1", "net.s1", "192.168.29.67", server)
	if err != nil || got.Addr != addr("192.168.29.67") || got.Block.String() != "192.168.29.64/26" || got.Borrowed {
		t.Fatalf("fixed 192.168.29.67 = %+v, %v; want it in n1's new block 192.168.29.64/26", got, err)
	}
	if again, err := fixed("n1", "net.s1", "192.168.29.67", server); err != nil || again != got {
		t.Errorf("a retried ADD = %+v, %v; want %+v", again, err, got)
	}
	_, err = fixed("n1", "net.other", "192.168.29.67", ipam.Attrs{Namespace: "default", Pod: "other"})
	if !errors.Is(err, ipam.ErrAddressInUse) || !strings.Contains(err.Error(), "pod default/tftp-server on node n1 (container 0123456789ab)") {
		t.Errorf("a taken address = %v, want ErrAddressInUse naming tftp-server", err)
	}
	borrowed, err := fixed("n2", "net.n2", "192.168.29.70", ipam.Attrs{Namespace: "default", Pod: "p2"})
	if err != nil || !borrowed.Borrowed {
		t.Errorf("n2 asking for an address of n1's block = %+v, %v; want it borrowed", borrowed, err)
	}
	for _, bad := range []string{"172.16.0.1", "10.70.0.5", "fd00::5"} {
		if _, err := fixed("n1", "net.bad", bad, ipam.Attrs{}); !errors.Is(err, ipam.ErrOutsidePools) {
			t.Errorf("fixed %s = %v, want ErrOutsidePools", bad, err)
		}
	}
	if n := e.used(t); n != 2 {
		t.Errorf("%d addresses in use, want 2", n)
	}

	// The StatefulSet's pod is deleted, and recreated on n2.
	if _, err := m.ReleaseByHandle(ctx, "net.s1"); err != nil {
		t.Fatal(err)
	}
	if again, err := fixed("n2", "net.s2", "192.168.29.67", server); err != nil || again.Addr != addr("192.168.29.67") {
		t.Errorf("the recreated pod = %+v, %v; want 192.168.29.67 again", again, err)
	}
}

// TestReleaseAddress: calyxctl ipam release's write, which releases only
// what the handle it decided on still holds, and its index entry.
func TestReleaseAddress(t *testing.T) {
	e := newEnv(t, pool("default", "192.168.0.0/16", 26))
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	a, err := m.AutoAssign(ctx, "n1", "net.leak", ipam.Attrs{Namespace: "default", Pod: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.ReleaseAddress(ctx, a.Addr, "net.someone-else"); got != nil || err != nil {
		t.Errorf("releasing with another handle = %+v, %v; want nothing", got, err)
	}
	got, err := m.ReleaseAddress(ctx, a.Addr, "net.leak")
	if err != nil || got == nil || got.Pod != "gone" {
		t.Fatalf("ReleaseAddress = %+v, %v; want the pod's allocation", got, err)
	}
	if n := e.used(t); n != 0 {
		t.Errorf("%d addresses in use after the release", n)
	}
	hs, err := e.cs.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
	if err != nil || len(hs.Items) != 0 {
		t.Errorf("handles left: %v, %v", hs, err)
	}
	if got, err := m.ReleaseAddress(ctx, a.Addr, ""); got != nil || err != nil {
		t.Errorf("releasing a free address = %+v, %v; want nothing", got, err)
	}
}
