package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane"
)

const (
	ipamNodes        = 3
	ipamAllocsPerRun = 150
)

// conflictCounter counts API responses with status 409 Conflict: every one
// is a compare-and-swap lost to another writer, which the allocator retries.
type conflictCounter struct {
	rt        http.RoundTripper
	conflicts *atomic.Int64
	requests  *atomic.Int64
}

func (c conflictCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	c.requests.Add(1)
	if err == nil && resp.StatusCode == http.StatusConflict {
		c.conflicts.Add(1)
	}
	return resp, err
}

// runIPAM allocates from 3 nodes at once, in-process allocators of the
// ipam package against a real kube-apiserver, and from 1 node alone.
func runIPAM(ctx context.Context, e *Env) ([]Row, error) {
	e.Logf("ipam: starting a control plane (etcd + kube-apiserver)")
	cp, err := controlplane.Start(ctx, controlplane.Options{Progress: prefixWriter{e, "ipam: "}})
	if err != nil {
		return nil, err
	}
	defer cp.Stop()
	cs := versioned.NewForConfigOrDie(cp.Config)
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways}}
	if _, err := cs.CalyxV1alpha1().IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	var rate3, rate1, conf3, conf1, lat3, lat1 []float64
	for run := range e.Opts.Runs {
		for _, nodes := range []int{ipamNodes, 1} {
			r, err := allocate(ctx, cp.Config, fmt.Sprintf("r%d-n%d", run, nodes), nodes)
			if err != nil {
				return nil, err
			}
			e.Logf("ipam: run %d/%d: %d node(s): %.0f allocations/s, %d conflicts (409) in %d requests, p50 %.1f ms",
				run+1, e.Opts.Runs, nodes, r.rate, r.conflicts, r.requests, r.p50)
			if nodes == 1 {
				rate1, conf1, lat1 = append(rate1, r.rate), append(conf1, float64(r.conflicts)), append(lat1, r.p50)
			} else {
				rate3, conf3, lat3 = append(rate3, r.rate), append(conf3, float64(r.conflicts)), append(lat3, r.p50)
			}
		}
	}
	e.Note("ipam: %d allocations per node per run with the ipam package's allocator (what calyx-ipam runs), one allocator per node, all nodes at once, against a kube-apiserver of their own; conflicts are the API's 409 responses (lost compare-and-swaps, then retried), counted at the HTTP transport.", ipamAllocsPerRun)
	ref := fmt.Sprintf("1 node alone")
	return []Row{
		{Part: "ipam", Metric: fmt.Sprintf("%d nodes allocating at once: allocations/s (all nodes)", ipamNodes), Unit: "/s", Calyx: Of(rate3...), RefName: ref, Ref: Of(rate1...)},
		{Part: "ipam", Metric: "… conflict retries (409s) per run", Calyx: Of(conf3...), RefName: ref, Ref: Of(conf1...)},
		{Part: "ipam", Metric: "… allocation latency p50", Unit: "ms", Calyx: Of(lat3...), RefName: ref, Ref: Of(lat1...)},
	}, nil
}

type ipamResult struct {
	rate                float64
	conflicts, requests int64
	p50                 float64
}

func allocate(ctx context.Context, base *rest.Config, prefix string, nodes int) (ipamResult, error) {
	var conflicts, requests atomic.Int64
	cfg := rest.CopyConfig(base)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return conflictCounter{rt: rt, conflicts: &conflicts, requests: &requests}
	}
	lats := make([][]time.Duration, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	begin := time.Now()
	for n := range nodes {
		node := fmt.Sprintf("bench-%s-%d", prefix, n)
		m, err := ipam.NewForConfig(cfg, ipam.Options{Node: node})
		if err != nil {
			return ipamResult{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ipamAllocsPerRun {
				t := time.Now()
				_, err := m.AutoAssign(ctx, node, fmt.Sprintf("k8s-pod-network.%s-%d", node, i),
					ipam.Attrs{Namespace: "bench", Pod: fmt.Sprintf("p%d", i), ContainerID: fmt.Sprintf("%s-%d", node, i)})
				if err != nil {
					errs[n] = fmt.Errorf("node %s, allocation %d: %w", node, i, err)
					return
				}
				lats[n] = append(lats[n], time.Since(t))
			}
		}()
	}
	wg.Wait()
	took := time.Since(begin)
	for _, err := range errs {
		if err != nil {
			return ipamResult{}, err
		}
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return ipamResult{rate: float64(len(all)) / took.Seconds(), conflicts: conflicts.Load(), requests: requests.Load(), p50: ms(percentile(all, 50))}, nil
}
