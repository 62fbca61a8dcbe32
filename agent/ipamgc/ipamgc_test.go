package ipamgc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

const (
	grace = 15 * time.Minute
	ns    = "default"
)

// cluster is what the GC tests share: one real API server, reset between
// cases.
type apiEnv struct {
	kube  kubernetes.Interface
	calyx versioned.Interface
}

func newAPI(t testing.TB) *apiEnv {
	t.Helper()
	cp := cptest.Start(t)
	e := &apiEnv{kube: kubernetes.NewForConfigOrDie(cp.Config), calyx: versioned.NewForConfigOrDie(cp.Config)}
	_, err := e.calyx.CalyxV1alpha1().IPPools().Create(context.Background(), &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "pool"},
		// /29 blocks of 8 addresses, so that a node fills one quickly.
		Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", BlockSize: 29, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pool: %v", err)
	}
	// Pods need their service account, which no controller-manager makes
	// here.
	_, err = e.kube.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the default service account: %v", err)
	}
	return e
}

// reset deletes every pod, node and IPAM object but the pool.
func (e *apiEnv) reset(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	zero := int64(0)
	all := metav1.ListOptions{}
	c := e.calyx.CalyxV1alpha1()
	for what, err := range map[string]error{
		"pods":       e.kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, all),
		"nodes":      e.kube.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, all),
		"blocks":     c.IPAMBlocks().DeleteCollection(ctx, metav1.DeleteOptions{}, all),
		"handles":    c.IPAMHandles().DeleteCollection(ctx, metav1.DeleteOptions{}, all),
		"affinities": c.IPAMAffinities().DeleteCollection(ctx, metav1.DeleteOptions{}, all),
	} {
		if err != nil {
			t.Fatalf("deleting all %s: %v", what, err)
		}
	}
}

// gcEnv is one case: a controller with a fake clock and its own metrics.
type gcEnv struct {
	*apiEnv
	t       testing.TB
	ctrl    *Controller
	cl      ipam.Cluster
	cache   *cluster // behind cl
	metrics *metrics.Metrics
	start   time.Time
	now     time.Time
	// allocators by node
	ipams map[string]*ipam.IPAM
	// what the passes released, as "reason pod" lines
	released []string
}

func (e *apiEnv) newGC(t testing.TB) *gcEnv {
	t.Helper()
	e.reset(t)
	g := &gcEnv{apiEnv: e, t: t, start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), ipams: map[string]*ipam.IPAM{}}
	g.now = g.start
	g.metrics = metrics.New(metrics.Sources{})
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctrl, err := New(Config{Enabled: true, Grace: grace, Now: func() time.Time { return g.now }}, "gc-test", e.kube, e.calyx, g.metrics, log)
	if err != nil {
		t.Fatal(err)
	}
	g.ctrl = ctrl
	ctx, cancel := context.WithCancel(context.Background())
	cl, stop, err := ctrl.watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(); cancel() })
	g.cl, g.cache = cl, cl
	return g
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (g *gcEnv) node(name string) {
	g.t.Helper()
	if _, err := g.kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		g.t.Fatalf("creating node %s: %v", name, err)
	}
}

func (g *gcEnv) deleteNode(name string) {
	g.t.Helper()
	if err := g.kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		g.t.Fatalf("deleting node %s: %v", name, err)
	}
}

func (g *gcEnv) pod(name, node string) {
	g.t.Helper()
	_, err := g.kube.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		g.t.Fatalf("creating pod %s: %v", name, err)
	}
}

// podStatus writes the pod's address into its status, as the kubelet
// does once the sandbox runs.
func (g *gcEnv) podStatus(name string, a ipam.Assignment) {
	g.t.Helper()
	ctx := context.Background()
	p, err := g.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		g.t.Fatal(err)
	}
	p.Status.PodIP = a.Addr.String()
	p.Status.PodIPs = []corev1.PodIP{{IP: a.Addr.String()}}
	if _, err := g.kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		g.t.Fatalf("writing the status of pod %s: %v", name, err)
	}
}

func (g *gcEnv) deletePod(name string) {
	g.t.Helper()
	zero := int64(0)
	if err := g.kube.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		g.t.Fatalf("deleting pod %s: %v", name, err)
	}
}

func (g *gcEnv) alloc(node string) *ipam.IPAM {
	m := g.ipams[node]
	if m == nil {
		// One block per node: the next address is borrowed.
		m = ipam.New(ipam.NewKubeStore(g.calyx), ipam.Options{Node: node, MaxBlocksPerNode: 1})
		g.ipams[node] = m
	}
	return m
}

// podAddr allocates an address for pod on node, as the CNI plugin does.
func (g *gcEnv) podAddr(pod, node string) ipam.Assignment {
	g.t.Helper()
	return g.sandboxAddr(pod, pod, node)
}

// sandboxAddr allocates an address for one sandbox (container ID) of pod.
func (g *gcEnv) sandboxAddr(pod, sandbox, node string) ipam.Assignment {
	g.t.Helper()
	a, err := g.alloc(node).AutoAssign(context.Background(), node, "k8s-pod-network."+sandbox, ipam.Attrs{Namespace: ns, Pod: pod, ContainerID: sandbox})
	if err != nil {
		g.t.Fatalf("allocating for pod %s on %s: %v", pod, node, err)
	}
	return a
}

func (g *gcEnv) tunnelAddr(node string) {
	g.t.Helper()
	if _, err := g.alloc(node).AssignTunnelAddress(context.Background(), node); err != nil {
		g.t.Fatalf("allocating the tunnel address of %s: %v", node, err)
	}
}

// synced waits until the controller's informers show the API's pods and
// nodes, so that a pass decides on what the test just did.
func (g *gcEnv) synced() {
	g.t.Helper()
	cl := g.cache
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pods, err := g.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			g.t.Fatal(err)
		}
		nodes, err := g.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			g.t.Fatal(err)
		}
		var want, got []string
		for _, p := range pods.Items {
			want = append(want, "pod "+p.Name)
		}
		for _, n := range nodes.Items {
			want = append(want, "node "+n.Name)
		}
		cp, _ := cl.pods.List(labels.Everything())
		for _, p := range cp {
			got = append(got, "pod "+p.Name)
		}
		cn, _ := cl.nodes.List(labels.Everything())
		for _, n := range cn {
			got = append(got, "node "+n.Name)
		}
		sort.Strings(want)
		sort.Strings(got)
		if slices.Equal(want, got) {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("informers did not catch up in 10s: API %v, cache %v", want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// passAt runs a pass with the clock at start+at.
func (g *gcEnv) passAt(at time.Duration) {
	g.t.Helper()
	g.synced()
	g.now = g.start.Add(at)
	res, _ := g.ctrl.collector.Pass(context.Background(), g.cl)
	// Count into the metrics as the controller does.
	g.ctrl.record(res, nil)
	for _, r := range res.Released {
		g.released = append(g.released, r.Reason+" "+owner(r.Pod, r.Handle)+" "+r.Node)
	}
}

func owner(pod, handle string) string {
	if pod != "" {
		return pod
	}
	return handle
}

// state is the IPAM objects as text: allocations as "owner@node", blocks
// as "block node=N used=U", affinities by node, handles by handle.
func (g *gcEnv) state() (allocs, blocks, affinities, handles []string) {
	g.t.Helper()
	ctx := context.Background()
	c := g.calyx.CalyxV1alpha1()
	bl, err := c.IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		g.t.Fatal(err)
	}
	for _, b := range bl.Items {
		borrowed := 0
		for _, a := range b.Spec.Allocations {
			allocs = append(allocs, owner(a.Pod, a.Handle)+"@"+a.Node)
			if a.Node != b.Spec.Node {
				borrowed++
			}
		}
		blocks = append(blocks, fmt.Sprintf("node=%s used=%d borrowed=%d", b.Spec.Node, len(b.Spec.Allocations), borrowed))
	}
	al, err := c.IPAMAffinities().List(ctx, metav1.ListOptions{})
	if err != nil {
		g.t.Fatal(err)
	}
	for _, a := range al.Items {
		affinities = append(affinities, a.Spec.Node)
	}
	hl, err := c.IPAMHandles().List(ctx, metav1.ListOptions{})
	if err != nil {
		g.t.Fatal(err)
	}
	for _, h := range hl.Items {
		handles = append(handles, h.Spec.Handle)
	}
	for _, s := range [][]string{allocs, blocks, affinities, handles} {
		sort.Strings(s)
	}
	return allocs, blocks, affinities, handles
}

// scrape reads the GC's metrics from the served /metrics, as Prometheus
// does.
func scrape(t testing.TB, m *metrics.Metrics) []string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "calyx_ipam_") {
			out = append(out, l)
		}
	}
	return out
}

// recheckCluster is a cluster whose pods come back between the scan and
// the release: the fresh read is the first to see the pod again.
type recheckCluster struct {
	ipam.Cluster
	g       *gcEnv
	recheck map[string]bool // pods re-created on their fresh read
}

func (c recheckCluster) Pod(ctx context.Context, namespace, name string, fresh bool) (ipam.PodInfo, bool, error) {
	if fresh && c.recheck[name] {
		delete(c.recheck, name)
		c.g.pod(name, "n1")
	}
	return c.Cluster.Pod(ctx, namespace, name, fresh)
}

// TestPass runs collection passes against a real API server, with the
// grace period measured on a fake clock.
func TestPass(t *testing.T) {
	api := newAPI(t)
	type step struct {
		at time.Duration
		do func(g *gcEnv) // before the pass
	}
	tests := []struct {
		name string
		// setup makes nodes n1 (and n2), pods and their addresses.
		setup func(g *gcEnv)
		steps []step
		// recheck names pods re-created between scan and release.
		recheck []string

		wantReleased                     []string
		wantAllocs, wantBlocks, wantAffs []string
		wantHandles                      []string
		wantMetrics                      []string
	}{
		{
			name: "pod gone, within grace: a candidate, kept",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.tunnelAddr("n1")
				g.podAddr("a", "n1") // no Pod object
				g.pod("b", "n1")
				g.podAddr("b", "n1")
			},
			steps:       []step{{at: 0}, {at: grace - time.Second}},
			wantAllocs:  []string{"a@n1", "b@n1", "tunnel-n1@n1"},
			wantBlocks:  []string{"node=n1 used=3 borrowed=0"},
			wantAffs:    []string{"n1"},
			wantHandles: []string{"k8s-pod-network.a", "k8s-pod-network.b", "tunnel-n1"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 1`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "pod gone, past grace: released",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.tunnelAddr("n1")
				g.podAddr("a", "n1")
				g.pod("b", "n1")
				g.podAddr("b", "n1")
			},
			steps:        []step{{at: 0}, {at: grace / 2}, {at: grace + time.Second}},
			wantReleased: []string{"pod-gone a n1"},
			wantAllocs:   []string{"b@n1", "tunnel-n1@n1"},
			wantBlocks:   []string{"node=n1 used=2 borrowed=0"},
			wantAffs:     []string{"n1"},
			wantHandles:  []string{"k8s-pod-network.b", "tunnel-n1"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 3`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 1`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "pod reappears before grace: kept and forgotten",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.podAddr("a", "n1")
			},
			steps: []step{
				{at: 0},
				{at: grace / 2, do: func(g *gcEnv) { g.pod("a", "n1") }},
				// Gone again: the grace period starts over.
				{at: grace - time.Second, do: func(g *gcEnv) { g.deletePod("a") }},
				{at: grace + time.Second},
			},
			wantAllocs:  []string{"a@n1"},
			wantBlocks:  []string{"node=n1 used=1 borrowed=0"},
			wantAffs:    []string{"n1"},
			wantHandles: []string{"k8s-pod-network.a"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 1`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 4`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "pod of the same name on another node: the address is released",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.node("n2")
				g.podAddr("a", "n1")
				g.pod("a", "n2") // a StatefulSet's pod, recreated elsewhere
			},
			steps:        []step{{at: 0}, {at: grace + time.Second}},
			wantReleased: []string{"pod-gone a n1"},
			wantBlocks:   []string{"node=n1 used=0 borrowed=0"},
			wantAffs:     []string{"n1"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 1`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "an earlier sandbox of a live pod: released once the pod reports its new address",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.pod("a", "n1")
				g.sandboxAddr("a", "a-1", "n1") // its DEL never finished
				g.podStatus("a", g.sandboxAddr("a", "a-2", "n1"))
				g.pod("b", "n1")
				g.sandboxAddr("b", "b-1", "n1")
				g.sandboxAddr("b", "b-2", "n1") // no status yet: cannot tell
			},
			steps:        []step{{at: 0}, {at: grace + time.Second}},
			wantReleased: []string{"sandbox-gone a n1"},
			wantAllocs:   []string{"a@n1", "b@n1", "b@n1"},
			wantBlocks:   []string{"node=n1 used=3 borrowed=0"},
			wantAffs:     []string{"n1"},
			wantHandles:  []string{"k8s-pod-network.a-2", "k8s-pod-network.b-1", "k8s-pod-network.b-2"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 1`,
			},
		},
		{
			name: "node deleted: its pod and tunnel addresses at once, its empty block and affinity",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.node("n2")
				g.tunnelAddr("n1")
				g.tunnelAddr("n2")
				g.pod("b", "n2") // still in the API: the node's are released anyway
				g.podAddr("b", "n2")
				g.podAddr("c", "n2")
			},
			steps: []step{
				{at: 0, do: func(g *gcEnv) { g.deleteNode("n2") }},
				{at: time.Second},
			},
			wantReleased: []string{"node-gone b n2", "node-gone c n2", "node-gone tunnel-n2 n2"},
			wantAllocs:   []string{"tunnel-n1@n1"},
			wantBlocks:   []string{"node=n1 used=1 borrowed=0"},
			wantAffs:     []string{"n1"},
			wantHandles:  []string{"tunnel-n1"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 1`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 3`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "node deleted: its block lent to a live node's pod is kept",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.node("n2")
				g.tunnelAddr("n2")
				g.pod("b", "n2")
				g.podAddr("b", "n2")
				// n1 fills its one block and borrows from n2's.
				for i := range 9 {
					p := fmt.Sprintf("p%d", i)
					g.pod(p, "n1")
					if a := g.podAddr(p, "n1"); a.Borrowed != (i == 8) {
						g.t.Fatalf("pod %s: borrowed %v, want %v", p, a.Borrowed, i == 8)
					}
				}
			},
			steps: []step{
				{at: 0, do: func(g *gcEnv) { g.deleteNode("n2") }},
			},
			wantReleased: []string{"node-gone b n2", "node-gone tunnel-n2 n2"},
			wantAllocs: []string{
				"p0@n1", "p1@n1", "p2@n1", "p3@n1", "p4@n1", "p5@n1", "p6@n1", "p7@n1", "p8@n1",
			},
			wantBlocks: []string{"node=n1 used=8 borrowed=0", "node=n2 used=1 borrowed=1"},
			wantAffs:   []string{"n1"},
			wantHandles: []string{
				"k8s-pod-network.p0", "k8s-pod-network.p1", "k8s-pod-network.p2", "k8s-pod-network.p3", "k8s-pod-network.p4",
				"k8s-pod-network.p5", "k8s-pod-network.p6", "k8s-pod-network.p7", "k8s-pod-network.p8",
			},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_blocks{node="n2"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 1`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 2`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "pod re-created between scan and release: the re-check keeps it",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.podAddr("a", "n1")
				g.podAddr("z", "n1")
			},
			recheck:      []string{"a"},
			steps:        []step{{at: 0}, {at: grace}},
			wantReleased: []string{"pod-gone z n1"},
			wantAllocs:   []string{"a@n1"},
			wantBlocks:   []string{"node=n1 used=1 borrowed=0"},
			wantAffs:     []string{"n1"},
			wantHandles:  []string{"k8s-pod-network.a"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 0`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 1`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
		{
			name: "an index entry that points at no address: deleted after grace",
			setup: func(g *gcEnv) {
				g.node("n1")
				g.pod("a", "n1")
				g.podAddr("a", "n1")
				// A DEL that died between releasing and deleting the entry:
				// the address is free, the IPAMHandle is still there.
				b, err := g.calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
				if err != nil || len(b.Items) != 1 {
					g.t.Fatalf("want one block: %v %v", b, err)
				}
				blk := b.Items[0]
				blk.Spec.Allocations = nil
				blk.Status = v1alpha1.IPAMBlockStatus{Used: 0, Free: 8}
				if _, err := g.calyx.CalyxV1alpha1().IPAMBlocks().Update(context.Background(), &blk, metav1.UpdateOptions{}); err != nil {
					g.t.Fatal(err)
				}
			},
			steps:      []step{{at: 0}, {at: grace}},
			wantBlocks: []string{"node=n1 used=0 borrowed=0"},
			wantAffs:   []string{"n1"},
			wantMetrics: []string{
				`calyx_ipam_blocks{node="n1"} 1`,
				`calyx_ipam_gc_blocks_deleted_total 0`,
				`calyx_ipam_gc_handles_deleted_total 1`,
				`calyx_ipam_gc_leader 0`,
				`calyx_ipam_gc_leak_candidates 0`,
				`calyx_ipam_gc_passes_total{result="error"} 0`,
				`calyx_ipam_gc_passes_total{result="ok"} 2`,
				`calyx_ipam_gc_released_total{reason="node-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="pod-gone"} 0`,
				`calyx_ipam_gc_released_total{reason="sandbox-gone"} 0`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := api.newGC(t)
			tt.setup(g)
			if len(tt.recheck) > 0 {
				rc := recheckCluster{Cluster: g.cl, g: g, recheck: map[string]bool{}}
				for _, p := range tt.recheck {
					rc.recheck[p] = true
				}
				g.cl = rc
			}
			for _, s := range tt.steps {
				if s.do != nil {
					s.do(g)
				}
				g.passAt(s.at)
			}
			allocs, blocks, affs, handles := g.state()
			sort.Strings(g.released)
			for _, c := range []struct {
				what      string
				want, got []string
			}{
				{"released", tt.wantReleased, g.released},
				{"allocations", tt.wantAllocs, allocs},
				{"blocks", tt.wantBlocks, blocks},
				{"affinities", tt.wantAffs, affs},
				{"handles", tt.wantHandles, handles},
				{"metrics", tt.wantMetrics, scrape(t, g.metrics)},
			} {
				if diff := cmp.Diff(c.want, c.got); diff != "" {
					t.Errorf("%s (-want +got):\n%s", c.what, diff)
				}
			}
		})
	}
}

// TestLeaderElection runs two collectors on one Lease: one collects, the
// other waits, and takes over when the first stops.
func TestLeaderElection(t *testing.T) {
	api := newAPI(t)
	type member struct {
		name    string
		ctrl    *Controller
		metrics *metrics.Metrics
		cancel  context.CancelFunc
		done    chan struct{}
	}
	cfg := Config{
		Enabled: true, Grace: grace, Interval: 100 * time.Millisecond,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond,
	}
	start := func(name string) *member {
		m := &member{name: name, metrics: metrics.New(metrics.Sources{}), done: make(chan struct{})}
		log := slog.New(slog.NewTextHandler(testWriter{t}, nil)).With("member", name)
		ctrl, err := New(cfg, name, api.kube, api.calyx, m.metrics, log)
		if err != nil {
			t.Fatal(err)
		}
		m.ctrl = ctrl
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel = cancel
		go func() {
			defer close(m.done)
			ctrl.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-m.done })
		return m
	}
	value := func(m *member, metric string) string {
		for _, l := range scrape(t, m.metrics) {
			if v, ok := strings.CutPrefix(l, metric+" "); ok {
				return v
			}
		}
		return ""
	}
	passes := func(m *member) string { return value(m, `calyx_ipam_gc_passes_total{result="ok"}`) }
	waitFor := func(what string, cond func() bool) time.Duration {
		t.Helper()
		begin := time.Now()
		for !cond() {
			if time.Since(begin) > 20*time.Second {
				t.Fatalf("%s: not after 20s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(begin)
	}
	holder := func() string {
		l, err := api.kube.CoordinationV1().Leases(DefaultLeaseNamespace).Get(context.Background(), DefaultLeaseName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		if l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}

	a := start("node-a")
	waitFor("node-a leads", func() bool { return value(a, "calyx_ipam_gc_leader") == "1" })
	b := start("node-b")
	// B campaigns for a while: a few of A's renewals, many of B's retries.
	time.Sleep(2 * time.Second)
	got := map[string]string{
		"node-a leader": value(a, "calyx_ipam_gc_leader"),
		"node-b leader": value(b, "calyx_ipam_gc_leader"),
		"node-b passes": passes(b),
		"lease holder":  holder(),
	}
	want := map[string]string{"node-a leader": "1", "node-b leader": "0", "node-b passes": "0", "lease holder": "node-a"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("while node-a leads (-want +got):\n%s", diff)
	}
	if passes(a) == "0" {
		t.Errorf("node-a leads but ran no pass")
	}

	aPasses := passes(a)
	a.cancel()
	<-a.done
	took := waitFor("node-b takes over", func() bool { return value(b, "calyx_ipam_gc_leader") == "1" })
	t.Logf("node-b took over %s after node-a stopped (retry period %s, lease %s)", took.Round(time.Millisecond), cfg.RetryPeriod, cfg.LeaseDuration)
	waitFor("node-b collects", func() bool { return passes(b) != "0" })
	got = map[string]string{
		"node-a leader": value(a, "calyx_ipam_gc_leader"),
		"node-a passes": passes(a),
		"lease holder":  holder(),
	}
	want = map[string]string{"node-a leader": "0", "node-a passes": aPasses, "lease holder": "node-b"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after node-a stopped (-want +got):\n%s", diff)
	}
	// Stopping gave the lease up: the takeover did not wait for it to
	// expire.
	if took >= cfg.LeaseDuration {
		t.Errorf("node-b took %s to take over, not less than the lease duration %s: was the lease released on stop?", took, cfg.LeaseDuration)
	}
}
