package pools

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab"
)

// The pool the cluster migrates to.
const newPool = `apiVersion: calyx.dev/v1alpha1
kind: IPPool
metadata:
  name: pool-new
spec:
  cidr: 10.90.0.0/16
  blockSize: 26
  ipipMode: Always
  natOutgoing: true
`

// TestMigration follows the README's "Migrating from one pool to
// another" on the lab: the default pool is disabled under running pods
// that ping each other, and not a packet is lost; a new pod gets the new
// pool's address and reaches the old ones; every node's tunl0 moves to
// the new pool; the old pool's pods are recreated, and its blocks (and
// their routes) go as they empty, without restarting anything else; then
// the old pool is deleted.
//
// It runs last in the package (its file sorts last; keep it so): it
// leaves the lab without its default pool.
func TestMigration(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	apply(t, l, podYAML("default", "old-a", node2, "")+"---\n"+podYAML("default", "old-b", node3, ""))
	oldB := ready(t, l, "default/old-b")
	ready(t, l, "default/old-a")
	const count = 100
	ping, err := l.Client().Command(ctx, "default/old-a", "ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", oldB.IP)
	if err != nil {
		t.Fatal(err)
	}
	var pingOut strings.Builder
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	// Ours to stop, should the test end before ping does.
	t.Cleanup(func() { ping.Process.Kill() })
	time.Sleep(2 * time.Second) // traffic flows before the change

	// Steps 1 and 2: the new pool, the old one disabled.
	apply(t, l, newPool)
	kubectl(t, l, "", "patch", "ippool", defaultPool, "--type=merge", "-p", `{"spec":{"disabled":true}}`)
	apply(t, l, podYAML("default", "new-b", node3, ""))
	newB := ready(t, l, "default/new-b")
	if !prefixHas("10.90.0.0/16", newB.IP) {
		t.Errorf("a pod created after the old pool was disabled got %s, want an address of pool-new", newB.IP)
	}
	if out, err := l.Client().Output(ctx, "default/old-a", "ping", "-c", "3", "-W", "2", newB.IP); err != nil {
		t.Errorf("an old pool's pod pinging the new pool's: %v\n%s", err, out)
	}
	waitFor(t, time.Minute, "every node's tunl0 in pool-new", func() (bool, string) {
		nodes, err := l.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, n := range nodes.Items {
			if a := n.Annotations[v1alpha1.AnnotationTunnelAddress]; !prefixHas("10.90.0.0/16", a) {
				left = append(left, n.Name+" "+a)
			}
		}
		return len(left) == 0, strings.Join(left, "\n")
	})

	if err := ping.Wait(); err != nil {
		t.Errorf("ping %s from old-a under the change: %v\n%s", oldB.IP, err, pingOut.String())
	}
	if m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`).FindStringSubmatch(pingOut.String()); m == nil || m[2] != fmt.Sprint(count) {
		t.Errorf("traffic between the old pool's pods while it was disabled, want all %d replies:\n%s", count, pingOut.String())
	} else {
		t.Logf("old-a → old-b while the pool was disabled: %s of %s replies", m[2], m[1])
	}

	// Step 3: the old pool's pods are recreated.
	kubectl(t, l, "", "delete", "pod", "-n", "default", "old-a", "old-b", "--wait")
	kubectl(t, l, "", "-n", "kube-system", "rollout", "restart", "deployment/coredns")
	kubectl(t, l, "", "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=2m")

	// Step 4: the garbage collector deletes the old pool's blocks as they
	// empty, and the nodes their routes.
	drained(t, l)

	// Step 5: the old pool goes; pods of the new one talk across nodes.
	kubectl(t, l, "", "delete", "ippool", defaultPool)
	apply(t, l, podYAML("default", "new-a", node2, ""))
	newA := ready(t, l, "default/new-a")
	if out, err := l.Client().Output(ctx, "default/new-a", "ping", "-c", "3", "-W", "2", newB.IP); err != nil || !prefixHas("10.90.0.0/16", newA.IP) {
		t.Errorf("new-a (%s) pinging new-b (%s) after the old pool was deleted: %v\n%s", newA.IP, newB.IP, err, out)
	}
}

// drained waits until the old pool has no block (the garbage collector
// runs a pass a minute) and no node a route to one.
func drained(t *testing.T, l *lab.Lab) {
	t.Helper()
	took := waitFor(t, 4*time.Minute, "the old pool without blocks", func() (bool, string) {
		var u ipam.Usage
		ctlJSON(t, l, &u, "ipam", "show", "--blocks")
		var left []string
		for _, b := range u.Blocks {
			if b.Pool == defaultPool {
				left = append(left, fmt.Sprintf("%s on %s: %d used", b.CIDR, b.Node, b.Used))
			}
		}
		return len(left) == 0, strings.Join(left, "\n")
	})
	t.Logf("the old pool's blocks were gone %s after its pods", took.Round(time.Second))
	for _, node := range []string{node2, node3} {
		waitFor(t, 10*time.Second, "no route to the old pool on "+node, func() (bool, string) {
			r := routes(t, l, node)
			for _, line := range strings.Split(r, "\n") {
				if strings.Contains(line, "192.168.") && strings.Contains(line, "proto calyx") {
					return false, r
				}
			}
			return true, r
		})
	}
}
