//go:build kind

package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kindCluster is Cluster on a kind cluster where test/kind/e2e.sh
// installed calyx: nodes are Docker containers, pods are busybox.
type kindCluster struct {
	name, podImage, tcpdumpImage string
	cfg                          *rest.Config
	kube                         kubernetes.Interface
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// TestOnKind runs the scenarios on the kind cluster CLUSTER (make
// e2e-kind: go test -tags kind ./test/scenario -run TestOnKind).
func TestOnKind(t *testing.T) {
	c := &kindCluster{
		name:         getenv("CLUSTER", "calyx-e2e"),
		podImage:     getenv("POD_IMAGE", "busybox:1.36"),
		tcpdumpImage: getenv("TCPDUMP_IMAGE", "nicolaka/netshoot:v0.13"),
	}
	var err error
	c.cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(),
		&clientcmd.ConfigOverrides{CurrentContext: "kind-" + c.name}).ClientConfig()
	if err != nil {
		t.Fatalf("kubeconfig of kind cluster %s: %v (is it up? kind get clusters)", c.name, err)
	}
	c.kube = kubernetes.NewForConfigOrDie(c.cfg)
	Run(t, c)
}

func (c *kindCluster) Config() *rest.Config { return c.cfg }
func (c *kindCluster) Workers() (server, client string) {
	return c.name + "-worker", c.name + "-worker2"
}

func (c *kindCluster) RunPod(ctx context.Context, name, node string) (netip.Addr, error) {
	pods := c.kube.CoreV1().Pods("default")
	zero := int64(0)
	_, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{Name: "main", Image: c.podImage, Command: []string{"sleep", "3600"}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("creating pod %s: %w", name, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			return netip.ParseAddr(p.Status.PodIP)
		}
		if time.Now().After(deadline) {
			return netip.Addr{}, fmt.Errorf("pod %s not running after 3m: %v %+v", name, err, p.Status)
		}
		time.Sleep(time.Second)
	}
}

func (c *kindCluster) ExecPod(ctx context.Context, pod string, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--context", "kind-" + c.name, "exec", pod, "--"}, argv...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl exec %s -- %s: %w", pod, strings.Join(argv, " "), err)
	}
	return string(out), nil
}

func (c *kindCluster) Routes(ctx context.Context, node string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", "exec", node, "ip", "route").CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker exec %s ip route: %w", node, err)
	}
	return string(out), nil
}

// Capture runs tcpdump in a container sharing the node container's
// network namespace: the node image has no tcpdump.
func (c *kindCluster) Capture(ctx context.Context, node, filter string, count int, during func()) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", "run", "--rm", "--network", "container:"+node,
		"--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", c.tcpdumpImage,
		"timeout", "60", "tcpdump", "-nli", "eth0", "-c", strconv.Itoa(count), filter)
	return CaptureWith(cmd, during)
}
