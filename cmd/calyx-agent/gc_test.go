package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/agent/testnet"
	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestGCFlags runs the real binary with --gc-grace=0s: it wins the lease,
// releases the address of a pod that does not exist, and keeps the one of
// a pod that does and its own tunnel address.
func TestGCFlags(t *testing.T) {
	cp := cptest.Start(t)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	calyx := calyxclient.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	if _, err := calyx.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const name = "learn-k8s-2"
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "alive"},
		Spec:       corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	alloc, err := ipam.NewForConfig(cp.Config, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range []string{"alive", "gone"} {
		if _, err := alloc.AutoAssign(ctx, name, "k8s-pod-network."+pod, ipam.Attrs{Namespace: "default", Pod: pod, ContainerID: pod}); err != nil {
			t.Fatal(err)
		}
	}

	ul := testnet.NewUnderlay(t)
	node := ul.AddNode(t, "cx-gc", "10.10.100.208/24")
	p := startProcess(t, node, name, nodeKubeconfig(t, cp, node), t.TempDir(), "--gc-grace=0s", "--gc-interval=200ms")
	p.waitReady(t, 30*time.Second)

	want := []string{
		`calyx_ipam_gc_leader 1`,
		`calyx_ipam_gc_released_total{reason="pod-gone"} 1`,
	}
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, metrics := get(t, node, "127.0.0.1:9099", "/metrics")
		got = nil
		for _, w := range want {
			if strings.Contains(metrics, w+"\n") {
				got = append(got, w)
			}
		}
		if cmp.Equal(want, got) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after 30s: have %v of %v\nlog:\n%s", got, want, p.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}

	blocks, err := calyx.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			held = append(held, fmt.Sprintf("%s %s", a.Type, a.Handle))
		}
	}
	sort.Strings(held)
	if diff := cmp.Diff([]string{"pod k8s-pod-network.alive", "tunnel tunnel-" + name}, held); diff != "" {
		t.Errorf("allocations after GC (-want +got):\n%s", diff)
	}
	if logs := p.logs.String(); !strings.Contains(logs, `msg="released address"`) || !strings.Contains(logs, "handle=k8s-pod-network.gone reason=pod-gone") {
		t.Errorf("the agent did not log the release:\n%s", logs)
	}
}
