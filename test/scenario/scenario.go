// Package scenario holds calyx's end-to-end scenarios, written once
// against Cluster and run on two implementations: the lab (lab_test.go,
// in make test) and a kind cluster (kind_test.go, build tag kind, run by
// test/kind/e2e.sh for make e2e-kind).
package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
)

// Cluster is what the scenarios need of a cluster that runs calyx.
type Cluster interface {
	// Config reaches the cluster's API server as an admin.
	Config() *rest.Config
	// Workers are two nodes that pods run on.
	Workers() (server, client string)
	// RunPod starts a pod that sleeps on node and returns its IP once
	// it has one.
	RunPod(ctx context.Context, name, node string) (netip.Addr, error)
	// ExecPod runs argv in the pod and returns its output.
	ExecPod(ctx context.Context, pod string, argv ...string) (string, error)
	// Routes is `ip route` on the node, as its admin reads it.
	Routes(ctx context.Context, node string) (string, error)
	// Capture is tcpdump's text of at most count packets matching
	// filter on the node's underlay NIC while during runs.
	Capture(ctx context.Context, node, filter string, count int, during func()) (string, error)
}

// Run runs every scenario on c.
func Run(t *testing.T, c Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	server, client := c.Workers()
	serverIP, err := c.RunPod(ctx, "scenario-server", server)
	if err != nil {
		t.Fatalf("a pod on %s: %v", server, err)
	}
	if _, err := c.RunPod(ctx, "scenario-client", client); err != nil {
		t.Fatalf("a pod on %s: %v", client, err)
	}
	t.Run("node-routes", func(t *testing.T) { NodeRoutes(ctx, t, c, client, server) })
	t.Run("pod-to-pod", func(t *testing.T) {
		out, err := c.ExecPod(ctx, "scenario-client", "ping", "-c", "3", "-W", "2", serverIP.String())
		if err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping from %s to the pod on %s (%s): %v\n%s", client, server, serverIP, err, out)
		}
	})
	t.Run("ipip-on-the-wire", func(t *testing.T) {
		clientIP, err := podIP(ctx, c, "scenario-client")
		if err != nil {
			t.Fatal(err)
		}
		serverNode, err := kubeNode(ctx, c, server)
		if err != nil {
			t.Fatal(err)
		}
		clientNode, err := kubeNode(ctx, c, client)
		if err != nil {
			t.Fatal(err)
		}
		text, err := c.Capture(ctx, server, "ip proto 4 and src host "+clientNode, 2, func() {
			c.ExecPod(ctx, "scenario-client", "ping", "-c", "3", "-W", "2", serverIP.String())
		})
		t.Logf("tcpdump on %s:\n%s", server, text)
		want := fmt.Sprintf("IP %s > %s: IP %s > %s: ICMP echo request", clientNode, serverNode, clientIP, serverIP)
		if err != nil || !strings.Contains(text, want) {
			t.Errorf("on %s's NIC, want %q (err %v):\n%s", server, want, err, text)
		}
	})
}

// podIP is the pod's IP as the API has it.
func podIP(ctx context.Context, c Cluster, name string) (string, error) {
	kube, err := kubernetesFor(c)
	if err != nil {
		return "", err
	}
	p, err := kube.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading pod %s: %w", name, err)
	}
	return p.Status.PodIP, nil
}

// NodeRoutes checks that on node from, every block of node to is routed
// through tunl0 to to's underlay address: `<block> via <to> dev tunl0
// proto calyx onlink`.
func NodeRoutes(ctx context.Context, t *testing.T, c Cluster, from, to string) {
	calyx := calyxclient.NewForConfigOrDie(c.Config())
	node, err := kubeNode(ctx, c, to)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := calyx.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, b := range blocks.Items {
		if b.Spec.Node == to {
			want = append(want, fmt.Sprintf("%s via %s dev tunl0 proto calyx onlink", b.Spec.CIDR, node))
		}
	}
	if len(want) == 0 {
		t.Fatalf("%s has no IPAM block", to)
	}
	var routes string
	deadline := time.Now().Add(30 * time.Second)
	for {
		routes, err = c.Routes(ctx, from)
		missing := 0
		for _, w := range want {
			if !strings.Contains(routes, w) {
				missing++
			}
		}
		if err == nil && missing == 0 {
			t.Logf("on %s: %s", from, strings.Join(want, "; "))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("on %s, want %q in ip route (err %v):\n%s", from, want, err, routes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kubeNode is the node's underlay address, as its agent annotated it.
func kubeNode(ctx context.Context, c Cluster, name string) (string, error) {
	kube, err := kubernetesFor(c)
	if err != nil {
		return "", err
	}
	n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading node %s: %w", name, err)
	}
	addr := n.Annotations["calyx.dev/ipv4-address"]
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return "", fmt.Errorf("node %s: calyx.dev/ipv4-address %q: %w (is calyx-agent running there?)", name, addr, err)
	}
	return p.Addr().String(), nil
}
