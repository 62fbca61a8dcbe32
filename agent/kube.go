package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	calyxinformers "github.com/calyx-net/calyx/api/client/informers/externalversions"
	calyxlisters "github.com/calyx-net/calyx/api/client/listers/api/v1alpha1"
)

// clients reach the API server; the listers are filled by informers.
type clients struct {
	kube  kubernetes.Interface
	calyx calyxclient.Interface
	// rc is the configuration they were made from, for clients with other
	// limits (the IPAM socket's).
	rc *rest.Config

	pools  calyxlisters.IPPoolLister
	blocks calyxlisters.IPAMBlockLister
	// blockInformer feeds blocks, for handlers besides the sync's.
	blockInformer cache.SharedIndexInformer
	nodes         corelisters.NodeLister
	// services are read for calyx.dev/conntrack-helper.
	services corelisters.ServiceLister
}

func newClients(rc *rest.Config) (*clients, error) {
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "calyx-agent"
	if rc.Timeout == 0 {
		rc.Timeout = 30 * time.Second
	}
	k, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	c, err := calyxclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating the calyx client: %w", err)
	}
	return &clients{kube: k, calyx: c, rc: rc}, nil
}

// probe asks the API server for its version: it answers when it is
// reachable and our credentials work.
func (c *clients) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.kube.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Error(); err != nil {
		return fmt.Errorf("the API server does not answer: %w; check KUBECONFIG and that kube-apiserver is up", err)
	}
	return nil
}

// startInformers starts the informers on pools, blocks, nodes and
// Services, each change triggering a sync, and waits for their first
// lists.
func (a *Agent) startInformers(ctx context.Context) (stop func(), err error) {
	c := a.kube
	ictx, cancel := context.WithCancel(ctx)
	cf := calyxinformers.NewSharedInformerFactoryWithOptions(c.calyx, 0, calyxinformers.WithTransform(trimCalyxObject))
	kf := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithTransform(trimCoreObject))
	infs := []namedInformer{
		{"ippools.calyx.dev", cf.Calyx().V1alpha1().IPPools().Informer()},
		{"ipamblocks.calyx.dev", cf.Calyx().V1alpha1().IPAMBlocks().Informer()},
		{"nodes", kf.Core().V1().Nodes().Informer()},
		{"services", kf.Core().V1().Services().Informer()},
	}
	if err := a.handleInformers(infs); err != nil {
		cancel()
		return nil, err
	}
	c.pools = cf.Calyx().V1alpha1().IPPools().Lister()
	c.blocks = cf.Calyx().V1alpha1().IPAMBlocks().Lister()
	c.blockInformer = cf.Calyx().V1alpha1().IPAMBlocks().Informer()
	c.nodes = kf.Core().V1().Nodes().Lister()
	c.services = kf.Core().V1().Services().Lister()
	cf.Start(ictx.Done())
	kf.Start(ictx.Done())
	stop = func() {
		cancel()
		cf.Shutdown()
		kf.Shutdown()
	}
	for _, i := range infs {
		if !cache.WaitForCacheSync(ictx.Done(), i.inf.HasSynced) {
			stop()
			return nil, ctx.Err()
		}
	}
	a.check(CheckAPIServer, nil)
	a.log.Info("informers synced", "ippools", len(list(c.pools.List)), "ipamblocks", len(list(c.blocks.List)), "nodes", len(list(c.nodes.List)))
	return stop, nil
}

type namedInformer struct {
	name string
	inf  cache.SharedIndexInformer
}

// handleInformers makes every change an informer sees trigger a sync,
// and a broken watch mark the API server check down, with the reason.
func (a *Agent) handleInformers(infs []namedInformer) error {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.trigger() },
		UpdateFunc: func(_, _ any) { a.trigger() },
		DeleteFunc: func(any) { a.trigger() },
	}
	for _, i := range infs {
		if err := i.inf.SetWatchErrorHandlerWithContext(a.watchBroke(i.name)); err != nil {
			return err
		}
		if _, err := i.inf.AddEventHandler(handler); err != nil {
			return err
		}
	}
	return nil
}

// watchBroke is the watch error handler of the informer on what.
func (a *Agent) watchBroke(what string) cache.WatchErrorHandlerWithContext {
	return func(_ context.Context, _ *cache.Reflector, err error) {
		if apierrors.IsNotFound(err) {
			err = fmt.Errorf("%w: are calyx's CRDs installed (kubectl apply -f deploy/crds)?", err)
		}
		a.check(CheckAPIServer, fmt.Errorf("watching %s: %w", what, err))
		a.trigger()
	}
}

// trimCalyxObject drops managed fields before the cache keeps an object:
// they are a large share of every block (one entry per writer) and nothing
// here reads them; at 5,000 blocks they were a fifth of the agent's memory.
func trimCalyxObject(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// trimCoreObject keeps of a Node its name, labels (the pools'
// nodeSelectors) and annotations, and of a Service what conntrack helpers
// match on: all the agent reads, which keeps the cache small in large
// clusters.
func trimCoreObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: o.Labels, Annotations: o.Annotations,
		}}, nil
	case *corev1.Service:
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: o.Namespace, Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Annotations: o.Annotations,
			},
			Spec: corev1.ServiceSpec{ClusterIP: o.Spec.ClusterIP, ClusterIPs: o.Spec.ClusterIPs, Ports: o.Spec.Ports},
		}, nil
	}
	return obj, nil
}

func list[T any](f func(labels.Selector) ([]T, error)) []T {
	out, _ := f(labels.Everything())
	return out
}

// annotate sets annotations on the node, with a merge patch that leaves
// every other field to its owner.
func (c *clients) annotate(ctx context.Context, node string, ann map[string]string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return err
	}
	_, err = c.kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "calyx-agent"})
	if err != nil {
		return fmt.Errorf("annotating node %s: %w", node, err)
	}
	return nil
}
