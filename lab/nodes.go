package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/cgroups"
	"github.com/calyx-net/calyx/lab/node"
)

// controlPlaneTaint keeps ordinary pods off the control plane, as kubeadm
// does; DaemonSets that tolerate everything (calyx-node, kube-proxy) run
// there too.
const controlPlaneTaint = "node-role.kubernetes.io/control-plane:NoSchedule"

// startNodes starts every node's containerd and kubelet, side by side, and
// imports the images into each: the nodes then register themselves.
func (l *Lab) startNodes(ctx context.Context) error {
	hs, err := cgroups.Hierarchies()
	if err != nil {
		return err
	}
	base, err := cgroups.Base(hs)
	if err != nil {
		return err
	}
	root := filepath.Join(base, "calyx-lab")
	err = updateState(l.opts.Dir, func(s *State) error {
		s.Cgroup, s.Hierarchies = root, hs
		for _, n := range l.opts.nodeNames() {
			created, err := cgroups.Create(hs, filepath.Join(root, n, "system"))
			s.CgroupsCreated = append(s.CgroupsCreated, created...)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	nodes := make([]*node.Node, len(l.opts.nodeNames()))
	g, gctx := errgroup.WithContext(ctx)
	for i, name := range l.opts.nodeNames() {
		cfg, err := l.nodeConfig(i, name, hs, filepath.Join(root, name))
		if err != nil {
			return err
		}
		g.Go(func() error {
			n, err := node.Start(gctx, cfg)
			if err != nil {
				return err
			}
			nodes[i] = n
			return n.ImportImages(gctx, l.kit.images...)
		})
	}
	err = g.Wait()
	for _, n := range nodes {
		if n != nil {
			l.nodes[n.Name] = n
		}
	}
	if err := l.recordInits(); err != nil {
		return err
	}
	if err != nil {
		return err
	}
	return l.waitRegistered(ctx, 60*time.Second)
}

// nodeConfig is node i's configuration, with a kubelet credential issued
// for it.
func (l *Lab) nodeConfig(i int, name string, hs []string, cgroup string) (node.Config, error) {
	cert, key, err := l.cp.IssueClientCert("system:node:"+name, "system:nodes")
	if err != nil {
		return node.Config{}, err
	}
	r := l.opts.runtime(i)
	cfg := node.Config{
		Name: name, IP: nodeIP(i), NetNS: nsexec.NamedPath(name), Dir: l.nodeDir(name),
		Runtime: r, RuntimeDir: l.kit.runtimes[r], Runc: l.kit.runc, Kubelet: l.kit.kubelet,
		Init:      []string{filepath.Join(l.opts.BinDir, "calyx-lab"), "node-init"},
		APIServer: fmt.Sprintf("https://%s:%d", firstNodeIP, apiServerPort),
		CA:        l.cp.CA(), ClientCert: cert, ClientKey: key,
		Hierarchies: hs, CgroupRoot: cgroup, RefCNI: l.opts.ReferenceCNI, ClusterDNS: DNSIP,
	}
	if name == ControlPlaneNode {
		cfg.KubeletArgs = append(cfg.KubeletArgs, "--register-with-taints="+controlPlaneTaint)
	}
	return cfg, nil
}

// recordInits writes the nodes' init PIDs into the state, for commands run
// from other processes and for down.
func (l *Lab) recordInits() error {
	return updateState(l.opts.Dir, func(s *State) error {
		for i := range s.Nodes {
			if n, ok := l.nodes[s.Nodes[i].Name]; ok {
				s.Nodes[i].InitPID = n.InitPID()
			}
		}
		return nil
	})
}

// waitRegistered waits until every kubelet has registered its Node, and
// labels the control plane as kubeadm does (NodeRestriction keeps a kubelet
// from giving itself a node-role label).
func (l *Lab) waitRegistered(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, name := range l.opts.nodeNames() {
		for {
			_, err := l.Kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the kubelet of %s has not registered its Node after %s: %w; its log is %s", name, timeout, err, l.nodes[name].Log("kubelet"))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-l.nodes[name].Exited():
				return fmt.Errorf("node %s stopped: see %s and %s", name, l.nodes[name].Log("kubelet"), l.nodes[name].Log("containerd"))
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)
	if _, err := l.Kube.CoreV1().Nodes().Patch(ctx, ControlPlaneNode, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling %s as the control plane: %w", ControlPlaneNode, err)
	}
	return nil
}

// nodeReady says whether the Node's Ready condition is True.
func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
