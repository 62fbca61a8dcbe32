package calyxctl

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// leaky is the demo cluster after a force-deleted pod ("other") whose
// node never ran DEL.
func leaky() *Snapshot {
	s := demo()
	s.Pods = s.Pods[:2]
	return s
}

// TestPlanFromReport: a report's leaks are released only while the
// collector's rules still find them leaked, by the same handle; the rest
// is skipped with the reason.
func TestPlanFromReport(t *testing.T) {
	report := CheckIPAM(leaky())
	report = append(report,
		Problem{Kind: OrphanBlock, Block: "192.168.7.0/26", Detail: "block is affine to node gone, which does not exist"},
		Problem{Kind: DuplicateHandle, Address: "192.168.154.195,192.168.154.197", Handle: "k8s-pod-network.tftp-client"},
	)
	rows := func(rs []ReleaseRow) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Action+" "+r.Address+" "+r.Handle+": "+r.Detail)
		}
		return out
	}
	const other = "192.168.154.196 k8s-pod-network.other"
	notAddresses := []string{
		"skipped  : block-of-deleted-node is not a leaked address: the garbage collector deletes it in its next pass",
		"skipped 192.168.154.195,192.168.154.197 k8s-pod-network.tftp-client: duplicate-handle is not a leaked address: the collector leaves it to you: release the address not in use with --ip",
	}
	for _, tc := range []struct {
		name string
		now  func(*Snapshot)
		want string
	}{
		{"still leaked", func(*Snapshot) {}, "released " + other + ": pod default/other (container other-contai) does not exist"},
		{"the pod came back", func(s *Snapshot) {
			s.Pods = append(s.Pods, pod("default", "other", "learn-k8s-3", "192.168.154.196"))
		}, "skipped " + other + ": pod default/other on node learn-k8s-3 (container other-contai) is in use again by the collector's rules: its pod or node exists"},
		{"released since", func(s *Snapshot) {
			s.Blocks[1].Spec.Allocations = s.Blocks[1].Spec.Allocations[:2]
		}, "skipped " + other + ": the address is free: released since the report"},
		{"another pod has it now", func(s *Snapshot) {
			s.Blocks[1].Spec.Allocations[2] = podAlloc(4, "default", "newcomer", "learn-k8s-3")
			s.Pods = append(s.Pods, pod("default", "newcomer", "learn-k8s-3", "192.168.154.196"))
		}, "skipped " + other + ": the address is held by pod default/newcomer on node learn-k8s-3 (container newcomer-con) now, not by k8s-pod-network.other as reported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := leaky()
			tc.now(s)
			want := append([]string{tc.want}, notAddresses...)
			if diff := cmp.Diff(want, rows(PlanFromReport(report, s))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanAddress(t *testing.T) {
	s := leaky()
	a := netip.MustParseAddr
	row, err := PlanAddress(a("192.168.154.196"), false, s)
	if err != nil || row.Action != Released || row.Handle != "k8s-pod-network.other" {
		t.Errorf("a leaked address = %+v, %v; want it released by its handle", row, err)
	}
	_, err = PlanAddress(a("192.168.29.67"), false, s)
	if err == nil || !strings.Contains(err.Error(), "192.168.29.67 is held by pod default/tftp-server on node learn-k8s-2") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("a live pod's address without --force = %v, want a refusal naming the pod and --force", err)
	}
	row, err = PlanAddress(a("192.168.29.67"), true, s)
	if err != nil || row.Action != Released || row.Handle != "k8s-pod-network.tftp-server" {
		t.Errorf("a live pod's address with --force = %+v, %v", row, err)
	}
	if _, err := PlanAddress(a("192.168.29.100"), true, s); err == nil || !strings.Contains(err.Error(), "not allocated") {
		t.Errorf("a free address = %v, want 'not allocated'", err)
	}
}

// TestPoolsTable: ipam show says which nodes each pool selects.
func TestPoolsTable(t *testing.T) {
	pools := []v1alpha1.IPPool{
		{ObjectMeta: metav1.ObjectMeta{Name: "blue"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.50.0.0/16",
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "blue"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "green"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.60.0.0/16",
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "green"}}}},
	}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "learn-k8s-3", Labels: map[string]string{"pool": "blue"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "learn-k8s-2", Labels: map[string]string{"pool": "blue"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "learn-k8s-1"}},
	}
	var u ipam.Usage
	for _, p := range pools {
		u.Pools = append(u.Pools, ipam.PoolUsage{Name: p.Name, CIDR: p.Spec.CIDR, Size: 65536, Free: 65536, NodeSelector: ipam.SelectorString(&p)})
	}
	selectNodes(u.Pools, pools, nodes)
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	usageTable(tw, u, false)
	tw.Flush()
	want := `POOL     CIDR            SIZE   USED  FREE   BLOCKS  SELECTOR    NODES
blue     10.50.0.0/16    65536  0     65536  0       pool=blue   learn-k8s-2,learn-k8s-3
default  192.168.0.0/16  65536  0     65536  0       <all>       learn-k8s-1,learn-k8s-2,learn-k8s-3
green    10.60.0.0/16    65536  0     65536  0       pool=green  -
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
