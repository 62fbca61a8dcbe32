package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Target resolves NODE or NAMESPACE/NAME to its network namespace.
func (c *Client) Target(target string) (string, error) {
	s, err := ReadState(c.Dir)
	if err != nil {
		return "", err
	}
	if strings.Contains(target, "/") {
		if p, ok := s.Pod(target); ok {
			return p.NetNS, nil
		}
		return "", fmt.Errorf("no pod %s in the lab: `calyx-lab status` lists them", target)
	}
	if n, ok := s.Node(target); ok {
		return n.NetNS, nil
	}
	switch target {
	case "internet", InternetNS:
		return InternetNS, nil
	case "underlay", UnderlayNS:
		return UnderlayNS, nil
	}
	return "", fmt.Errorf("no node %q in the lab: `calyx-lab status` lists them", target)
}

// Command is argv run inside target's network namespace, as
// `ip netns exec` runs it (with /sys of that namespace).
func (c *Client) Command(ctx context.Context, target string, argv ...string) (*exec.Cmd, error) {
	ns, err := c.Target(target)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command to run in %s", target)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...), nil
}

// Output runs argv in target and returns its combined output.
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
