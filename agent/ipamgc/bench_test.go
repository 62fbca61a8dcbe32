package ipamgc

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// BenchmarkPass measures a steady-state pass, where nothing leaks: what
// the leader pays every interval. 400 running pods on 4 nodes, with their
// tunnel addresses.
//
//	go test -run '^$' -bench Pass -benchtime 20x ./agent/ipamgc/
func BenchmarkPass(b *testing.B) {
	const pods, nodes = 400, 4
	g := newAPI(b).newGC(b)
	ctx := context.Background()
	// Blocks of 64, as shipped: the test pool's blocks of 8 would be
	// borrowed from all over.
	if _, err := g.calyx.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "big"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/16", BlockSize: 26},
	}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	begin := time.Now()
	for n := range nodes {
		node := fmt.Sprintf("n%d", n)
		g.node(node)
		g.ipams[node] = ipam.New(ipam.NewKubeStore(g.calyx), ipam.Options{Node: node, Pools: []string{"big"}})
		g.tunnelAddr(node)
	}
	for i := range pods {
		pod, node := fmt.Sprintf("p%d", i), fmt.Sprintf("n%d", i%nodes)
		g.pod(pod, node)
		g.podAddr(pod, node)
	}
	b.Logf("set up %d pods in %s", pods, time.Since(begin).Round(time.Millisecond))
	g.synced()
	for b.Loop() {
		res, err := g.ctrl.collector.Pass(ctx, g.cl)
		if err != nil || len(res.Released) > 0 || res.Candidates > 0 {
			b.Fatalf("a steady-state pass: %+v, %v", res, err)
		}
	}
}
