package ipam_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/ipam"
)

// everything says every pod and node exists.
type everything struct{}

func (everything) Pod(context.Context, string, string, bool) (ipam.PodInfo, bool, error) {
	return ipam.PodInfo{}, true, nil
}

func (everything) Node(context.Context, string, bool) (bool, error) { return true, nil }

// TestDisabledPoolDrains follows a migration: the old pool is disabled
// under running pods, which keep their addresses; new pods get the new
// pool's; the old pool's blocks go as they empty, and leave their node's
// index with them. So do the blocks of a pool deleted under its pods.
func TestDisabledPoolDrains(t *testing.T) {
	e := newEnv(t, pool("old", "192.168.0.0/16", 30))
	ctx := context.Background()
	m := ipam.New(ipam.NewKubeStore(e.cs), ipam.Options{})
	gc := ipam.NewCollector(ipam.NewKubeGCStore(e.cs), ipam.CollectorOptions{})
	var oldBlocks []string
	for _, h := range []string{"net.p1", "net.p2", "net.p3", "net.p4", "net.p5"} { // two blocks of n1's
		a, err := m.AutoAssign(ctx, "n1", h, ipam.Attrs{})
		if err != nil {
			t.Fatal(err)
		}
		oldBlocks = append(oldBlocks, ipam.BlockName(a.Block))
	}
	np := pool("new", "10.50.0.0/16", 26)
	if _, err := e.cs.CalyxV1alpha1().IPPools().Create(ctx, &np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	old, err := e.cs.CalyxV1alpha1().IPPools().Get(ctx, "old", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old.Spec.Disabled = true
	if _, err := e.cs.CalyxV1alpha1().IPPools().Update(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Room is left in the old pool's second block, but it gives nothing
	// new.
	a, err := m.AutoAssign(ctx, "n1", "net.new", ipam.Attrs{})
	if err != nil || e.inPool(t, a.Addr) != "new" {
		t.Fatalf("a pod after the old pool was disabled got %s (%v), want the new pool's", a.Addr, err)
	}

	usage := func() map[string]int {
		u, err := m.Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, p := range u.Pools {
			out[p.Name] = p.Blocks
		}
		return out
	}
	pass := func() []string {
		res, err := gc.Pass(ctx, everything{})
		if err != nil {
			t.Fatal(err)
		}
		return res.BlocksDeleted
	}
	if got := pass(); len(got) != 0 {
		t.Errorf("the pass deleted %v while the old pool's pods run", got)
	}
	// The second block's pod goes: its block with it.
	if _, err := m.ReleaseByHandle(ctx, "net.p5"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{oldBlocks[4]}, pass()); diff != "" {
		t.Errorf("blocks deleted after the second block emptied (-want +got):\n%s", diff)
	}
	for _, h := range []string{"net.p1", "net.p2", "net.p3", "net.p4"} {
		if _, err := m.ReleaseByHandle(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{oldBlocks[0]}, pass()); diff != "" {
		t.Errorf("blocks deleted after the last old pod went (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"old": 0, "new": 1}, usage()); diff != "" {
		t.Errorf("blocks per pool after the migration (-want +got):\n%s", diff)
	}
	aff, err := e.cs.CalyxV1alpha1().IPAMAffinities().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ipam.BlockName(a.Block)}, aff.Spec.Blocks); diff != "" {
		t.Errorf("n1's block index after the migration (-want +got):\n%s", diff)
	}

	// A pool deleted under its pods: its blocks go once they are empty.
	if err := e.cs.CalyxV1alpha1().IPPools().Delete(ctx, "new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := pass(); len(got) != 0 {
		t.Errorf("the pass deleted %v while the deleted pool's pod runs", got)
	}
	if _, err := m.ReleaseByHandle(ctx, "net.new"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ipam.BlockName(a.Block)}, pass()); diff != "" {
		t.Errorf("blocks deleted after the deleted pool's last pod went (-want +got):\n%s", diff)
	}
}
