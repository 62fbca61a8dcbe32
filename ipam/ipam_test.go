package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

type env struct {
	cs versioned.Interface
	m  *ipam.IPAM
}

func newEnv(t *testing.T, pools ...v1alpha1.IPPool) *env {
	t.Helper()
	cp := cptest.Start(t)
	cs := versioned.NewForConfigOrDie(cp.Config)
	for _, p := range pools {
		if _, err := cs.CalyxV1alpha1().IPPools().Create(context.Background(), &p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating pool %s: %v", p.Name, err)
		}
	}
	return &env{cs: cs, m: ipam.New(ipam.NewKubeStore(cs), ipam.Options{})}
}

func pool(name, cidr string, blockSize int) v1alpha1.IPPool {
	return v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: blockSize}}
}

func (e *env) blocks(t *testing.T) map[string]string {
	t.Helper()
	l, err := e.cs.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, b := range l.Items {
		out[b.Spec.CIDR] = b.Spec.Node
	}
	return out
}

func (e *env) used(t *testing.T) int {
	t.Helper()
	l, err := e.cs.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range l.Items {
		n += len(b.Spec.Allocations)
		if b.Status.Used != len(b.Spec.Allocations) {
			t.Errorf("block %s: status.used %d but %d allocations", b.Name, b.Status.Used, len(b.Spec.Allocations))
		}
	}
	return n
}

// TestSequential follows one node through its first block, a full block,
// a second block, and reuse of released addresses.
func TestSequential(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	ctx := context.Background()

	tun, err := e.m.AssignTunnelAddress(ctx, "learn-k8s-2")
	if err != nil {
		t.Fatal(err)
	}
	if tun.Block.Bits() != 26 || tun.Addr != tun.Block.Addr() {
		t.Errorf("tunnel address %s from block %s: want the first address of a new /26", tun.Addr, tun.Block)
	}
	again, err := e.m.AssignTunnelAddress(ctx, "learn-k8s-2")
	if err != nil || again != tun {
		t.Errorf("a second AssignTunnelAddress = %v, %v; want the same %v", again, err, tun)
	}

	var addrs []netip.Addr
	for i := 1; i < 64; i++ { // the rest of the first block
		a, err := e.m.AutoAssign(ctx, "learn-k8s-2", fmt.Sprintf("net.c%d", i), ipam.Attrs{Namespace: "default", Pod: fmt.Sprintf("p%d", i), ContainerID: fmt.Sprintf("c%d", i)})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if a.Block != tun.Block {
			t.Fatalf("allocation %d came from %s before block %s was full", i, a.Block, tun.Block)
		}
		addrs = append(addrs, a.Addr)
	}
	next, err := e.m.AutoAssign(ctx, "learn-k8s-2", "net.c64", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	if next.Block == tun.Block {
		t.Fatalf("the 65th address came from the full block %s", tun.Block)
	}
	if diff := cmp.Diff(map[string]string{tun.Block.String(): "learn-k8s-2", next.Block.String(): "learn-k8s-2"}, e.blocks(t)); diff != "" {
		t.Errorf("blocks after filling the first (-want +got):\n%s", diff)
	}

	// Idempotent: the same handle gets the same address.
	same, err := e.m.AutoAssign(ctx, "learn-k8s-2", "net.c5", ipam.Attrs{})
	if err != nil || same.Addr != addrs[4] {
		t.Errorf("a retried assignment for net.c5 = %v, %v; want %s", same.Addr, err, addrs[4])
	}

	released, err := e.m.ReleaseByHandle(ctx, "net.c5")
	if err != nil || len(released) != 1 || released[0] != addrs[4] {
		t.Fatalf("ReleaseByHandle(net.c5) = %v, %v; want [%s]", released, err, addrs[4])
	}
	if r, err := e.m.ReleaseByHandle(ctx, "net.c5"); err != nil || len(r) != 0 {
		t.Errorf("releasing twice = %v, %v; want nothing and no error", r, err)
	}
	reused, err := e.m.AutoAssign(ctx, "learn-k8s-2", "net.new", ipam.Attrs{})
	if err != nil || reused.Addr != addrs[4] {
		t.Errorf("after a release the next address is %v (%v), want the released %s", reused.Addr, err, addrs[4])
	}
	if got := e.used(t); got != 65 {
		t.Errorf("%d addresses in use, want 65", got)
	}
}

// TestConcurrent runs 8 nodes × 50 concurrent allocations against one API
// server: every address distinct, every block affine to one node, and
// nothing left after releasing all.
func TestConcurrent(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	ctx := context.Background()
	const nodes, perNode = 8, 50
	begin := time.Now()
	type result struct {
		node string
		a    ipam.Assignment
		err  error
	}
	results := make(chan result, nodes*perNode)
	var wg sync.WaitGroup
	for n := 0; n < nodes; n++ {
		node := fmt.Sprintf("node-%d", n)
		// Each simulated node has its own client, as separate hosts would.
		m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Node: node})
		for i := 0; i < perNode; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := m.AutoAssign(ctx, node, fmt.Sprintf("net.%s-%d", node, i), ipam.Attrs{})
				results <- result{node, a, err}
			}()
		}
	}
	wg.Wait()
	close(results)
	seen := map[netip.Addr]string{}
	for r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.node, r.err)
		}
		if other, dup := seen[r.a.Addr]; dup {
			t.Fatalf("%s handed to %s and %s", r.a.Addr, other, r.node)
		}
		seen[r.a.Addr] = r.node
	}
	if len(seen) != nodes*perNode {
		t.Fatalf("%d distinct addresses, want %d", len(seen), nodes*perNode)
	}
	blocks, err := e.cs.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			if a.Node != b.Spec.Node {
				t.Errorf("block %s of %s holds an address of %s: pool was not exhausted, nothing should be borrowed", b.Name, b.Spec.Node, a.Node)
			}
		}
	}
	t.Logf("%d addresses in %d blocks in %s", len(seen), len(blocks.Items), time.Since(begin).Round(time.Millisecond))
	begin = time.Now()

	var rwg sync.WaitGroup
	for n := 0; n < nodes; n++ {
		node := fmt.Sprintf("node-%d", n)
		for i := 0; i < perNode; i++ {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				if _, err := e.m.ReleaseByHandle(ctx, fmt.Sprintf("net.%s-%d", node, i)); err != nil {
					t.Errorf("release: %v", err)
				}
			}()
		}
	}
	rwg.Wait()
	t.Logf("released all in %s", time.Since(begin).Round(time.Millisecond))
	if got := e.used(t); got != 0 {
		t.Errorf("%d addresses still allocated after releasing all", got)
	}
	handles, _ := e.cs.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
	if len(handles.Items) != 0 {
		t.Errorf("%d handle objects left after releasing all", len(handles.Items))
	}
}

// TestExhaustion: a /28 pool of /30 blocks has 4 blocks of 4 addresses.
func TestExhaustion(t *testing.T) {
	e := newEnv(t, pool("small", "10.20.0.0/28", 30))
	ctx := context.Background()

	strict := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{StrictAffinity: true})
	// Node a takes three blocks' worth; node b claims the last block.
	for i := 0; i < 12; i++ {
		if _, err := strict.AutoAssign(ctx, "a", fmt.Sprintf("net.a%d", i), ipam.Attrs{}); err != nil {
			t.Fatalf("a%d: %v", i, err)
		}
	}
	if _, err := strict.AutoAssign(ctx, "b", "net.b0", ipam.Attrs{}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 4; i++ {
		if _, err := strict.AutoAssign(ctx, "b", fmt.Sprintf("net.b%d", i), ipam.Attrs{}); err != nil {
			t.Fatal(err)
		}
	}
	// Everything is taken now.
	_, err := strict.AutoAssign(ctx, "c", "net.c0", ipam.Attrs{})
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("allocation from a full pool: %v, want ErrExhausted", err)
	}
	t.Logf("exhausted: %v", err)

	// Free one address of node a's; c has no block of its own and no free
	// block exists: with strict affinity it fails, with borrowing it takes
	// a's free address.
	if _, err := strict.ReleaseByHandle(ctx, "net.a3"); err != nil {
		t.Fatal(err)
	}
	if _, err := strict.AutoAssign(ctx, "c", "net.c0", ipam.Attrs{}); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("strict affinity borrowed: %v", err)
	}
	borrowing := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	a, err := borrowing.AutoAssign(ctx, "c", "net.c0", ipam.Attrs{})
	if err != nil {
		t.Fatalf("borrowing: %v", err)
	}
	if !a.Borrowed {
		t.Errorf("address %s from %s not marked borrowed", a.Addr, a.Block)
	}
	u, err := borrowing.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var borrowed []string
	for _, b := range u.Blocks {
		borrowed = append(borrowed, b.Borrowed...)
	}
	if diff := cmp.Diff([]string{a.Addr.String()}, borrowed); diff != "" {
		t.Errorf("borrowed addresses in Usage (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]ipam.PoolUsage{{Name: "small", CIDR: "10.20.0.0/28", Size: 16, Blocks: 4, Used: 16, Free: 0,
		NodeSelector: "<all>", AllowedUses: []v1alpha1.IPPoolUse{v1alpha1.IPPoolUseWorkload, v1alpha1.IPPoolUseTunnel}}}, u.Pools); diff != "" {
		t.Errorf("pool usage (-want +got):\n%s", diff)
	}
}

func TestNoPool(t *testing.T) {
	e := newEnv(t)
	_, err := e.m.AutoAssign(context.Background(), "a", "net.x", ipam.Attrs{})
	if !errors.Is(err, ipam.ErrNoPool) {
		t.Fatalf("allocation without a pool: %v, want ErrNoPool", err)
	}
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Pools: []string{"nope"}})
	if _, err := m.AutoAssign(context.Background(), "a", "net.x", ipam.Attrs{}); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Fatalf("allocation from an unknown pool: %v, want ErrUnknownPool", err)
	}
}

// TestUnindexedAllocation covers a process killed between recording an
// allocation in its block and writing the handle object: a retried ADD
// gets the same address, and DEL on the node releases it.
func TestUnindexedAllocation(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Node: "n1"})
	a, err := m.AutoAssign(ctx, "n1", "net.crash", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cs.CalyxV1alpha1().IPAMHandles().Delete(ctx, ipam.HandleObjectName("net.crash"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again, err := m.AutoAssign(ctx, "n1", "net.crash", ipam.Attrs{})
	if err != nil || again.Addr != a.Addr {
		t.Fatalf("retried ADD after a lost handle = %v, %v; want %s", again.Addr, err, a.Addr)
	}
	if err := e.cs.CalyxV1alpha1().IPAMHandles().Delete(ctx, ipam.HandleObjectName("net.crash"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	released, err := m.ReleaseByHandle(ctx, "net.crash")
	if err != nil || len(released) != 1 || released[0] != a.Addr {
		t.Fatalf("DEL after a lost handle = %v, %v; want [%s]", released, err, a.Addr)
	}
	if got := e.used(t); got != 0 {
		t.Errorf("%d addresses in use after release", got)
	}
}

func TestReleaseStale(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "192.168.0.0/16", 26))
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Node: "n1"})
	if _, err := m.AssignTunnelAddress(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"k8s-pod-network.live", "k8s-pod-network.gone", "other-net.gone"} {
		if _, err := m.AutoAssign(ctx, "n1", h, ipam.Attrs{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.AutoAssign(ctx, "n2", "k8s-pod-network.n2pod", ipam.Attrs{}); err != nil {
		t.Fatal(err)
	}
	released, err := m.ReleaseStale(ctx, "n1", "k8s-pod-network", map[string]bool{"live": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 1 {
		t.Errorf("released %v, want only the address of k8s-pod-network.gone", released)
	}
	// 4 remain: n1's tunnel, live, other-net.gone; n2's pod.
	if got := e.used(t); got != 4 {
		t.Errorf("%d addresses in use after GC, want 4", got)
	}
}

// BenchmarkAutoAssign measures the allocator alone, in process, against a
// real API server: the cost of the API round trips without process start.
//
//	go test -run '^$' -bench AutoAssign -benchtime 500x ./ipam/
func BenchmarkAutoAssign(b *testing.B) {
	cp := cptest.Start(b)
	cs := versioned.NewForConfigOrDie(cp.Config)
	p := pool("default-ipv4-ippool", "192.168.0.0/16", 26)
	if _, err := cs.CalyxV1alpha1().IPPools().Create(context.Background(), &p, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	m := ipam.New(ipam.NewKubeStore(cs), ipam.Options{Node: "n1"})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.AutoAssign(ctx, "n1", fmt.Sprintf("net.%d", i), ipam.Attrs{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}
