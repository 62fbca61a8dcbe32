package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Command is argv run on target:
//   - a node (learn-k8s-2): in the node's network, mount, PID and UTS
//     namespaces, as a shell on that machine would run it (its
//     /etc/cni/net.d, its crictl socket, its `ip route`);
//   - a pod (NAMESPACE/NAME): a program of the host's in the pod's network
//     namespace, as an ephemeral debug container with host tools would
//     (`kubectl exec` runs the pod's own programs: see Exec);
//   - internet, underlay: the lab's other namespaces.
func (c *Client) Command(ctx context.Context, target string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command to run in %s", target)
	}
	switch target {
	case "internet", InternetNS:
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", InternetNS}, argv...)...), nil
	case "underlay", UnderlayNS:
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", UnderlayNS}, argv...)...), nil
	}
	if strings.Contains(target, "/") {
		netns, err := c.PodNetNS(ctx, target)
		if err != nil {
			return nil, err
		}
		return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "--"}, argv...)...), nil
	}
	n, err := c.Node(target)
	if err != nil {
		return nil, err
	}
	return n.Command(ctx, argv...), nil
}

// Output runs argv on target (see Command) and returns its combined
// output.
func (c *Client) Output(ctx context.Context, target string, argv ...string) (string, error) {
	cmd, err := c.Command(ctx, target, argv...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), target, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Exec runs argv in the pod NAMESPACE/NAME's first container with the
// real `kubectl exec`, through the API server and the node's kubelet, and
// returns its standard output.
func (c *Client) Exec(ctx context.Context, pod string, argv ...string) (string, error) {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok {
		return "", fmt.Errorf("%q: give the pod as NAMESPACE/NAME", pod)
	}
	cmd, err := c.KubectlCommand(ctx, append([]string{"exec", "-n", ns, name, "--"}, argv...)...)
	if err != nil {
		return "", err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl exec %s -- %s: %w: %s", pod, strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
