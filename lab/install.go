package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// installCalyx does what the README tells users: `kubectl apply -f
// deploy/calyx.yaml` (the very bytes of that file, embedded), then waits
// for calyx-node on every node, the default IPPool, and every node Ready.
func (l *Lab) installCalyx(ctx context.Context) error {
	c := l.Client()
	if _, err := c.Kubectl(ctx, bytes.NewReader(deploy.Manifest), "apply", "--server-side", "-f", "-"); err != nil {
		return err
	}
	if l.opts.Datapath != "" && l.opts.Datapath != "auto" {
		if _, err := c.Kubectl(ctx, nil, "-n", "kube-system", "set", "env", "daemonset/calyx-node", "CALYX_IPIP_DATAPATH="+l.opts.Datapath); err != nil {
			return err
		}
	}
	if err := l.waitDaemonSet(ctx, "kube-system", "calyx-node", 3*time.Minute); err != nil {
		return err
	}
	if err := l.waitJob(ctx, "kube-system", "calyx-ippool-init", 2*time.Minute); err != nil {
		return err
	}
	return l.waitNodesReady(ctx, time.Minute)
}

// waitDaemonSet waits until the DaemonSet's current pods run and are ready
// on every node it wants, as `kubectl rollout status` does.
func (l *Lab) waitDaemonSet(ctx context.Context, ns, name string, timeout time.Duration) error {
	var last string
	return l.poll(ctx, timeout, func() (bool, error) {
		ds, err := l.Kube.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = dsStatus(ds)
		st := ds.Status
		return st.ObservedGeneration >= ds.Generation && st.DesiredNumberScheduled > 0 &&
			st.UpdatedNumberScheduled == st.DesiredNumberScheduled && st.NumberReady == st.DesiredNumberScheduled &&
			st.NumberAvailable == st.DesiredNumberScheduled, nil
	}, func() string {
		return fmt.Sprintf("DaemonSet %s/%s not rolled out (%s): %s", ns, name, last, l.podsProblem(ctx, ns))
	})
}

func dsStatus(ds *appsv1.DaemonSet) string {
	st := ds.Status
	return fmt.Sprintf("%d desired, %d updated, %d ready", st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady)
}

// waitJob waits until the Job has succeeded.
func (l *Lab) waitJob(ctx context.Context, ns, name string, timeout time.Duration) error {
	return l.poll(ctx, timeout, func() (bool, error) {
		j, err := l.Kube.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobComplete && c.Status == "True" {
				return true, nil
			}
		}
		return false, nil
	}, func() string { return fmt.Sprintf("Job %s/%s has not completed: %s", ns, name, l.podsProblem(ctx, ns)) })
}

// waitNodesReady waits until every node reports Ready.
func (l *Lab) waitNodesReady(ctx context.Context, timeout time.Duration) error {
	var notReady []string
	return l.poll(ctx, timeout, func() (bool, error) {
		nodes, err := l.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		notReady = notReady[:0]
		for i := range nodes.Items {
			if !nodeReady(&nodes.Items[i]) {
				notReady = append(notReady, nodes.Items[i].Name)
			}
		}
		return len(nodes.Items) == len(l.opts.nodeNames()) && len(notReady) == 0, nil
	}, func() string { return fmt.Sprintf("nodes not Ready: %v (see each node's kubelet log)", notReady) })
}

// poll calls done every 200 ms until it says so, an error, a node's
// death, or the timeout; why explains a timeout.
func (l *Lab) poll(ctx context.Context, timeout time.Duration, done func() (bool, error), why func() string) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		for name, n := range l.nodes {
			select {
			case <-n.Exited():
				return fmt.Errorf("node %s stopped: see %s and %s", name, n.Log("kubelet"), n.Log("containerd"))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, why())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podsProblem summarises the pods of a namespace that are not running
// well, with the reason the kubelet gives: what a timeout should say.
func (l *Lab) podsProblem(ctx context.Context, ns string) string {
	pods, err := l.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range pods.Items {
		for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			switch {
			case cs.State.Waiting != nil && cs.State.Waiting.Reason != "PodInitializing":
				out = append(out, fmt.Sprintf("%s/%s on %s: %s %s", p.Name, cs.Name, p.Spec.NodeName, cs.State.Waiting.Reason, cs.State.Waiting.Message))
			case cs.State.Terminated != nil && cs.State.Terminated.ExitCode != 0:
				out = append(out, fmt.Sprintf("%s/%s on %s: exited %d", p.Name, cs.Name, p.Spec.NodeName, cs.State.Terminated.ExitCode))
			default:
				continue
			}
			if cs.RestartCount > 0 || cs.State.Terminated != nil {
				out[len(out)-1] += ", its last words: " + l.lastLog(ctx, ns, p.Name, cs.Name)
			}
		}
		if len(p.Status.ContainerStatuses) == 0 && p.Status.Phase == "Pending" {
			out = append(out, fmt.Sprintf("%s on %q: Pending %s", p.Name, p.Spec.NodeName, p.Status.Message))
		}
	}
	if len(out) == 0 {
		return "no pod reports a problem"
	}
	return strings.Join(out, "; ") + " (kubectl describe pod, and the node's kubelet log, say more)"
}

// lastLog is the end of a container's log, from its last run when it is
// restarting, as `kubectl logs --previous --tail 3`.
func (l *Lab) lastLog(ctx context.Context, ns, pod, container string) string {
	tailLines := int64(3)
	for _, previous := range []bool{true, false} {
		b, err := l.Kube.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container, Previous: previous, TailLines: &tailLines}).DoRaw(ctx)
		if err == nil && len(strings.TrimSpace(string(b))) > 0 {
			return strings.TrimSpace(string(b))
		}
	}
	return "(no log)"
}

// kubectlBinary is the kubectl built from the pinned module.
func kubectlBinary(ctx context.Context) (string, error) {
	return kubebin.Ensure(ctx, "kubectl", nil)
}

// hostPackage is a Debian package whose programs the lab's images take
// from the host, with a file that shows it is there.
type hostPackage struct{ pkg, file string }

var hostPackages = []hostPackage{
	{"iptables", "/usr/sbin/xtables-nft-multi"}, // kube-proxy's image
	{"tftpd-hpa", "/usr/sbin/in.tftpd"},         // the toolbox image's TFTP server
}

// e2ePackages are what the e2e tests' agnhost and glibc-dns-testing images
// take from the host.
var e2ePackages = []hostPackage{
	{"curl", "/usr/bin/curl"},
	{"netcat-openbsd", "/bin/nc.openbsd"},
	{"bind9-dnsutils", "/usr/bin/dig"},
}

// kernelNodePackages are what the kernel node takes from the host: qemu,
// and the tools its initramfs carries.
var kernelNodePackages = []hostPackage{
	{"qemu-system-x86", "/usr/bin/qemu-system-x86_64"},
	{"nftables", "/usr/sbin/nft"},
	{"iputils-ping", "/usr/bin/ping"},
}

// checkHostPackages installs, with apt, the packages the lab's images need
// when they are missing (a fresh Debian machine), or says what to install.
func checkHostPackages(progress io.Writer, conformance, kernelNode bool) error {
	pkgs := hostPackages
	if conformance {
		pkgs = append(slices.Clone(pkgs), e2ePackages...)
	}
	if kernelNode {
		pkgs = append(slices.Clone(pkgs), kernelNodePackages...)
	}
	var missing []string
	for _, p := range pkgs {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("the lab's images need %s: install them", strings.Join(missing, ", "))
	}
	fmt.Fprintf(progress, "• installing %s for the lab's images (apt-get; no service is started) …\n", strings.Join(missing, " "))
	// A package's daemon (tftpd-hpa) must not start on the host.
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); err != nil {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s\ninstall %s by hand", strings.Join(args, " "), err, out, strings.Join(missing, " "))
		}
	}
	return nil
}
