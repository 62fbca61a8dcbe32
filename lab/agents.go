package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/deploy"
)

// Where calyx-node's agent serves its endpoints on every node: the
// DaemonSet's CALYX_HEALTH_ADDRESS and CALYX_METRICS_ADDRESS, on the
// node's addresses (host network).
const (
	agentHealthAddr  = "127.0.0.1:9099"
	agentMetricsAddr = "127.0.0.1:9091"
)

// AgentReady asks the node's agent's /readyz, from inside the node.
func AgentReady(ctx context.Context, node string) (bool, string) {
	body, code, err := httpGetIn(ctx, node, "http://"+agentHealthAddr+"/readyz")
	if err != nil {
		return false, err.Error()
	}
	return code == http.StatusOK, strings.TrimSpace(body)
}

// AgentMetrics reads the node's agent's Prometheus metrics.
func AgentMetrics(ctx context.Context, node string) (string, error) {
	body, _, err := httpGetIn(ctx, node, "http://"+agentMetricsAddr+"/metrics")
	return body, err
}

// CalyxNodePod is the name of the calyx-node pod on node, or "" when none
// runs there.
func (c *Client) CalyxNodePod(ctx context.Context, node string) (*corev1.Pod, error) {
	pods, err := c.Kube.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{
		LabelSelector: "k8s-app=calyx-node", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, nil
}

// SignalAgent sends sig to the calyx-agent container's processes on node,
// as a crash (SIGKILL; the kubelet restarts it) or a hang (SIGSTOP, until
// SIGCONT) would do to them.
func (c *Client) SignalAgent(ctx context.Context, node string, sig syscall.Signal) error {
	n, err := c.Node(node)
	if err != nil {
		return err
	}
	pod, err := c.CalyxNodePod(ctx, node)
	if err != nil || pod == nil {
		return fmt.Errorf("no calyx-node pod on %s (%v)", node, err)
	}
	pids, err := n.ContainerPIDs(ctx, "kube-system", pod.Name, "calyx-agent")
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil {
			return fmt.Errorf("signalling calyx-agent (pid %d) on %s: %w", pid, node, err)
		}
	}
	return nil
}

// ExcludeAgent takes calyx-node off node, with no replacement, as between
// the uninstall of one DaemonSet and the install of the next: the
// DaemonSet is deleted with its pods left running (orphaned), and the
// pod on node deleted. IncludeAgent applies deploy/calyx.yaml again; the
// new DaemonSet adopts the other nodes' pods as they are.
func (c *Client) ExcludeAgent(ctx context.Context, node string) error {
	orphan := metav1.DeletePropagationOrphan
	err := c.Kube.AppsV1().DaemonSets("kube-system").Delete(ctx, "calyx-node", metav1.DeleteOptions{PropagationPolicy: &orphan})
	if err != nil {
		return fmt.Errorf("deleting the calyx-node DaemonSet (orphaning its pods): %w", err)
	}
	pod, err := c.CalyxNodePod(ctx, node)
	if err != nil || pod == nil {
		return fmt.Errorf("no calyx-node pod on %s (%v)", node, err)
	}
	if err := c.DelPod(ctx, "kube-system/"+pod.Name); err != nil {
		return err
	}
	return nil
}

// IncludeAgent applies deploy/calyx.yaml again after ExcludeAgent and waits
// until calyx-node runs on every node.
func (c *Client) IncludeAgent(ctx context.Context) error {
	if _, err := c.Kubectl(ctx, bytes.NewReader(deploy.Manifest), "apply", "--server-side", "-f", "-"); err != nil {
		return err
	}
	return c.waitFor(ctx, 2*time.Minute, func() (bool, error) {
		ds, err := c.Kube.AppsV1().DaemonSets("kube-system").Get(ctx, "calyx-node", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		st := ds.Status
		return st.DesiredNumberScheduled > 0 && st.NumberReady == st.DesiredNumberScheduled, nil
	}, "calyx-node is not back on every node")
}

// waitFor polls done every 100 ms until it says so, fails, or timeout.
func (c *Client) waitFor(ctx context.Context, timeout time.Duration, done func() (bool, error), what string) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// httpGetIn makes a GET from inside the named namespace.
func httpGetIn(ctx context.Context, netnsName, url string) (string, int, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := inNetNS(netnsName, func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// KillAgent kills calyx-agent on node with SIGKILL, as a crash or the OOM
// killer would, and waits until the kubelet has restarted the container
// and the agent answers ready again. It returns how long the agent was
// away.
func (c *Client) KillAgent(ctx context.Context, node string) (time.Duration, error) {
	pod, err := c.CalyxNodePod(ctx, node)
	if err != nil || pod == nil {
		return 0, fmt.Errorf("no calyx-node pod on %s (%v)", node, err)
	}
	restarts := agentRestarts(pod)
	begin := time.Now()
	if err := c.SignalAgent(ctx, node, syscall.SIGKILL); err != nil {
		return 0, err
	}
	err = c.waitFor(ctx, time.Minute, func() (bool, error) {
		p, err := c.Kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || agentRestarts(p) == restarts {
			return false, nil
		}
		ready, _ := AgentReady(ctx, node)
		return ready, nil
	}, "the kubelet has not restarted calyx-agent on "+node+" to ready")
	return time.Since(begin), err
}

func agentRestarts(p *corev1.Pod) int32 {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == "calyx-agent" {
			return cs.RestartCount
		}
	}
	return 0
}
