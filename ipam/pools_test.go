package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func testPool(name, cidr string, mod ...func(*v1alpha1.IPPoolSpec)) v1alpha1.IPPool {
	p := v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr, BlockSize: 26}}
	for _, m := range mod {
		m(&p.Spec)
	}
	return p
}

func selecting(key, value string) func(*v1alpha1.IPPoolSpec) {
	return func(s *v1alpha1.IPPoolSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{key: value}}
	}
}

func uses(u ...v1alpha1.IPPoolUse) func(*v1alpha1.IPPoolSpec) {
	return func(s *v1alpha1.IPPoolSpec) { s.AllowedUses = u }
}

func disabled(s *v1alpha1.IPPoolSpec) { s.Disabled = true }

func TestUnusable(t *testing.T) {
	labels := map[string]string{"zone": "a", "kubernetes.io/hostname": "n1"}
	badSelector := func(s *v1alpha1.IPPoolSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "zone", Operator: "Near"}}}
	}
	inZone := func(s *v1alpha1.IPPoolSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "zone", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}}
	}
	for _, tc := range []struct {
		name string
		pool v1alpha1.IPPool
		use  v1alpha1.IPPoolUse
		want string
	}{
		{"every node, both uses", testPool("p", "10.0.0.0/16"), v1alpha1.IPPoolUseWorkload, ""},
		{"empty selector selects every node", testPool("p", "10.0.0.0/16", func(s *v1alpha1.IPPoolSpec) { s.NodeSelector = &metav1.LabelSelector{} }), v1alpha1.IPPoolUseTunnel, ""},
		{"matching labels", testPool("p", "10.0.0.0/16", selecting("zone", "a")), v1alpha1.IPPoolUseWorkload, ""},
		{"matching expression", testPool("p", "10.0.0.0/16", inZone), v1alpha1.IPPoolUseWorkload, ""},
		{"other labels", testPool("p", "10.0.0.0/16", selecting("zone", "b")), v1alpha1.IPPoolUseWorkload, "its nodeSelector zone=b does not select node n1"},
		{"disabled", testPool("p", "10.0.0.0/16", disabled), v1alpha1.IPPoolUseWorkload, "disabled"},
		{"pods only, for a tunnel", testPool("p", "10.0.0.0/16", uses(v1alpha1.IPPoolUseWorkload)), v1alpha1.IPPoolUseTunnel, "allowedUses [Workload] has no Tunnel"},
		{"tunnels only, for a pod", testPool("p", "10.0.0.0/16", uses(v1alpha1.IPPoolUseTunnel)), v1alpha1.IPPoolUseWorkload, "allowedUses [Tunnel] has no Workload"},
		{"invalid selector", testPool("p", "10.0.0.0/16", badSelector), v1alpha1.IPPoolUseWorkload, `pool p has an invalid nodeSelector: "Near" is not a valid label selector operator`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := unusable(&tc.pool, "n1", tc.use, func() (map[string]string, error) { return labels, nil })
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("unusable = %q, want %q", got, tc.want)
			}
		})
	}
	// Labels are read only for a pool with a selector, and their error is
	// the caller's.
	noLabels := func() (map[string]string, error) { return nil, errors.New("agent down") }
	all := testPool("p", "10.0.0.0/16")
	if why, err := unusable(&all, "n1", v1alpha1.IPPoolUseWorkload, noLabels); why != "" || err != nil {
		t.Errorf("a pool for every node read the labels: %q, %v", why, err)
	}
	sel := testPool("p", "10.0.0.0/16", selecting("zone", "a"))
	if _, err := unusable(&sel, "n1", v1alpha1.IPPoolUseWorkload, noLabels); err == nil {
		t.Error("a selector judged without the node's labels")
	}
}

func TestResolvePools(t *testing.T) {
	all := []v1alpha1.IPPool{
		testPool("blue", "10.50.0.0/16"),
		testPool("green", "10.60.0.0/16"),
		testPool("old", "192.168.0.0/16", disabled),
	}
	names := func(ps []v1alpha1.IPPool) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		requested []string
		want      []string
		err       error
		msg       string
	}{
		{"in the order given", []string{"green", "blue"}, []string{"green", "blue"}, nil, ""},
		{"by CIDR", []string{"10.50.0.0/16"}, []string{"blue"}, nil, ""},
		{"twice is once", []string{"blue", "10.50.0.0/16", "green"}, []string{"blue", "green"}, nil, ""},
		{"unknown", []string{"blue", "nope"}, nil, ErrUnknownPool, `unknown IP pool "nope": no IPPool has that name or CIDR (kubectl get ippools)`},
		{"disabled", []string{"old"}, nil, ErrPoolDisabled, "IP pool is disabled: old (192.168.0.0/16) is disabled; ask for an enabled pool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolvePools(all, tc.requested)
			if !errors.Is(err, tc.err) || err != nil && err.Error() != tc.msg {
				t.Fatalf("err = %v, want %q", err, tc.msg)
			}
			if diff := cmp.Diff(tc.want, names(got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoolFor(t *testing.T) {
	all := []v1alpha1.IPPool{testPool("wide", "10.0.0.0/8"), testPool("narrow", "10.50.0.0/16"), testPool("other", "192.168.0.0/16")}
	for addr, want := range map[string]string{"10.50.1.2": "narrow", "10.1.2.3": "wide", "192.168.29.67": "other", "172.16.0.1": ""} {
		p, _, ok := poolFor(all, netip.MustParseAddr(addr))
		got := ""
		if ok {
			got = p.Name
		}
		if got != want {
			t.Errorf("poolFor(%s) = %q, want %q", addr, got, want)
		}
	}
}

func TestAssignAtAndReleaseAt(t *testing.T) {
	a := netip.MustParseAddr
	b := newBlock(netip.MustParsePrefix("10.0.0.0/29"), "pool", "n1")
	pod := v1alpha1.Allocation{Handle: "net.tftp", Type: v1alpha1.AllocationPod, Node: "n1", Namespace: "default", Pod: "tftp-server"}
	if holder, err := assignAt(b, a("10.0.0.5"), pod); holder != nil || err != nil {
		t.Fatalf("assignAt a free address = %v, %v", holder, err)
	}
	if got := allocationsOf(b, "net.tftp"); len(got) != 1 || got[0] != a("10.0.0.5") {
		t.Errorf("the handle holds %v, want [10.0.0.5]", got)
	}
	other := pod
	other.Handle = "net.other"
	holder, err := assignAt(b, a("10.0.0.5"), other)
	if err != nil || holder == nil || holder.Handle != "net.tftp" {
		t.Fatalf("assignAt a taken address = %v, %v; want its holder", holder, err)
	}
	if _, err := assignAt(b, a("10.0.0.9"), other); err == nil {
		t.Error("assignAt an address outside the block succeeded")
	}
	if diff := cmp.Diff(v1alpha1.IPAMBlockStatus{Used: 1, Free: 7}, b.Status); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if got := releaseAt(b, a("10.0.0.5"), "net.other"); got != nil {
		t.Errorf("releaseAt with another handle released %+v", got)
	}
	if got := releaseAt(b, a("10.0.0.5"), "net.tftp"); got == nil || got.Pod != "tftp-server" {
		t.Errorf("releaseAt = %+v, want tftp-server's allocation", got)
	}
	if got := releaseAt(b, a("10.0.0.5"), ""); got != nil {
		t.Errorf("releaseAt a free address released %+v", got)
	}
	if diff := cmp.Diff(v1alpha1.IPAMBlockStatus{Used: 0, Free: 8}, b.Status); diff != "" {
		t.Errorf("counts after release (-want +got):\n%s", diff)
	}
}
