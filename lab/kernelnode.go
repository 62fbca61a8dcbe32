package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"github.com/calyx-net/calyx/agent/nsexec"
	cniplugin "github.com/calyx-net/calyx/cni-plugin"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/lab/debpkg"
	"github.com/calyx-net/calyx/lab/images"
	"github.com/calyx-net/calyx/lab/vmnode"
)

// KernelNodeName is the lab's node with a kernel of its own (Options.
// KernelNode), at .210: a qemu guest running Debian's cloud kernel, where
// calyx-agent --ipip-datapath auto picks the kernel's ipip device.
const KernelNodeName = "learn-k8s-4"

// KernelNode is the running machine; pods there are network namespaces
// wired by the real calyx plugin (no kubelet: emulation is slow).
type KernelNode struct {
	*vmnode.VM
}

// kernelNodePod is the guest's way to make a pod: a network namespace and
// CNI ADD (DEL) by the calyx plugin, as a runtime would. iproute2's ip by
// its path: busybox's sh would run its own ip applet, which has no netns.
const kernelNodePod = `#!/bin/sh
# pod add|del NAME: a pod's network namespace, wired by calyx as a runtime would.
set -e
export CNI_CONTAINERID=$(echo -n "$2" | sha256sum | cut -c1-64) CNI_NETNS=/run/netns/$2 CNI_IFNAME=eth0
export CNI_PATH=/opt/cni/bin CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=kernel;K8S_POD_NAME=$2"
case "$1" in
add) /usr/sbin/ip netns add "$2"; /usr/sbin/ip -n "$2" link set lo up; CNI_COMMAND=ADD /opt/cni/bin/calyx < /etc/cni/calyx.conf ;;
del) CNI_COMMAND=DEL /opt/cni/bin/calyx < /etc/cni/calyx.conf; /usr/sbin/ip netns del "$2" ;;
esac
`

// kernelNodeInit runs calyx-agent as the DaemonSet would, restarted when
// it ends, with the kernel's datapath left to auto.
const kernelNodeInit = `mkdir -p /var/lib/calyx /run/calyx /etc/iproute2/rt_protos.d
(while :; do
	calyx-agent --node-name={{NAME}} --kubeconfig=/etc/calyx/kubeconfig --underlay='interface=^ens160$' \
		--ipip-datapath=auto --health-address=:9099 --metrics-address=:9091 >> /var/log/calyx-agent.log 2>&1
	echo "calyx-agent exited: $?" >> /var/log/calyx-agent.log
	sleep 1
done) &
`

// startKernelNode registers the Node, boots the machine and waits until
// its agent is ready.
func (l *Lab) startKernelNode(ctx context.Context) error {
	ip := nodeIP(len(l.opts.nodeNames()))
	if err := l.registerKernelNode(ctx, ip); err != nil {
		return err
	}
	files, err := l.kernelNodeFiles(ctx)
	if err != nil {
		return err
	}
	vm, err := vmnode.Start(ctx, vmnode.Config{
		Name: KernelNodeName, IP: ip, Gateway: RouterIP,
		UnderlayNS: nsexec.NamedPath(UnderlayNS), Bridge: bridgeName, Dir: l.nodeDir(KernelNodeName),
		Kernel: l.kit.kernel, Modules: l.kit.modules, Busybox: l.kit.busybox,
		Files: files, Init: strings.ReplaceAll(kernelNodeInit, "{{NAME}}", KernelNodeName),
	})
	if err != nil {
		return err
	}
	l.kernelNode = &KernelNode{VM: vm}
	if err := updateState(l.opts.Dir, func(s *State) error { s.KubePIDs = append(s.KubePIDs, vm.PID()); return nil }); err != nil {
		return err
	}
	return l.kernelNode.waitAgent(ctx, 2*time.Minute)
}

// KernelNode is the lab's node with a kernel of its own, nil without
// Options.KernelNode.
func (l *Lab) KernelNode() *KernelNode { return l.kernelNode }

// registerKernelNode writes its Node object, as a kubelet would: the
// agent in the guest annotates it.
func (l *Lab) registerKernelNode(ctx context.Context, ip netip.Addr) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: KernelNodeName, Labels: map[string]string{
		"kubernetes.io/hostname": KernelNodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}}}
	nodes := l.Kube.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating Node %s: %w", KernelNodeName, err)
	}
	// Controllers (node lifecycle, calyx's IPAM) write the new Node too.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(ctx, KernelNodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: KernelNodeName}}
		_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("writing Node %s's addresses: %w", KernelNodeName, err)
	}
	return nil
}

// kernelNodeFiles are what the guest needs besides busybox and modules:
// calyx's binaries, the host's iproute2, ping, nft and tftpd-hpa with
// their libraries, the agent's credential and the pods' CNI config.
func (l *Lab) kernelNodeFiles(ctx context.Context) ([]images.File, error) {
	bin := func(name string) string { return filepath.Join(l.opts.BinDir, name) }
	files := []images.File{
		{Path: "usr/local/bin/calyx-agent", Source: bin("calyx-agent"), Mode: 0o755},
		{Path: "usr/local/bin/calyxctl", Source: bin("calyxctl"), Mode: 0o755},
		{Path: "usr/local/bin/calyx-guest", Source: bin("calyx-guest"), Mode: 0o755},
		{Path: "opt/cni/bin/calyx", Source: bin("calyx"), Mode: 0o755},
		{Path: "opt/cni/bin/calyx-ipam", Source: bin("calyx-ipam"), Mode: 0o755},
		{Path: "opt/cni/bin/loopback", Source: bin("loopback"), Mode: 0o755},
		{Path: "usr/local/bin/pod", Data: []byte(kernelNodePod), Mode: 0o755},
		{Path: "srv/tftp/" + DemoFile, Data: DemoContent()},
		{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{Path: "etc/nsswitch.conf", Data: []byte("passwd: files\ngroup: files\nhosts: files dns\n")},
	}
	tools, err := images.WithLibraries("/usr/sbin/ip", "/usr/bin/ping", "/usr/sbin/nft", "/usr/sbin/in.tftpd")
	if err != nil {
		return nil, fmt.Errorf("the kernel node's tools (iproute2, iputils-ping, nftables, tftpd-hpa): %w", err)
	}
	files = append(files, tools...)
	kc, err := l.agentKubeconfig(ctx)
	if err != nil {
		return nil, err
	}
	conf, err := kernelNodeCNIConf()
	if err != nil {
		return nil, err
	}
	return append(files,
		images.File{Path: "etc/calyx/kubeconfig", Data: kc, Mode: 0o600},
		images.File{Path: "etc/cni/calyx.conf", Data: conf},
	), nil
}

// agentKubeconfig is a kubeconfig of calyx-node's service account, as the
// DaemonSet's pods have it, with a token of a day.
func (l *Lab) agentKubeconfig(ctx context.Context) ([]byte, error) {
	secs := int64(24 * 3600)
	tok, err := l.Kube.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "calyx-node",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("a token for calyx-node (is deploy/calyx.yaml applied?): %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: fmt.Sprintf("https://%s:%d", firstNodeIP, apiServerPort), CertificateAuthorityData: l.cp.CA()}
	cfg.AuthInfos["calyx-node"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "calyx-node"}
	cfg.CurrentContext = "lab"
	return clientcmd.Write(*cfg)
}

// kernelNodeCNIConf is the shipped conflist's calyx entry, as libcni hands
// it to the plugin, with the paths a node has.
func kernelNodeCNIConf() ([]byte, error) {
	entry, err := deploy.CalyxEntry()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(entry, &m); err != nil {
		return nil, err
	}
	m["ipam"].(map[string]any)["kubeconfig"] = "/etc/calyx/kubeconfig"
	return json.Marshal(m)
}

// waitAgent waits for the guest's agent: its /readyz, and its address on
// the Node.
func (k *KernelNode) waitAgent(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := k.Guest().Output(ctx, "wget", "-q", "-O", "-", "http://127.0.0.1:9099/readyz")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := k.Guest().Output(ctx, "tail", "-n", "20", "/var/log/calyx-agent.log")
			return fmt.Errorf("calyx-agent on %s not ready after %s (%v %s): its log:\n%s", KernelNodeName, timeout, err, out, log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// KernelPod is a pod of the kernel node.
type KernelPod struct {
	Name, IP, HostIface string
}

// AddPod makes a pod on the kernel node: a network namespace wired by the
// calyx plugin through CNI ADD, and returns it.
func (k *KernelNode) AddPod(ctx context.Context, name string) (*KernelPod, error) {
	out, err := k.Guest().Output(ctx, "pod", "add", name)
	if err != nil {
		return nil, fmt.Errorf("a pod on %s: %w", KernelNodeName, err)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("the calyx plugin's result on %s: %v: %s", KernelNodeName, err, out)
	}
	ip, _, _ := strings.Cut(res.IPs[0].Address, "/")
	return &KernelPod{Name: name, IP: ip,
		HostIface: cniplugin.HostVethName("cali", cniplugin.PodArgs{Namespace: "kernel", Name: name}, "")}, nil
}

// DelPod runs CNI DEL for the pod and removes its namespace.
func (k *KernelNode) DelPod(ctx context.Context, name string) error {
	_, err := k.Guest().Output(ctx, "pod", "del", name)
	return err
}

// kernelPackage is Debian's cloud kernel package that the metapackage
// linux-image-cloud-amd64 names now, updating apt's lists once if they name
// none (a fresh machine).
func kernelPackage(ctx context.Context) (string, error) {
	for attempt := 0; ; attempt++ {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-cloud-amd64").Output()
		if err == nil {
			for _, line := range strings.Split(string(out), "\n") {
				if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
					return dep, nil
				}
			}
		}
		if attempt == 1 {
			return "", fmt.Errorf("apt-cache depends linux-image-cloud-amd64 names no kernel package (%v): the kernel node takes Debian's cloud kernel; is Debian's main archive configured?", err)
		}
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get update (to find Debian's cloud kernel): %w\n%s", err, out)
		}
	}
}

// prepareKernel fetches the kernel package and finds its vmlinuz and
// modules.
func (l *Lab) prepareKernel(ctx context.Context, k *kit) error {
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return err
	}
	dir, err := debpkg.Ensure(ctx, pkg, l.opts.Progress)
	if err != nil {
		return err
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	k.kernel = filepath.Join(dir, "boot", "vmlinuz-"+version)
	k.modules = filepath.Join(dir, "lib", "modules", version)
	return nil
}
