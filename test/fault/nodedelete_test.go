package fault

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/lab"
)

// TestNodeDeleted retires a machine: it is turned off (its kubelet,
// runtime, calyx-node and pods end at once) and its Node is deleted from
// the API, as `kubectl delete node` does. Every other
// node's agent drops its routes to that node's blocks within a second, so
// no pod traffic goes on to a machine that may get another job, and the
// IPAM garbage collector (on another node) releases every address of the
// node and deletes its blocks and affinity.
//
// It runs last in the package (its file sorts last; keep it so): the
// lab's node boots again afterwards, registers anew and gets calyx-node
// and new addresses.
func TestNodeDeleted(t *testing.T) {
	const within = time.Second
	l := sharedLab(t)
	ctx := context.Background()
	gone, goneIP := node3, node3IP
	others := []string{lab.ControlPlaneNode, node2}

	// The shipped GC interval is a minute; an operator who wants a retired
	// node's addresses back sooner sets CALYX_GC_INTERVAL, as here, so the
	// test waits seconds. The grace period for pods' addresses stays.
	c := l.Client()
	if _, err := c.Kubectl(ctx, nil, "-n", "kube-system", "set", "env", "daemonset/calyx-node", "CALYX_GC_INTERVAL=5s"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/calyx-node", "--timeout=3m"); err != nil {
		t.Fatalf("calyx-node with CALYX_GC_INTERVAL=5s: %v\n%s", err, out)
	}

	viaGone := func(node string) func() (int, error) {
		h := netlinkIn(t, node)
		return func() (int, error) {
			rs, err := calyxRoutes(h)
			if err != nil {
				return 0, err
			}
			n := 0
			for _, r := range rs {
				if r.Gw != nil && r.Gw.String() == goneIP {
					n++
				}
			}
			return n, nil
		}
	}
	counts := map[string]func() (int, error){}
	for _, node := range others {
		counts[node] = viaGone(node)
		n, err := counts[node]()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("%s has no calyx route via %s (%s) before the test: nothing to see go", node, goneIP, gone)
		}
		t.Logf("%s: %d calyx routes via %s before the deletion", node, n, goneIP)
	}

	if err := l.StopNode(gone); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := l.DeleteNode(ctx, gone); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Give the lab its node back: it boots, its kubelet registers
		// the Node again, and calyx-node comes back on it.
		if err := l.StartNode(context.Background(), gone); err != nil {
			t.Errorf("booting %s again: %v", gone, err)
		}
	})
	var wg sync.WaitGroup
	took := map[string]time.Duration{}
	var mu sync.Mutex
	for _, node := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok := pollUntil(5*time.Second, time.Millisecond, func() bool {
				n, err := counts[node]()
				return err == nil && n == 0
			})
			mu.Lock()
			defer mu.Unlock()
			took[node] = time.Since(begin)
			if !ok {
				took[node] = -1
			}
		}()
	}
	wg.Wait()
	for _, node := range others {
		d := took[node]
		if d < 0 {
			n, _ := counts[node]()
			t.Errorf("%s still has %d calyx routes via %s 5 s after Node %s was deleted", node, n, goneIP, gone)
			continue
		}
		t.Logf("%s dropped every route via %s %s after `delete node %s` was sent", node, goneIP, d.Round(100*time.Microsecond), gone)
		if d > within {
			t.Errorf("%s took %s to drop its routes to %s, want within %s", node, d.Round(time.Millisecond), gone, within)
		}
	}

	// Nor is the deleted node trusted with IP-in-IP any more.
	for _, node := range others {
		f, err := os.Open("/var/run/netns/" + node)
		if err != nil {
			t.Fatal(err)
		}
		fw := firewall.New(int(f.Fd()))
		var last []string
		_, ok := pollUntil(5*time.Second, time.Millisecond, func() bool {
			sets, err := fw.SetContents()
			if err != nil {
				return false
			}
			last = sets[firewall.SetNodeIPs]
			return !slices.Contains(last, goneIP)
		})
		f.Close()
		d := time.Since(begin)
		if !ok {
			t.Errorf("%s's nftables set %s still lists %s 5 s after the deletion: %v", node, firewall.SetNodeIPs, goneIP, last)
			continue
		}
		t.Logf("%s's set %s no longer lists %s (checked %s after the deletion): %v", node, firewall.SetNodeIPs, goneIP, d.Round(100*time.Microsecond), last)
		if d > within {
			t.Errorf("%s still trusted %s's IPIP %s after its deletion, want within %s", node, gone, d.Round(time.Millisecond), within)
		}
	}

	// GC: the lease may have been the dead agent's (15 s to expire), then
	// one pass (every 5 s, set above).
	var held []string
	gcTook, ok := pollUntil(40*time.Second, 200*time.Millisecond, func() bool {
		held = heldBy(t, l, gone)
		return len(held) == 0
	})
	if !ok {
		t.Fatalf("40 s after Node %s was deleted, the IPAM still holds for it: %v", gone, held)
	}
	t.Logf("the IPAM garbage collector released every address, block and affinity of %s %s after the deletion", gone, gcTook.Round(time.Millisecond))
}

// heldBy lists what the IPAM still holds for node: allocations used on it,
// blocks affine to it, its IPAMAffinity.
func heldBy(t *testing.T, l *lab.Lab, node string) []string {
	t.Helper()
	var held []string
	_, blocks := podAllocations(t, l)
	for _, b := range blocks {
		if b.Spec.Node == node {
			held = append(held, "block "+b.Spec.CIDR)
		}
		for _, a := range b.Spec.Allocations {
			if a.Node == node || (a.Node == "" && b.Spec.Node == node) {
				held = append(held, fmt.Sprintf("%s (%s)", addrAt(t, b.Spec.CIDR, a.Ordinal), a.Handle))
			}
		}
	}
	_, err := l.Calyx.CalyxV1alpha1().IPAMAffinities().Get(context.Background(), node, metav1.GetOptions{})
	if err == nil {
		held = append(held, "IPAMAffinity "+node)
	} else if !apierrors.IsNotFound(err) {
		t.Fatalf("reading IPAMAffinity %s: %v", node, err)
	}
	return held
}
