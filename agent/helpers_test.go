package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// TestConntrackHelperService follows a Service's calyx.dev/conntrack-helper
// annotation from the API to the node's nftables table: its ClusterIP and
// NodePort get the helper, and lose it when the Service goes.
func TestConntrackHelperService(t *testing.T) {
	cp := cptest.Start(t)
	c := newCluster(t, cp.Config)
	c.addPool(t, "default", "192.168.0.0/16", v1alpha1.IPIPModeAlways)
	ul := testnet.NewUnderlay(t)
	name := "learn-k8s-2"
	c.addNode(t, name, nodeIPs[name])
	node := ul.AddNode(t, "cx-h2", nodeIPs[name]+"/24")
	a := startAgent(t, cp.Config, node, name, agentOpts{})
	a.waitReady(t, 30*time.Second)

	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "pxe", Annotations: map[string]string{v1alpha1.AnnotationConntrackHelper: "tftp"}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeNodePort, ClusterIP: "10.96.62.142", Selector: map[string]string{"app": "pxe"},
			Ports: []corev1.ServicePort{{Port: 69, Protocol: corev1.ProtocolUDP, NodePort: 30069}},
		},
	}
	if _, err := c.kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	rules := func() []string {
		var out []string
		for _, l := range strings.Split(node.Exec(t, "nft", "list", "table", "ip", "calyx"), "\n") {
			if strings.Contains(l, "ct helper set") {
				l, _, _ = strings.Cut(strings.TrimSpace(l), " comment ")
				out = append(out, l)
			}
		}
		return out
	}
	want := []string{
		`fib daddr type local udp dport 30069 counter packets 0 bytes 0 ct helper set "tftp-udp"`,
		`ip daddr 10.96.62.142 udp dport 69 counter packets 0 bytes 0 ct helper set "tftp-udp"`,
	}
	want = append(want, want...) // prerouting and output
	eventually(t, 5*time.Second, "helper rules", func() error {
		if got := rules(); strings.Join(got, "\n") != strings.Join(want, "\n") {
			return fmt.Errorf("helper rules on %s:\n%s\nwant:\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		return nil
	})
	if err := c.kube.CoreV1().Services("default").Delete(ctx, "pxe", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "helper rules gone", func() error {
		if got := rules(); len(got) > 0 {
			return fmt.Errorf("helper rules left on %s after the Service went:\n%s", name, strings.Join(got, "\n"))
		}
		if out := node.Exec(t, "nft", "list", "ct", "helpers", "table", "ip", "calyx"); strings.Contains(out, "tftp") {
			return fmt.Errorf("ct helper object left:\n%s", out)
		}
		return nil
	})
}
