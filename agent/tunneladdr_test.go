package agent

import (
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func TestTunnelMove(t *testing.T) {
	pool := func(name, cidr string, mod ...func(*v1alpha1.IPPoolSpec)) *v1alpha1.IPPool {
		p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}}
		for _, m := range mod {
			m(&p.Spec)
		}
		return p
	}
	off := func(s *v1alpha1.IPPoolSpec) { s.Disabled = true }
	podsOnly := func(s *v1alpha1.IPPoolSpec) { s.AllowedUses = []v1alpha1.IPPoolUse{v1alpha1.IPPoolUseWorkload} }
	manual := func(s *v1alpha1.IPPoolSpec) { s.AssignmentMode = v1alpha1.AssignmentManual }
	zoneB := func(s *v1alpha1.IPPoolSpec) {
		s.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"zone": "b"}}
	}
	addr := netip.MustParseAddr("192.168.29.64")
	for _, tc := range []struct {
		name  string
		pools []*v1alpha1.IPPool
		want  string
	}{
		{"its pool is fine", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16"), pool("new", "10.50.0.0/16")}, ""},
		{"disabled, another pool takes over", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", off), pool("new", "10.50.0.0/16")}, "its pool old is disabled"},
		{"disabled, and no pool for tunnels", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", off), pool("new", "10.50.0.0/16", podsOnly)}, ""},
		{"disabled, and the other pool selects other nodes", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", off), pool("new", "10.50.0.0/16", zoneB)}, ""},
		{"pods only now", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", podsOnly), pool("tunnels", "10.99.0.0/24")}, "its pool old no longer allows Tunnel"},
		{"its pool made Manual", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", manual), pool("new", "10.50.0.0/16")}, "its pool old is kept for those who ask (assignmentMode Manual)"},
		{"disabled, and the other pool is Manual", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", off), pool("new", "10.50.0.0/16", manual)}, ""},
		{"deleted", []*v1alpha1.IPPool{pool("new", "10.50.0.0/16")}, "no IPPool holds it any more"},
		{"the most specific pool decides", []*v1alpha1.IPPool{pool("wide", "192.168.0.0/16", off), pool("narrow", "192.168.29.0/24")}, ""},
		{"no longer selected: kept, as blocks are", []*v1alpha1.IPPool{pool("old", "192.168.0.0/16", zoneB), pool("new", "10.50.0.0/16")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tunnelMove(addr, "learn-k8s-2", map[string]string{"zone": "a"}, tc.pools); got != tc.want {
				t.Errorf("tunnelMove = %q, want %q", got, tc.want)
			}
		})
	}
}
