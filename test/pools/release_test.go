package pools

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/calyxctl"
	"github.com/calyx-net/calyx/lab"
)

// TestReleaseFromReport: the pod of a node that lost power is
// force-deleted, as users do with pods of an unreachable node; its
// address stays allocated (no DEL can run there). calyxctl ipam check -o
// json reports it, and calyxctl ipam release --from-report releases it,
// and nothing else; a second run skips it, saying it is free. --ip refuses
// a live pod's address without --force.
func TestReleaseFromReport(t *testing.T) {
	l := sharedLab(t)
	apply(t, l, podYAML("default", "doomed", node3, "")+"---\n"+podYAML("default", "alive", node2, ""))
	doomed, alive := ready(t, l, "default/doomed"), ready(t, l, "default/alive")

	if err := l.StopNode(node3); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bootAgain(t, l, node3) })
	kubectl(t, l, "", "delete", "pod", "-n", "default", "doomed", "--force", "--grace-period=0")
	if got := allocatedTo(t, l, "default", "doomed"); len(got) != 1 {
		t.Fatalf("the force-deleted pod holds %v, want its one address still allocated", got)
	}

	out, code := ctl(t, l, "ipam", "check", "-o", "json")
	if code != 1 {
		t.Errorf("ipam check exited %d with a leaked address, want 1", code)
	}
	var report []calyxctl.Problem
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("ipam check -o json: %v\n%s", err, out)
	}
	leaks := map[string]bool{}
	for _, p := range report {
		if p.Kind == calyxctl.StalePod || p.Kind == calyxctl.StaleTunnel || p.Kind == calyxctl.StaleSandbox {
			leaks[p.Address] = true
		}
	}
	if !leaks[doomed.IP] {
		t.Fatalf("ipam check does not report %s as leaked: %+v", doomed.IP, report)
	}
	path := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}

	// Exactly the report's leaks, all still leaked: no more.
	var rows []calyxctl.ReleaseRow
	if code := ctlJSON(t, l, &rows, "ipam", "release", "--from-report", path); code != 0 {
		t.Fatalf("ipam release --from-report exited %d", code)
	}
	released := map[string]bool{}
	for _, r := range rows {
		if r.Action == calyxctl.Released {
			released[r.Address] = true
		}
	}
	if diff := cmp.Diff(leaks, released); diff != "" {
		t.Errorf("ipam release --from-report released (-reported leaks +released):\n%s", diff)
	}
	if got := allocatedTo(t, l, "default", "doomed"); len(got) != 0 {
		t.Errorf("the force-deleted pod still holds %v after the release", got)
	}
	ctlJSON(t, l, &rows, "ipam", "release", "--from-report", path)
	for _, r := range rows {
		if r.Address == doomed.IP && (r.Action != calyxctl.Skipped || r.Detail != "the address is free: released since the report") {
			t.Errorf("a second release --from-report did %s %s: %s; want it skipped as free", r.Action, r.Address, r.Detail)
		}
	}

	// A live pod's address is not released without --force.
	if _, code := ctl(t, l, "ipam", "release", "--ip", alive.IP); code != 2 {
		t.Errorf("ipam release --ip %s (a live pod's) exited %d, want 2 (refused)", alive.IP, code)
	}
	if got := allocatedTo(t, l, "default", "alive"); len(got) != 1 {
		t.Errorf("the live pod holds %v after a refused release, want its address", got)
	}
}

// bootAgain starts a node StopNode turned off and waits until it is Ready
// and its calyx-node runs, for the tests after this one.
func bootAgain(t *testing.T, l *lab.Lab, node string) {
	ctx := context.Background()
	if err := l.StartNode(ctx, node); err != nil {
		t.Errorf("booting %s again: %v", node, err)
		return
	}
	waitFor(t, 3*time.Minute, node+" Ready with calyx-node running", func() (bool, string) {
		n, err := l.Kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		ready := slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
			return c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
		})
		ok, why := lab.AgentReady(ctx, node)
		return ready && ok, why
	})
}
