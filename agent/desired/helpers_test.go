package desired

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func service(ns, name, clusterIP, helper string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports},
	}
	if helper != "" {
		s.Annotations = map[string]string{v1alpha1.AnnotationConntrackHelper: helper}
	}
	return s
}

func port(p int32, proto corev1.Protocol, nodePort int32) corev1.ServicePort {
	return corev1.ServicePort{Port: p, Protocol: proto, NodePort: nodePort}
}

func TestHelpers(t *testing.T) {
	tests := []struct {
		name      string
		services  []*corev1.Service
		want      []string
		wantNotes []string
	}{
		{
			name:     "the article's tftp service",
			services: []*corev1.Service{service("default", "tftp-server", "10.96.62.142", "tftp", port(69, corev1.ProtocolUDP, 0))},
			want:     []string{"tftp 10.96.62.142:69/udp (default/tftp-server)"},
		},
		{
			name:     "no annotation, no helper",
			services: []*corev1.Service{service("default", "tftp-server", "10.96.62.142", "", port(69, corev1.ProtocolUDP, 0))},
		},
		{
			name:     "a NodePort matches the node's own addresses",
			services: []*corev1.Service{service("pxe", "tftp", "10.96.0.20", "TFTP", port(69, corev1.ProtocolUDP, 30069))},
			want: []string{
				"tftp local:30069/udp (pxe/tftp)",
				"tftp 10.96.0.20:69/udp (pxe/tftp)",
			},
		},
		{
			name: "ftp takes only the TCP ports, the default protocol included",
			services: []*corev1.Service{service("default", "ftp", "10.96.0.21", "ftp",
				port(21, "", 0), port(21, corev1.ProtocolUDP, 0))},
			want: []string{"ftp 10.96.0.21:21/tcp (default/ftp)"},
		},
		{
			name:      "an unknown helper is a note",
			services:  []*corev1.Service{service("default", "sip", "10.96.0.22", "sip", port(5060, corev1.ProtocolUDP, 0))},
			wantNotes: []string{`service default/sip: calyx.dev/conntrack-helper "sip" is not a helper calyx attaches (tftp, ftp): ignored`},
		},
		{
			name:      "a helper without a port of its protocol is a note",
			services:  []*corev1.Service{service("default", "web", "10.96.0.23", "tftp", port(80, corev1.ProtocolTCP, 0))},
			wantNotes: []string{"service default/web: helper tftp tracks UDP, and the service has no UDP port: nothing attached"},
		},
		{
			name:     "a headless service has no ClusterIP to match",
			services: []*corev1.Service{service("default", "headless", "None", "tftp", port(69, corev1.ProtocolUDP, 0))},
		},
		{
			name: "several services, sorted by address",
			services: []*corev1.Service{
				service("b", "two", "10.96.0.9", "tftp", port(69, corev1.ProtocolUDP, 0)),
				service("a", "one", "10.96.0.8", "tftp", port(6969, corev1.ProtocolUDP, 0), port(69, corev1.ProtocolUDP, 0)),
			},
			want: []string{
				"tftp 10.96.0.8:69/udp (a/one)",
				"tftp 10.96.0.8:6969/udp (a/one)",
				"tftp 10.96.0.9:69/udp (b/two)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Compute(Input{Node: "learn-k8s-3", Services: tt.services})
			var got []string
			for _, h := range st.Firewall.Helpers {
				got = append(got, h.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("helpers (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantNotes, st.Notes); diff != "" {
				t.Errorf("notes (-want +got):\n%s", diff)
			}
		})
	}
}
