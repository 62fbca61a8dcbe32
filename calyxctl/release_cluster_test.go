package calyxctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/calyxctl"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestReleaseOnAPIServer: ipam check's JSON report of a force-deleted
// pod's address, then ipam release --from-report, on a real API server;
// and --ip, which refuses a live pod's address without --force.
func TestReleaseOnAPIServer(t *testing.T) {
	cp := cptest.Start(t)
	c, err := calyxctl.NewClients(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16"}}
	if _, err := c.Calyx.CalyxV1alpha1().IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kube.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	live := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "live"},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "main", Image: "toolbox"}}}}
	if _, err := c.Kube.CoreV1().Pods("default").Create(ctx, live, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := ipam.New(ipam.NewKubeStore(c.Calyx), ipam.Options{})
	addrs := map[string]netip.Addr{}
	for _, name := range []string{"live", "gone"} {
		a, err := m.AutoAssign(ctx, "n1", "k8s-pod-network."+name, ipam.Attrs{Namespace: "default", Pod: name, ContainerID: name})
		if err != nil {
			t.Fatal(err)
		}
		addrs[name] = a.Addr
	}

	var report bytes.Buffer
	if _, err := calyxctl.IPAMCheck(ctx, c, &report, calyxctl.JSON); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(path, report.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	release := func(ip netip.Addr, force bool, report string) ([]calyxctl.ReleaseRow, error) {
		var out bytes.Buffer
		err := calyxctl.IPAMRelease(ctx, c, &out, calyxctl.JSON, ip, force, report)
		var rows []calyxctl.ReleaseRow
		if err == nil {
			if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
				t.Fatalf("%v:\n%s", err, out.String())
			}
		}
		return rows, err
	}
	rows, err := release(netip.Addr{}, false, path)
	if err != nil {
		t.Fatal(err)
	}
	want := []calyxctl.ReleaseRow{{Address: addrs["gone"].String(), Handle: "k8s-pod-network.gone", Action: calyxctl.Released, Detail: "pod default/gone (container gone) does not exist"}}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("release --from-report (-want +got):\n%s", diff)
	}
	// Again: nothing left of what it listed.
	rows, err = release(netip.Addr{}, false, path)
	if err != nil || len(rows) != 1 || rows[0].Action != calyxctl.Skipped || !strings.Contains(rows[0].Detail, "the address is free") {
		t.Errorf("a second release --from-report = %+v, %v; want the address skipped as free", rows, err)
	}

	if _, err := release(addrs["live"], false, ""); err == nil || !strings.Contains(err.Error(), "pass --force") {
		t.Errorf("release --ip of a live pod's address = %v, want a refusal", err)
	}
	if rows, err := release(addrs["live"], true, ""); err != nil || len(rows) != 1 || rows[0].Action != calyxctl.Released {
		t.Errorf("release --ip --force = %+v, %v", rows, err)
	}
	u, err := m.Usage(ctx)
	if err != nil || len(u.Pools) != 1 || u.Pools[0].Used != 0 {
		t.Errorf("usage after the releases = %+v, %v; want nothing used", u, err)
	}
}
