package ipam_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	calyxinformers "github.com/calyx-net/calyx/api/client/informers/externalversions"
	calyxlisters "github.com/calyx-net/calyx/api/client/listers/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// cachedIPAM is the allocator as the agent runs it: informer-fed reads,
// write-behind handles.
func cachedIPAM(t *testing.T, e *env, node string) (*ipam.IPAM, *ipam.CachedStore) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := calyxinformers.NewSharedInformerFactory(e.cs, 0)
	blocks, pools := f.Calyx().V1alpha1().IPAMBlocks(), f.Calyx().V1alpha1().IPPools()
	store := ipam.NewCachedStore(ipam.NewKubeStore(e.cs), blocks.Lister(), pools.Lister())
	if _, err := blocks.Informer().AddEventHandler(store.BlockEvents()); err != nil {
		t.Fatal(err)
	}
	pools.Informer()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	done := make(chan struct{})
	go func() { defer close(done); store.RunHandleWriter(ctx, slog.Default()) }()
	t.Cleanup(func() { cancel(); <-done; f.Shutdown() })
	return ipam.New(store, ipam.Options{Node: node}), store
}

// TestCachedStoreWithBinary: the agent's cached allocator and calyx-ipam's
// direct one allocate on the same node at once, as they do while an agent
// restarts. Their stale reads cost conflicts, never a duplicate; each
// releases the other's addresses; and the handle objects the agent writes
// behind end up equal to the blocks.
func TestCachedStoreWithBinary(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "10.244.0.0/16", 28))
	ctx := context.Background()
	const node, perSide = "learn-k8s-2", 30
	cached, store := cachedIPAM(t, e, node)
	direct := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Node: node})

	type got struct {
		handle string
		addr   netip.Addr
	}
	var mu sync.Mutex
	var all []got
	var wg sync.WaitGroup
	for side, m := range map[string]*ipam.IPAM{"agent": cached, "binary": direct} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perSide {
				h := fmt.Sprintf("k8s-pod-network.%s-%d", side, i)
				a, err := m.AutoAssign(ctx, node, h, ipam.Attrs{Namespace: "default", Pod: h})
				if err != nil {
					t.Errorf("%s: %v", h, err)
					return
				}
				mu.Lock()
				all = append(all, got{h, a.Addr})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for _, g := range all {
		if other, dup := seen[g.addr]; dup {
			t.Errorf("%s given to %s and %s", g.addr, other, g.handle)
		}
		seen[g.addr] = g.handle
	}
	if n := e.used(t); n != 2*perSide {
		t.Errorf("blocks hold %d allocations, want %d", n, 2*perSide)
	}

	// A retried ADD through either side gets the address it got before.
	for _, g := range all[:6] {
		for name, m := range map[string]*ipam.IPAM{"agent": cached, "binary": direct} {
			a, err := m.AutoAssign(ctx, node, g.handle, ipam.Attrs{})
			if err != nil || a.Addr != g.addr {
				t.Errorf("retried ADD of %s through the %s: %v %v, want %s", g.handle, name, a.Addr, err, g.addr)
			}
		}
	}

	// Each side releases half, crossing over.
	for i, g := range all {
		m := cached
		if i%2 == 1 {
			m = direct
		}
		if i%4 < 2 {
			if _, err := m.ReleaseByHandle(ctx, g.handle); err != nil {
				t.Fatalf("releasing %s: %v", g.handle, err)
			}
		}
	}
	var want []string
	for i, g := range all {
		if i%4 >= 2 {
			want = append(want, ipam.HandleObjectName(g.handle))
		}
	}
	sort.Strings(want)
	// The handle writer catches up: the objects are exactly the live
	// allocations.
	var have []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		l, err := e.cs.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		have = have[:0]
		for _, h := range l.Items {
			have = append(have, h.Name)
		}
		sort.Strings(have)
		if store.PendingHandleWrites() == 0 && cmp.Equal(want, have) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := cmp.Diff(want, have); d != "" {
		t.Errorf("IPAMHandles differ from the live allocations (-want +have):\n%s", d)
	}
	if n := e.used(t); n != len(want) {
		t.Errorf("blocks hold %d allocations after the releases, want %d", n, len(want))
	}
}

// TestCachedStoreStaleAfterLostAnswer: the API server committed an
// allocation and died before answering, and the agent's cache has not
// seen it (its watch was broken). The retried ADD must get that address,
// not a second one, and a DEL must release it.
func TestCachedStoreStaleAfterLostAnswer(t *testing.T) {
	e := newEnv(t, pool("default-ipv4-ippool", "10.244.0.0/16", 26))
	ctx := context.Background()
	const node = "learn-k8s-2"
	direct := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{Node: node})
	if _, err := direct.AutoAssign(ctx, node, "k8s-pod-network.first", ipam.Attrs{}); err != nil {
		t.Fatal(err)
	}
	// stale is a cache frozen now, before the allocations below.
	stale := func() *ipam.IPAM {
		l, err := e.cs.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
		for i := range l.Items {
			idx.Add(&l.Items[i])
		}
		pools := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
		store := ipam.NewCachedStore(ipam.NewKubeStore(e.cs), calyxlisters.NewIPAMBlockLister(idx), calyxlisters.NewIPPoolLister(pools))
		return ipam.New(store, ipam.Options{Node: node})
	}

	cached := stale()
	lost, err := direct.AutoAssign(ctx, node, "k8s-pod-network.lost", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := cached.AutoAssign(ctx, node, "k8s-pod-network.lost", ipam.Attrs{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Addr != lost.Addr {
		t.Errorf("retried ADD through a stale cache got %s, want the committed %s", again.Addr, lost.Addr)
	}
	if n := e.used(t); n != 2 {
		t.Errorf("blocks hold %d allocations, want 2 (first, lost)", n)
	}

	cached = stale()
	if _, err := direct.AutoAssign(ctx, node, "k8s-pod-network.del", ipam.Attrs{}); err != nil {
		t.Fatal(err)
	}
	// Its index object too may never have been written.
	if err := e.cs.CalyxV1alpha1().IPAMHandles().Delete(ctx, ipam.HandleObjectName("k8s-pod-network.del"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	released, err := cached.ReleaseByHandle(ctx, "k8s-pod-network.del")
	if err != nil || len(released) != 1 {
		t.Errorf("DEL through a stale cache released %v (%v), want the one address", released, err)
	}
	if n := e.used(t); n != 2 {
		t.Errorf("blocks hold %d allocations after the DEL, want 2", n)
	}
}
