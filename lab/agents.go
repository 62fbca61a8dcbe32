package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Where each agent serves its endpoints, inside its node's namespace.
const (
	agentHealthAddr  = "127.0.0.1:9099"
	agentMetricsAddr = "127.0.0.1:9091"
)

// startAgent runs the real calyx-agent in the node's namespace, configured
// as the DaemonSet configures it, with this node's paths.
func (l *Lab) startAgent(node string) error {
	dir := l.nodeDir(node)
	argv := []string{
		filepath.Join(l.opts.BinDir, "calyx-agent"),
		"--node-name=" + node,
		"--kubeconfig=" + filepath.Join(dir, "net.d", "calyx-kubeconfig"),
		"--underlay=interface=^" + NICName + "$",
		"--ipip-datapath=" + l.opts.Datapath,
		"--state-dir=" + filepath.Join(dir, "state"),
		"--ipam-socket=" + filepath.Join(dir, "ipam.sock"),
		// A lab is short-lived: a retired node's addresses are reclaimed
		// within seconds rather than a minute (the grace for pods stays).
		"--gc-interval=5s",
		"--health-address=" + agentHealthAddr,
		"--metrics-address=" + agentMetricsAddr,
	}
	p, err := startIn(node, argv, nil, filepath.Join(dir, "agent.log"), false)
	if err != nil {
		return err
	}
	l.agents[node] = p
	return updateState(l.opts.Dir, func(s *State) error {
		if n, ok := s.Node(node); ok {
			n.AgentPID = p.pid()
		}
		return nil
	})
}

// StopAgent kills a node's agent as a crash would (SIGKILL), leaving what
// it programmed in place.
func (l *Lab) StopAgent(node string) {
	if p := l.agents[node]; p != nil {
		p.kill()
		delete(l.agents, node)
	}
}

// StartAgent starts a node's agent again after StopAgent.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	if err := l.startAgent(node); err != nil {
		return err
	}
	return l.waitAgentReady(ctx, node, 30*time.Second)
}

func (l *Lab) waitAgentsReady(ctx context.Context, timeout time.Duration) error {
	for node := range l.agents {
		if err := l.waitAgentReady(ctx, node, timeout); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) waitAgentReady(ctx context.Context, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, msg := AgentReady(ctx, node)
		if ok {
			return nil
		}
		last = msg
		select {
		case <-l.agents[node].exited:
			return fmt.Errorf("calyx-agent on %s exited: %s", node, tail(filepath.Join(l.nodeDir(node), "agent.log"), 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("calyx-agent on %s not ready after %s (/readyz: %s): %s", node, timeout, last, tail(filepath.Join(l.nodeDir(node), "agent.log"), 10))
		}
	}
}

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

// tail is the end of a log file, for errors that must say why.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "last lines of " + path + ":\n" + strings.Join(lines, "\n")
}
