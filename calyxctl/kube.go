// Package calyxctl is the logic of the calyxctl command: it reads the
// cluster's IPAM, nodes and pods from the Kubernetes API, compares the
// routes the datastore implies with the kernel's, and draws the path a
// packet takes between two pods. cmd/calyxctl only parses flags.
package calyxctl

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// LoadConfig finds a kubeconfig the way kubectl does: the explicit path,
// else $KUBECONFIG (a list of files, merged), else ~/.kube/config.
func LoadConfig(path, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	overrides := &clientcmd.ConfigOverrides{CurrentContext: context}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w (pass --kubeconfig, set KUBECONFIG, or write ~/.kube/config)", err)
	}
	return cfg, nil
}

// Clients are the API clients the commands use.
type Clients struct {
	Config *rest.Config
	Kube   kubernetes.Interface
	Calyx  versioned.Interface
}

// NewClients connects to the API server of cfg.
func NewClients(cfg *rest.Config) (*Clients, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the calyx client: %w", err)
	}
	return &Clients{Config: cfg, Kube: kube, Calyx: cs}, nil
}

// Snapshot is every object the commands read, fetched once so that a
// command's view is consistent enough and its logic is pure.
type Snapshot struct {
	Pools      []*v1alpha1.IPPool
	Blocks     []*v1alpha1.IPAMBlock
	Affinities []*v1alpha1.IPAMAffinity
	Handles    []*v1alpha1.IPAMHandle
	Nodes      []*corev1.Node
	Pods       []*corev1.Pod
}

// Read lists pools, blocks, affinities, handles, nodes and (when pods is
// true) every pod.
func (c *Clients) Read(ctx context.Context, pods bool) (*Snapshot, error) {
	var s Snapshot
	api := c.Calyx.CalyxV1alpha1()
	hint := "(is the API server reachable, and are calyx's CRDs installed? kubectl get crd | grep calyx.dev)"
	pl, err := api.IPPools().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPPools: %w %s", err, hint)
	}
	for i := range pl.Items {
		s.Pools = append(s.Pools, &pl.Items[i])
	}
	bl, err := api.IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAMBlocks: %w %s", err, hint)
	}
	for i := range bl.Items {
		s.Blocks = append(s.Blocks, &bl.Items[i])
	}
	al, err := api.IPAMAffinities().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAMAffinities: %w %s", err, hint)
	}
	for i := range al.Items {
		s.Affinities = append(s.Affinities, &al.Items[i])
	}
	hl, err := api.IPAMHandles().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing IPAMHandles: %w %s", err, hint)
	}
	for i := range hl.Items {
		s.Handles = append(s.Handles, &hl.Items[i])
	}
	nl, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Nodes: %w (calyxctl needs get/list on nodes)", err)
	}
	for i := range nl.Items {
		s.Nodes = append(s.Nodes, &nl.Items[i])
	}
	if pods {
		pl, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing Pods: %w (calyxctl needs list on pods in all namespaces)", err)
		}
		for i := range pl.Items {
			s.Pods = append(s.Pods, &pl.Items[i])
		}
	}
	return &s, nil
}
