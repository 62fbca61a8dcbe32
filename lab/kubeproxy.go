package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab/kubebin"
)

// Where kube-controller-manager and kube-proxy serve health and metrics,
// inside their node's namespace: the defaults on a real node.
const (
	kubeProxyHealthAddr  = "127.0.0.1:10256"
	kubeProxyMetricsAddr = "127.0.0.1:10249"
	kcmSecurePort        = "10257"
)

// ServiceCIDR is kube-apiserver's --service-cluster-ip-range in the lab.
const ServiceCIDR = "10.96.0.0/12"

// ensureKubeBinaries builds (once, cached) kube-controller-manager and
// kube-proxy from the pinned Kubernetes module, one after the other: each
// build needs gigabytes of memory.
func (l *Lab) ensureKubeBinaries(ctx context.Context) (kcm, proxy string, err error) {
	if kcm, err = kubebin.Ensure(ctx, "kube-controller-manager", l.opts.Progress); err != nil {
		return "", "", err
	}
	if proxy, err = kubebin.Ensure(ctx, "kube-proxy", l.opts.Progress); err != nil {
		return "", "", err
	}
	return kcm, proxy, nil
}

// startControllerManager runs the real kube-controller-manager on the
// control-plane node: its EndpointSlice controller turns Services and
// Ready pods into the EndpointSlices kube-proxy programs.
func (l *Lab) startControllerManager(bin string) error {
	dir := l.nodeDir(ControlPlaneNode)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kube-controller-manager.kubeconfig")
	if err := l.cp.WriteKubeconfig(kubeconfig, l.cp.URL); err != nil {
		return err
	}
	argv := []string{bin,
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + kcmSecurePort,
		"--cert-dir=" + filepath.Join(dir, "kcm-certs"),
		"--leader-elect=false",
		// No cloud and no kubelets: only the controllers a Service needs
		// and those that keep service accounts working.
		"--controllers=endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller",
		"--service-account-private-key-file=" + l.cp.ServiceAccountKeyFile(),
		"--root-ca-file=" + l.cp.CACertFile(),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--cluster-cidr=" + DefaultPoolCIDR,
		"--allocate-node-cidrs=false",
		"--use-service-account-credentials=false",
	}
	p, err := startIn(ControlPlaneNode, argv, nil, filepath.Join(dir, "kube-controller-manager.log"), false)
	if err != nil {
		return err
	}
	l.kubeProcs = append(l.kubeProcs, p)
	l.kcm = p
	return updateState(l.opts.Dir, func(s *State) error {
		s.KubePIDs = append(s.KubePIDs, p.pid())
		return nil
	})
}

// waitControllerManager waits until kube-controller-manager has started
// its EndpointSlice controller, as its log says.
func (l *Lab) waitControllerManager(ctx context.Context, timeout time.Duration) error {
	logPath := filepath.Join(l.nodeDir(ControlPlaneNode), "kube-controller-manager.log")
	deadline := time.Now().Add(timeout)
	for {
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), `"Starting endpoint slice controller"`) {
			return nil
		}
		select {
		case <-l.kcm.exited:
			return fmt.Errorf("kube-controller-manager exited: %s", tail(logPath, 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-controller-manager has not started its EndpointSlice controller after %s: %s", timeout, tail(logPath, 10))
		}
	}
}

// startKubeProxy runs the real kube-proxy in iptables mode, the article's,
// in a worker node's namespace, as its DaemonSet would.
func (l *Lab) startKubeProxy(node, bin string) error {
	dir := l.nodeDir(node)
	kubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := l.cp.WriteKubeconfig(kubeconfig, l.cp.URL); err != nil {
		return err
	}
	argv := []string{bin,
		"--kubeconfig=" + kubeconfig,
		"--proxy-mode=iptables",
		"--hostname-override=" + node,
		"--cluster-cidr=" + DefaultPoolCIDR,
		// The lab's nodes share one kernel: the conntrack table size is
		// the host's business, not a node's.
		"--conntrack-max-per-core=0",
		"--healthz-bind-address=" + kubeProxyHealthAddr,
		"--metrics-bind-address=" + kubeProxyMetricsAddr,
	}
	p, err := startIn(node, argv, nil, filepath.Join(dir, "kube-proxy.log"), false)
	if err != nil {
		return err
	}
	l.kubeProcs = append(l.kubeProcs, p)
	if err := updateState(l.opts.Dir, func(s *State) error {
		s.KubePIDs = append(s.KubePIDs, p.pid())
		return nil
	}); err != nil {
		return err
	}
	return nil
}

// waitKubeProxy waits until kube-proxy on node answers /proxyMode, which
// it does once it has found its Node and programs rules.
func (l *Lab) waitKubeProxy(ctx context.Context, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		body, code, err := httpGetIn(ctx, node, "http://"+kubeProxyMetricsAddr+"/proxyMode")
		if err == nil && code == http.StatusOK {
			if mode := strings.TrimSpace(body); mode != "iptables" {
				return fmt.Errorf("kube-proxy on %s runs in %q mode, want iptables", node, mode)
			}
			return nil
		}
		last = fmt.Sprint(code, err)
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-proxy on %s not serving /proxyMode after %s (%s): %s", node, timeout, last, tail(filepath.Join(l.nodeDir(node), "kube-proxy.log"), 10))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkIptables says what to install when the iptables tools kube-proxy
// runs are missing.
func checkIptables(progress io.Writer) error {
	missing := func() error {
		for _, b := range []string{"iptables", "iptables-save", "iptables-restore"} {
			if _, err := exec.LookPath(b); err != nil {
				return err
			}
		}
		return nil
	}
	if missing() == nil {
		return nil
	}
	// kube-proxy in iptables mode (the article's) needs the commands; a
	// fresh Debian machine lacks them, and the demo must run there.
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("kube-proxy needs the iptables commands: install the iptables package")
	}
	fmt.Fprintln(progress, "• installing the iptables package for kube-proxy (apt-get) …")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "iptables"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s\ninstall the iptables package by hand", strings.Join(args, " "), err, out)
		}
	}
	if err := missing(); err != nil {
		return fmt.Errorf("kube-proxy needs the iptables commands, still missing after installing the package: %w", err)
	}
	return nil
}

// ProxyMode asks kube-proxy on node which mode it runs in, as
// `curl 127.0.0.1:10249/proxyMode` on the node would.
func ProxyMode(ctx context.Context, node string) (string, error) {
	body, _, err := httpGetIn(ctx, node, "http://"+kubeProxyMetricsAddr+"/proxyMode")
	return strings.TrimSpace(body), err
}
