package ipamgc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestShippedRBAC runs the collector as the DaemonSet's account, with
// exactly the rights deploy/parts/20-rbac.yaml grants, through every call
// it makes: the Lease, pods and nodes, and each kind of release and
// deletion. A missing verb fails a pass.
func TestShippedRBAC(t *testing.T) {
	cp := cptest.Start(t)
	ctx := context.Background()
	applyRBAC(t, cp.Config)
	admin := versioned.NewForConfigOrDie(cp.Config)
	adminKube := kubernetes.NewForConfigOrDie(cp.Config)
	if _, err := admin.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "pool"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", BlockSize: 29},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	g := &gcEnv{apiEnv: &apiEnv{kube: adminKube, calyx: admin}, t: t, ipams: map[string]*ipam.IPAM{}}
	g.node("n1")
	g.node("n2")
	g.podAddr("gone", "n1")
	g.tunnelAddr("n2")
	g.deleteNode("n2")
	if _, err := admin.CalyxV1alpha1().IPAMHandles().Create(ctx, &v1alpha1.IPAMHandle{
		ObjectMeta: metav1.ObjectMeta{Name: "stale", Labels: map[string]string{v1alpha1.LabelNode: "n1"}},
		Spec:       v1alpha1.IPAMHandleSpec{Handle: "stale", Block: "10-0-0-248-29"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	sa := rest.CopyConfig(cp.Config)
	sa.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:calyx-node"}
	m := metrics.New(metrics.Sources{})
	ctrl, err := New(Config{
		Enabled: true, Grace: 0, Interval: 100 * time.Millisecond,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond,
	}, "n1", kubernetes.NewForConfigOrDie(sa), versioned.NewForConfigOrDie(sa), m, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); ctrl.Run(rctx) }()
	defer func() { cancel(); <-done }()

	want := []string{
		`calyx_ipam_gc_blocks_deleted_total 1`,
		`calyx_ipam_gc_handles_deleted_total 1`,
		`calyx_ipam_gc_leader 1`,
		`calyx_ipam_gc_passes_total{result="error"} 0`,
		`calyx_ipam_gc_released_total{reason="node-gone"} 1`,
		`calyx_ipam_gc_released_total{reason="pod-gone"} 1`,
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []string
		ok := false
		for _, l := range scrape(t, m) {
			for _, w := range want {
				if l == w {
					got = append(got, l)
				}
			}
			ok = ok || strings.HasPrefix(l, `calyx_ipam_gc_passes_total{result="ok"} `) && !strings.HasSuffix(l, " 0")
		}
		if ok && cmp.Equal(want, got) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("as calyx-node, after 20s (-want +got):\n%s\nall: %v", cmp.Diff(want, got), scrape(t, m))
		}
		time.Sleep(50 * time.Millisecond)
	}
	affs, err := admin.CalyxV1alpha1().IPAMAffinities().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, a := range affs.Items {
		nodes = append(nodes, a.Spec.Node)
	}
	if diff := cmp.Diff([]string{"n1"}, nodes); diff != "" {
		t.Errorf("affinities (-want +got):\n%s", diff)
	}
}

// applyRBAC creates the objects of deploy/parts/20-rbac.yaml.
func applyRBAC(t *testing.T, cfg *rest.Config) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/parts/20-rbac.yaml")
	if err != nil {
		t.Fatalf("reading the shipped RBAC: %v", err)
	}
	dc := dynamic.NewForConfigOrDie(cfg)
	resources := map[string]string{
		"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
		"Role": "roles", "RoleBinding": "rolebindings",
	}
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &obj.Object); err != nil {
			t.Fatal(err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gv, err := schema.ParseGroupVersion(obj.GetAPIVersion())
		if err != nil {
			t.Fatal(err)
		}
		res, ok := resources[obj.GetKind()]
		if !ok {
			t.Fatalf("20-rbac.yaml has a %s, which this test does not know", obj.GetKind())
		}
		var ri dynamic.ResourceInterface = dc.Resource(gv.WithResource(res))
		if ns := obj.GetNamespace(); ns != "" {
			ri = dc.Resource(gv.WithResource(res)).Namespace(ns)
		}
		if _, err := ri.Create(context.Background(), obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}
