package kernel

import (
	"context"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab"
)

const kernelIP = "10.10.100.210"

// The kernel node joins as any node does, and its agent, asked for auto,
// picks the kernel's ipip device and says why.
func TestKernelNodeJoins(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	log := guestOut(t, l, "grep", "datapath chosen", "/var/log/calyx-agent.log")
	if !strings.Contains(log, "mode=kernel") || !strings.Contains(log, "why=") {
		t.Errorf("the agent on %s did not choose the kernel's datapath, or did not say why:\n%s", lab.KernelNodeName, log)
	}
	t.Logf("%s's agent: %s", lab.KernelNodeName, strings.TrimSpace(log))
	link := guestOut(t, l, "ip", "-d", "link", "show", "tunl0")
	for _, want := range []string{"ipip", "ttl inherit", "nopmtudisc"} {
		if !strings.Contains(link, want) {
			t.Errorf("tunl0 on %s lacks %q:\n%s", lab.KernelNodeName, want, link)
		}
	}
	node, err := l.Kube.CoreV1().Nodes().Get(ctx, lab.KernelNodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Annotations[v1alpha1.AnnotationIPv4Address]; got != kernelIP+"/24" {
		t.Errorf("%s = %q, want %s/24", v1alpha1.AnnotationIPv4Address, got, kernelIP)
	}
	if node.Annotations[v1alpha1.AnnotationTunnelAddress] == "" {
		t.Errorf("no %s on %s", v1alpha1.AnnotationTunnelAddress, lab.KernelNodeName)
	}
	viaKernel := regexp.MustCompile(`192\.168\.\d+\.\d+/26 via ` + regexp.QuoteMeta(kernelIP) + ` dev tunl0 proto calyx onlink`)
	for _, n := range []string{"learn-k8s-2", "learn-k8s-3"} {
		routes, err := l.Client().Output(ctx, n, "ip", "route")
		if err != nil {
			t.Fatal(err)
		}
		if !viaKernel.MatchString(routes) {
			t.Errorf("%s has no route to %s's block through tunl0:\n%s", n, lab.KernelNodeName, routes)
		}
	}
	if routes := guestOut(t, l, "ip", "route"); !strings.Contains(routes, "via 10.10.100.208 dev tunl0 proto calyx onlink") {
		t.Errorf("%s has no route to learn-k8s-2's block through tunl0:\n%s", lab.KernelNodeName, routes)
	}
}

// calyxctl on the kernel node finds the kernel's routes as the datastore
// wants them.
func TestCalyxctlRoutesOnKernelNode(t *testing.T) {
	l := sharedLab(t)
	res, err := l.KernelNode().Guest().Exec(context.Background(), nil, "calyxctl", "routes", "--kubeconfig", "/etc/calyx/kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("calyxctl routes on %s:\n%s%s", lab.KernelNodeName, res.Stdout, res.Stderr)
	if res.Code != 0 || strings.Contains(string(res.Stdout), "missing") {
		t.Errorf("calyxctl routes on %s: exit %d, want 0 and no drift", lab.KernelNodeName, res.Code)
	}
}
