package ipam

import (
	"context"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// snapshotCluster answers from fixed pods and nodes, as calyxctl's snapshot
// does.
type snapshotCluster struct {
	pods  map[string]PodInfo // namespace/name
	nodes map[string]bool
}

func (c snapshotCluster) Pod(_ context.Context, ns, name string, _ bool) (PodInfo, bool, error) {
	p, ok := c.pods[ns+"/"+name]
	return p, ok, nil
}

func (c snapshotCluster) Node(_ context.Context, name string, _ bool) (bool, error) {
	return c.nodes[name], nil
}

func TestDryRun(t *testing.T) {
	a := netip.MustParseAddr
	block := func(cidr, node string, allocs ...v1alpha1.Allocation) v1alpha1.IPAMBlock {
		return v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: BlockName(netip.MustParsePrefix(cidr))},
			Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr, Node: node, Pool: "default", Allocations: allocs}}
	}
	podAt := func(o int, sandbox, pod, node string) v1alpha1.Allocation {
		return v1alpha1.Allocation{Ordinal: o, Handle: "k8s-pod-network." + sandbox, Type: v1alpha1.AllocationPod,
			Node: node, Namespace: "default", Pod: pod, ContainerID: sandbox}
	}
	tunnelOf := func(node string) v1alpha1.Allocation {
		return v1alpha1.Allocation{Ordinal: 0, Handle: "tunnel-" + node, Type: v1alpha1.AllocationTunnel, Node: node}
	}
	live := snapshotCluster{
		nodes: map[string]bool{"n1": true, "n2": true},
		pods: map[string]PodInfo{
			"default/a": {Node: "n1", IPs: []netip.Addr{a("10.0.0.2")}},
			"default/b": {Node: "n2"},
		},
	}
	const b1, b2, b9 = "10-0-0-0-26", "10-0-0-64-26", "10-0-9-0-26"

	for _, tc := range []struct {
		name string
		objs GCObjects
		want []Finding
	}{
		{
			name: "a clean cluster",
			objs: GCObjects{Blocks: []v1alpha1.IPAMBlock{
				block("10.0.0.0/26", "n1", tunnelOf("n1"), podAt(2, "a-1", "a", "n1")),
				block("10.0.0.64/26", "n2", tunnelOf("n2"), podAt(1, "b-1", "b", "n2")),
			}},
		},
		{
			name: "a pod deleted without DEL, and one of its name on another node",
			objs: GCObjects{Blocks: []v1alpha1.IPAMBlock{
				block("10.0.0.0/26", "n1", podAt(2, "a-1", "a", "n1"), podAt(3, "gone-1", "gone", "n1"), podAt(4, "b-0", "b", "n1")),
			}},
			want: []Finding{
				{Reason: ReasonPodGone, Block: b1, CIDR: "10.0.0.0/26", Addrs: []netip.Addr{a("10.0.0.4")}, Handle: "k8s-pod-network.b-0", Node: "n1",
					Detail: "pod default/b runs on node n2, not n1: the address was an earlier pod's of that name"},
				{Reason: ReasonPodGone, Block: b1, CIDR: "10.0.0.0/26", Addrs: []netip.Addr{a("10.0.0.3")}, Handle: "k8s-pod-network.gone-1", Node: "n1",
					Detail: "pod default/gone (container gone-1) does not exist"},
			},
		},
		{
			name: "an earlier sandbox of a pod that reports its new address",
			objs: GCObjects{Blocks: []v1alpha1.IPAMBlock{
				block("10.0.0.0/26", "n1", podAt(1, "a-0", "a", "n1"), podAt(2, "a-1", "a", "n1")),
			}},
			want: []Finding{{Reason: ReasonSandboxGone, Block: b1, CIDR: "10.0.0.0/26", Addrs: []netip.Addr{a("10.0.0.1")}, Handle: "k8s-pod-network.a-0", Node: "n1",
				Detail: "pod default/a uses 10.0.0.2 now: this address was an earlier sandbox's (container a-0)"}},
		},
		{
			name: "one sandbox's handle holding the address in use and another: no sandbox-gone, which would release both",
			objs: GCObjects{Blocks: []v1alpha1.IPAMBlock{
				block("10.0.0.0/26", "n1", podAt(2, "a-1", "a", "n1"), podAt(7, "a-1", "a", "n1")),
			}},
			want: []Finding{{Reason: ReasonDuplicateHandle, Block: b1, CIDR: "10.0.0.0/26", Addrs: []netip.Addr{a("10.0.0.2"), a("10.0.0.7")}, Handle: "k8s-pod-network.a-1",
				Detail: "handle holds 2 addresses, want 1"}},
		},
		{
			name: "a deleted node: its addresses, its emptied block and its affinity; a block lent to a live node stays",
			objs: GCObjects{
				Blocks: []v1alpha1.IPAMBlock{
					block("10.0.9.0/26", "gone", tunnelOf("gone"), podAt(1, "x-1", "x", "gone")),
					block("10.0.0.64/26", "gone", podAt(1, "b-1", "b", "n2")), // borrowed by n2
				},
				Affinities: []v1alpha1.IPAMAffinity{{ObjectMeta: metav1.ObjectMeta{Name: "gone"}, Spec: v1alpha1.IPAMAffinitySpec{Node: "gone"}}},
			},
			want: []Finding{
				{Reason: ReasonAffinityOfDeletedNode, Node: "gone", Detail: "IPAMAffinity gone indexes the blocks of node gone, which does not exist"},
				{Reason: ReasonBlockOfDeletedNode, Block: b9, CIDR: "10.0.9.0/26", Node: "gone", Detail: "block is affine to node gone, which does not exist"},
				{Reason: ReasonNodeGone, Block: b9, CIDR: "10.0.9.0/26", Addrs: []netip.Addr{a("10.0.9.1")}, Handle: "k8s-pod-network.x-1", Node: "gone",
					Detail: "address of pod default/x on node gone, which does not exist"},
				{Reason: ReasonNodeGone, Block: b9, CIDR: "10.0.9.0/26", Addrs: []netip.Addr{a("10.0.9.0")}, Handle: "tunnel-gone", Node: "gone",
					Detail: "tunnel address of node gone, which does not exist"},
			},
		},
		{
			name: "a disabled or deleted pool: its empty blocks go, one holding addresses or of an enabled pool stays",
			objs: GCObjects{
				Pools: []v1alpha1.IPPool{
					{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/16", Disabled: true}},
					{ObjectMeta: metav1.ObjectMeta{Name: "new"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/16"}},
				},
				Blocks: []v1alpha1.IPAMBlock{
					block("10.0.0.0/26", "n1", tunnelOf("n1"), podAt(2, "a-1", "a", "n1")),
					block("10.0.0.64/26", "n2"),
					func() v1alpha1.IPAMBlock { b := block("10.1.0.0/26", "n2"); b.Spec.Pool = "new"; return b }(),
					func() v1alpha1.IPAMBlock { b := block("10.0.9.0/26", "n1"); b.Spec.Pool = "deleted"; return b }(),
				},
			},
			want: []Finding{
				{Reason: ReasonBlockOfDeletedPool, Block: b9, CIDR: "10.0.9.0/26", Node: "n1", Detail: "empty block of pool deleted, which no longer exists"},
				{Reason: ReasonBlockOfDisabledPool, Block: b2, CIDR: "10.0.0.64/26", Node: "n2", Detail: "empty block of pool default, which is disabled"},
			},
		},
		{
			name: "a handle with two addresses, and an index entry pointing at nothing",
			objs: GCObjects{
				Blocks: []v1alpha1.IPAMBlock{
					block("10.0.0.64/26", "n2", podAt(1, "b-1", "b", "n2"), podAt(5, "b-1", "b", "n2")),
				},
				Handles: []v1alpha1.IPAMHandle{{ObjectMeta: metav1.ObjectMeta{Name: "h"},
					Spec: v1alpha1.IPAMHandleSpec{Handle: "k8s-pod-network.x", Block: b2, Ordinals: []int{9}}}},
			},
			want: []Finding{
				{Reason: ReasonDanglingHandle, Block: b2, CIDR: "10.0.0.64/26", Ordinals: []int{9}, Handle: "k8s-pod-network.x",
					Detail: "IPAMHandle h points at ordinal 9 of block " + b2 + ", which the handle does not hold"},
				{Reason: ReasonDuplicateHandle, Block: b2, CIDR: "10.0.0.64/26", Addrs: []netip.Addr{a("10.0.0.65"), a("10.0.0.69")}, Handle: "k8s-pod-network.b-1",
					Detail: "handle holds 2 addresses, want 1"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := *tc.objs.deepCopy()
			got, err := DryRun(context.Background(), tc.objs, live)
			if err != nil {
				t.Fatalf("DryRun: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, tc.objs); diff != "" {
				t.Errorf("a dry run changed the objects (-before +after):\n%s", diff)
			}
		})
	}
}

func (o GCObjects) deepCopy() *GCObjects {
	var c GCObjects
	for _, p := range o.Pools {
		c.Pools = append(c.Pools, *p.DeepCopy())
	}
	for _, b := range o.Blocks {
		c.Blocks = append(c.Blocks, *b.DeepCopy())
	}
	for _, h := range o.Handles {
		c.Handles = append(c.Handles, *h.DeepCopy())
	}
	for _, a := range o.Affinities {
		c.Affinities = append(c.Affinities, *a.DeepCopy())
	}
	return &c
}
