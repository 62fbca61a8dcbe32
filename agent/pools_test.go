package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestPoolChanges: the agent keeps the node's labels in the file the CNI
// plugin reads for the pools' nodeSelectors, and when tunl0's pool is
// disabled under it, moves tunl0 to a pool that selects the node, so that
// the old pool's blocks can empty.
func TestPoolChanges(t *testing.T) {
	cp := cptest.Start(t)
	c := newCluster(t, cp.Config)
	c.addPool(t, "old", "192.168.0.0/16", v1alpha1.IPIPModeAlways)
	ul := testnet.NewUnderlay(t)
	const name = "learn-k8s-2"
	c.addNode(t, name, nodeIPs[name])
	node := ul.AddNode(t, "cx-2", nodeIPs[name]+"/24")
	a := startAgent(t, cp.Config, node, name, agentOpts{})
	a.waitReady(t, 30*time.Second)
	ctx := context.Background()

	labelsFile := filepath.Join(a.dir, "state", "nodelabels")
	wantFile := func(want string) {
		t.Helper()
		eventually(t, 5*time.Second, "the labels file", func() error {
			b, err := os.ReadFile(labelsFile)
			if err != nil || string(b) != want {
				return fmt.Errorf("%s = %q, %v; want %q", labelsFile, b, err, want)
			}
			return nil
		})
	}
	wantFile(`{"kubernetes.io/hostname":"learn-k8s-2"}` + "\n")
	patch := []byte(`{"metadata":{"labels":{"zone":"a"}}}`)
	if _, err := c.kube.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	wantFile(`{"kubernetes.io/hostname":"learn-k8s-2","zone":"a"}` + "\n")

	before, err := netip.ParseAddr(nodeAnnotations(t, c, name)[v1alpha1.AnnotationTunnelAddress])
	if err != nil || !netip.MustParsePrefix("192.168.0.0/16").Contains(before) {
		t.Fatalf("tunnel address %v (%v), want one of the old pool's", before, err)
	}
	// Another node's pool, then this node's: only the latter takes tunl0.
	for _, p := range []struct{ name, cidr, zone string }{{"zone-b", "10.60.0.0/16", "b"}, {"zone-a", "10.50.0.0/16", "a"}} {
		pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: p.name}, Spec: v1alpha1.IPPoolSpec{CIDR: p.cidr,
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"zone": p.zone}}}}
		if _, err := c.calyx.CalyxV1alpha1().IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	old, err := c.calyx.CalyxV1alpha1().IPPools().Get(ctx, "old", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old.Spec.Disabled = true
	if _, err := c.calyx.CalyxV1alpha1().IPPools().Update(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var after netip.Addr
	took := eventually(t, 10*time.Second, "tunl0's address in pool zone-a", func() error {
		after, err = netip.ParseAddr(nodeAnnotations(t, c, name)[v1alpha1.AnnotationTunnelAddress])
		if err != nil || !netip.MustParsePrefix("10.50.0.0/16").Contains(after) {
			return fmt.Errorf("tunnel address %v (%v)", after, err)
		}
		addrs := node.IP(t, "-4", "-o", "addr", "show", "dev", "tunl0")
		if !strings.Contains(addrs, "inet "+after.String()+"/32 ") || strings.Contains(addrs, before.String()) {
			return fmt.Errorf("tunl0: %s", addrs)
		}
		return nil
	})
	t.Logf("tunl0 moved from %s to %s %s after the old pool was disabled", before, after, took.Round(time.Millisecond))
	blocks, err := c.calyx.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPool + "=old"})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks.Items {
		if len(b.Spec.Allocations) != 0 {
			t.Errorf("the old pool's block %s still holds %+v", b.Spec.CIDR, b.Spec.Allocations)
		}
	}
}
