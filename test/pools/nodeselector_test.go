package pools

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab"
)

// Two pools selected by node labels; the default pool keeps the nodes
// without the label (the control plane).
const selectorPools = `apiVersion: calyx.dev/v1alpha1
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 10.50.0.0/16
  blockSize: 26
  nodeSelector:
    matchLabels: {calyx-test/pool: a}
  allowedUses: [Workload]
---
apiVersion: calyx.dev/v1alpha1
kind: IPPool
metadata:
  name: pool-b
spec:
  cidr: 10.60.0.0/16
  blockSize: 26
  nodeSelector:
    matchLabels: {calyx-test/pool: b}
  allowedUses: [Workload]
`

// TestNodeSelectors: learn-k8s-2 labelled for pool-a and learn-k8s-3 for
// pool-b take their blocks from their own pool; every other node routes
// each pool's blocks through tunl0 to the node that has them; pods of the
// two pools talk; calyxctl ipam show says which nodes each pool selects.
// Relabelled, learn-k8s-2 keeps its pool-a block and takes a pool-b one.
func TestNodeSelectors(t *testing.T) {
	l := sharedLab(t)
	apply(t, l, selectorPools)
	label := func(node, value string) {
		kubectl(t, l, "", "label", "node", node, "--overwrite", "calyx-test/pool="+value)
	}
	label(node2, "a")
	label(node3, "b")
	// The default pool gives the labelled nodes nothing new while the test
	// runs: only the pools that select them do.
	kubectl(t, l, "", "patch", "ippool", defaultPool, "--type=merge", "-p",
		`{"spec":{"nodeSelector":{"matchExpressions":[{"key":"calyx-test/pool","operator":"DoesNotExist"}]}}}`)
	t.Cleanup(func() {
		kubectl(t, l, "", "patch", "ippool", defaultPool, "--type=merge", "-p", `{"spec":{"nodeSelector":null}}`)
		for _, n := range []string{node2, node3} {
			kubectl(t, l, "", "label", "node", n, "calyx-test/pool-")
		}
	})

	apply(t, l, podYAML("default", "on-a", node2, "")+"---\n"+podYAML("default", "on-b", node3, ""))
	onA, onB := ready(t, l, "default/on-a"), ready(t, l, "default/on-b")
	blockIn := func(p *lab.PodState, pool, cidr string) string {
		t.Helper()
		b := blockOf(t, l, p.IP)
		if !prefixHas(cidr, p.IP) || b.Spec.Pool != pool || b.Spec.Node != p.Node {
			t.Errorf("%s's %s is in block %s of pool %s on %s; want a block of %s (%s) on %s", p.Key(), p.IP, b.Spec.CIDR, b.Spec.Pool, b.Spec.Node, pool, cidr, p.Node)
		}
		return b.Spec.CIDR
	}
	blockA, blockB := blockIn(onA, "pool-a", "10.50.0.0/16"), blockIn(onB, "pool-b", "10.60.0.0/16")

	// Each block reaches the other nodes through tunl0.
	toA := fmt.Sprintf("%s via %s dev tunl0 proto calyx onlink", blockA, node2IP)
	toB := fmt.Sprintf("%s via %s dev tunl0 proto calyx onlink", blockB, node3IP)
	for node, lines := range map[string][]string{node3: {toA}, node2: {toB}, lab.ControlPlaneNode: {toA, toB}} {
		waitFor(t, 10*time.Second, "the routes of each pool's blocks on "+node, func() (bool, string) {
			r := routes(t, l, node)
			return containsAll(r, lines), r
		})
		t.Logf("ip route on %s has %q", node, lines)
	}
	if out, err := l.Client().Output(t.Context(), "default/on-b", "ping", "-c", "3", "-W", "2", onA.IP); err != nil {
		t.Errorf("pool-b's pod pinging pool-a's: %v\n%s", err, out)
	}

	var u ipam.Usage
	ctlJSON(t, l, &u, "ipam", "show")
	selects := map[string][]string{}
	for _, p := range u.Pools {
		selects[p.Name] = p.Nodes
	}
	for pool, nodes := range map[string][]string{"pool-a": {node2}, "pool-b": {node3}, defaultPool: {lab.ControlPlaneNode}} {
		if !slices.Equal(selects[pool], nodes) {
			t.Errorf("calyxctl ipam show: %s selects %v, want %v", pool, selects[pool], nodes)
		}
	}

	// learn-k8s-2 moves to pool b: its pool-a block stays its own, and its
	// new pod's address comes from a pool-b block of its own.
	label(node2, "b")
	apply(t, l, podYAML("default", "moved", node2, ""))
	moved := ready(t, l, "default/moved")
	if b := blockOf(t, l, moved.IP); b.Spec.Pool != "pool-b" || b.Spec.Node != node2 {
		t.Errorf("after relabelling, %s's new pod got %s in block %s of %s on %s; want a pool-b block of %s", node2, moved.IP, b.Spec.CIDR, b.Spec.Pool, b.Spec.Node, node2)
	}
	if b := blockOf(t, l, onA.IP); b.Spec.Node != node2 {
		t.Errorf("after relabelling, pool-a's block %s is on %q, want it kept by %s", b.Spec.CIDR, b.Spec.Node, node2)
	}
}
