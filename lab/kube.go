package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab/manifests"
)

// Where kube-proxy serves health and metrics inside its node, as on any
// node (its defaults).
const (
	kubeProxyMetricsAddr = "127.0.0.1:10249"
	kcmSecurePort        = "10257"
	schedulerSecurePort  = "10259"
)

// ServiceCIDR is kube-apiserver's --service-cluster-ip-range in the lab;
// DNSIP the cluster DNS Service's address in it, the tenth, as kubeadm
// picks it.
const (
	ServiceCIDR = "10.96.0.0/12"
	DNSIP       = "10.96.0.10"
)

// startControllers runs kube-scheduler and kube-controller-manager on the
// control-plane node, each with its own identity, as kubeadm does (there
// as static pods; here as processes of the supervisor).
func (l *Lab) startControllers(ctx context.Context) error {
	dir := l.nodeDir(ControlPlaneNode)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	kubeconfig := func(name, user string) (string, error) {
		path := filepath.Join(dir, name+".kubeconfig")
		return path, l.cp.WriteKubeconfigFor(path, l.cp.URL, user)
	}
	schedKC, err := kubeconfig("kube-scheduler", "system:kube-scheduler")
	if err != nil {
		return err
	}
	kcmKC, err := kubeconfig("kube-controller-manager", "system:kube-controller-manager")
	if err != nil {
		return err
	}
	sched := []string{l.kit.scheduler,
		"--kubeconfig=" + schedKC, "--authentication-kubeconfig=" + schedKC, "--authorization-kubeconfig=" + schedKC,
		"--bind-address=127.0.0.1", "--secure-port=" + schedulerSecurePort, "--leader-elect=false",
	}
	kcm := []string{l.kit.controllerManager,
		"--kubeconfig=" + kcmKC, "--authentication-kubeconfig=" + kcmKC, "--authorization-kubeconfig=" + kcmKC,
		"--bind-address=127.0.0.1", "--secure-port=" + kcmSecurePort, "--leader-elect=false",
		"--cert-dir=" + filepath.Join(dir, "kcm-certs"),
		// Every controller a cluster has (Deployment, ReplicaSet,
		// DaemonSet, Job, EndpointSlice, node lifecycle, garbage
		// collector, …), each with its own service account.
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + l.cp.ServiceAccountKeyFile(),
		"--root-ca-file=" + l.cp.CACertFile(),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--cluster-cidr=" + DefaultPoolCIDR,
		// calyx's IPAM gives pods their addresses, not node podCIDRs.
		"--allocate-node-cidrs=false",
	}
	for _, argv := range [][]string{sched, kcm} {
		name := filepath.Base(argv[0])
		name = name[:strings.LastIndex(name, "-v")]
		p, err := startIn(ControlPlaneNode, argv, nil, filepath.Join(dir, name+".log"), false)
		if err != nil {
			return err
		}
		l.kubeProcs = append(l.kubeProcs, p)
		if err := updateState(l.opts.Dir, func(s *State) error { s.KubePIDs = append(s.KubePIDs, p.pid()); return nil }); err != nil {
			return err
		}
	}
	return nil
}

// installKubeProxy applies kubeadm's kube-proxy add-on and waits until
// kube-proxy runs on every node: calyx-node reaches the API server through
// the kubernetes Service, which kube-proxy programs.
func (l *Lab) installKubeProxy(ctx context.Context) error {
	var m bytes.Buffer
	err := manifests.KubeProxy.Execute(&m, map[string]string{
		"APIServer":   fmt.Sprintf("https://%s:%d", firstNodeIP, apiServerPort),
		"Image":       l.kit.kubeProxyImage,
		"ClusterCIDR": DefaultPoolCIDR,
	})
	if err != nil {
		return err
	}
	if _, err := l.Client().Kubectl(ctx, &m, "apply", "-f", "-"); err != nil {
		return err
	}
	return l.waitDaemonSet(ctx, "kube-system", "kube-proxy", 2*time.Minute)
}

// installCoreDNS applies kubeadm's CoreDNS add-on and waits until both
// replicas answer ready: the pods' cluster DNS at DNSIP.
func (l *Lab) installCoreDNS(ctx context.Context) error {
	var m bytes.Buffer
	if err := manifests.CoreDNS.Execute(&m, map[string]string{"DNSIP": DNSIP, "Image": l.kit.coreDNSImage}); err != nil {
		return err
	}
	c := l.Client()
	if _, err := c.Kubectl(ctx, &m, "apply", "-f", "-"); err != nil {
		return err
	}
	if out, err := c.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=2m"); err != nil {
		return fmt.Errorf("%w: %s; %s", err, out, l.podsProblem(ctx, "kube-system"))
	}
	return nil
}

// Kubectl runs the real kubectl against the lab, with stdin (if any), and
// returns its output.
func (c *Client) Kubectl(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd, err := c.KubectlCommand(ctx, args...)
	if err != nil {
		return "", err
	}
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// KubectlCommand is the real kubectl (built from the pinned module) with
// the lab's admin kubeconfig.
func (c *Client) KubectlCommand(ctx context.Context, args ...string) (*exec.Cmd, error) {
	s, err := ReadState(c.Dir)
	if err != nil {
		return nil, err
	}
	bin, err := kubectlBinary(ctx)
	if err != nil {
		return nil, err
	}
	return exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", s.Kubeconfig}, args...)...), nil
}

// ProxyMode asks kube-proxy on node which mode it runs in, as
// `curl 127.0.0.1:10249/proxyMode` on the node would.
func ProxyMode(ctx context.Context, node string) (string, error) {
	body, code, err := httpGetIn(ctx, node, "http://"+kubeProxyMetricsAddr+"/proxyMode")
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/proxyMode: HTTP %d", code)
	}
	return strings.TrimSpace(body), err
}
