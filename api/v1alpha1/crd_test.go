package v1alpha1_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// TestCRDsOnRealAPIServer installs the generated CRDs in a real
// kube-apiserver and checks what a user relies on: objects round-trip, the
// defaults apply, and invalid objects are refused with a reason.
func TestCRDsOnRealAPIServer(t *testing.T) {
	cp := cptest.Start(t)
	cs := versioned.NewForConfigOrDie(cp.Config)
	ctx := context.Background()

	pool := &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", NATOutgoing: true},
	}
	if _, err := cs.CalyxV1alpha1().IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating a valid IPPool: %v", err)
	}
	got, err := cs.CalyxV1alpha1().IPPools().Get(ctx, pool.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantPool := v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways, NATOutgoing: true,
		AllowedUses: []v1alpha1.IPPoolUse{v1alpha1.IPPoolUseWorkload, v1alpha1.IPPoolUseTunnel}, AssignmentMode: v1alpha1.AssignmentAutomatic}
	if diff := cmp.Diff(wantPool, got.Spec); diff != "" {
		t.Errorf("IPPool read back with defaults (-want +got):\n%s", diff)
	}

	block := &v1alpha1.IPAMBlock{
		ObjectMeta: metav1.ObjectMeta{Name: "192-168-29-64-26"},
		Spec: v1alpha1.IPAMBlockSpec{
			CIDR: "192.168.29.64/26", Node: "learn-k8s-2", Pool: pool.Name,
			Allocations: []v1alpha1.Allocation{
				{Ordinal: 0, Handle: "tunnel-learn-k8s-2", Type: v1alpha1.AllocationTunnel, Node: "learn-k8s-2"},
				{Ordinal: 3, Handle: "k8s-pod-network.abc", Type: v1alpha1.AllocationPod, Node: "learn-k8s-2", Namespace: "default", Pod: "tftp-server", ContainerID: "abc"},
			},
		},
		Status: v1alpha1.IPAMBlockStatus{Used: 2, Free: 62},
	}
	if _, err := cs.CalyxV1alpha1().IPAMBlocks().Create(ctx, block, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating a valid IPAMBlock: %v", err)
	}
	gotBlock, err := cs.CalyxV1alpha1().IPAMBlocks().Get(ctx, block.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(block.Spec, gotBlock.Spec); diff != "" {
		t.Errorf("IPAMBlock spec read back (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(block.Status, gotBlock.Status); diff != "" {
		t.Errorf("IPAMBlock status read back (-want +got):\n%s", diff)
	}

	invalid := []struct {
		name    string
		obj     *v1alpha1.IPPool
		message string
	}{
		{"bad cidr", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/33"}}, "cidr must be an IPv4 CIDR"},
		{"not a cidr", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "banana"}}, "cidr must be an IPv4 CIDR"},
		{"ipv6", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "fd00::/64"}}, "cidr must be an IPv4 CIDR"},
		{"host bits set", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.1.0/16"}}, "host bits must be zero"},
		{"blockSize 40", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", BlockSize: 40}}, "spec.blockSize: Invalid value: 40: spec.blockSize in body should be less than or equal to 32"},
		{"blockSize 8", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", BlockSize: 8}}, "should be greater than or equal to 20"},
		{"block larger than pool", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/28", BlockSize: 24}}, "blockSize must not be shorter than the pool's prefix length"},
		{"unknown ipipMode", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", IPIPMode: "Sometimes"}}, `Unsupported value: "Sometimes"`},
		{"unknown use", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", AllowedUses: []v1alpha1.IPPoolUse{"Printer"}}}, `Unsupported value: "Printer"`},
		{"use twice", &v1alpha1.IPPool{Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/8", AllowedUses: []v1alpha1.IPPoolUse{"Tunnel", "Tunnel"}}}, "Duplicate value"},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			tc.obj.Name = "invalid"
			_, err := cs.CalyxV1alpha1().IPPools().Create(ctx, tc.obj, metav1.CreateOptions{})
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want a validation error, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
		})
	}

	t.Run("invalid block", func(t *testing.T) {
		bad := &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: v1alpha1.IPAMBlockSpec{CIDR: "192.168.29.64/40"}}
		if _, err := cs.CalyxV1alpha1().IPAMBlocks().Create(ctx, bad, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
			t.Fatalf("want a validation error for cidr /40, got %v", err)
		}
	})

	t.Run("cidr is immutable", func(t *testing.T) {
		p, err := cs.CalyxV1alpha1().IPPools().Get(ctx, pool.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.CIDR = "10.0.0.0/8"
		_, err = cs.CalyxV1alpha1().IPPools().Update(ctx, p, metav1.UpdateOptions{})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "cidr is immutable") {
			t.Fatalf("want the cidr change refused as immutable, got %v", err)
		}
	})

	t.Run("kubectl shows the printer columns", func(t *testing.T) {
		kubectl, err := kubebin.Ensure(ctx, "kubectl", nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(kubectl, "--kubeconfig", cp.Kubeconfig, "get", "ipamblocks").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl get ipamblocks: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		var rows [][]string
		for _, l := range lines {
			rows = append(rows, strings.Fields(l))
		}
		want := [][]string{
			{"NAME", "CIDR", "NODE", "USED", "FREE", "AGE"},
			{"192-168-29-64-26", "192.168.29.64/26", "learn-k8s-2", "2", "62"},
		}
		if len(rows) == 2 && len(rows[1]) == 6 {
			rows[1] = rows[1][:5] // AGE varies
		}
		if diff := cmp.Diff(want, rows); diff != "" {
			t.Errorf("kubectl get ipamblocks (-want +got):\n%s\nfull output:\n%s", diff, out)
		}
	})
}
