package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/lab"
)

// cniPodLabel marks the Pod objects of the cni part's sandboxes, which
// cniPodSelector finds.
const (
	cniPodLabel    = "calyx.dev/bench"
	cniPodSelector = cniPodLabel + "=cni"
)

// createAPIPods gives each of pods a Pod object, as a kubelet's sandbox
// has: bound to node, but with a node selector no node matches, so the
// kubelet refuses it (phase Failed) and starts no sandbox of its own.
// The agent's informer on the node's pods holds it like a pod the kubelet
// starts, and each pod's UID goes into CNI_ARGS as the runtime's does
// (K8S_POD_UID): the IPAM's annotation reads take the path a real pod
// start takes. It returns once the kubelet has refused every one, so its
// status writes are not inside the measurement.
func createAPIPods(ctx context.Context, c *lab.Client, node string, pods []*benchPod) error {
	if len(pods) == 0 {
		return nil
	}
	ns := pods[0].namespace
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		return err
	}
	kube := c.Kube
	work := make(chan *benchPod)
	errs := make(chan error, len(pods))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				created, err := kube.CoreV1().Pods(ns).Create(ctx, refusedPod(p, node), metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("creating Pod %s/%s: %w", ns, p.name, err)
					continue
				}
				p.uid = string(created.UID)
			}
		}()
	}
	for _, p := range pods {
		work <- p
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	names := map[string]bool{}
	for _, p := range pods {
		names[p.name] = true
	}
	return waitRefused(ctx, kube, ns, names)
}

func refusedPod(p *benchPod, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.namespace, Labels: map[string]string{cniPodLabel: "cni"}},
		Spec: corev1.PodSpec{
			NodeName:     node,
			NodeSelector: map[string]string{cniPodLabel: "no-node-has-this"},
			Containers:   []corev1.Container{{Name: "main", Image: "pause"}},
		},
	}
}

// waitRefused waits until the kubelet has failed every pod named.
func waitRefused(ctx context.Context, kube kubernetes.Interface, ns string, names map[string]bool) error {
	n := len(names)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		list, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: cniPodSelector})
		if err != nil {
			return fmt.Errorf("listing the cni part's pods: %w", err)
		}
		failed := 0
		for _, p := range list.Items {
			if names[p.Name] && p.Status.Phase == corev1.PodFailed {
				failed++
			}
		}
		if failed >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the kubelet refused %d of the cni part's %d pods in 3 minutes: is it running?", failed, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// deleteAPIPods deletes the part's Pod objects.
func deleteAPIPods(ctx context.Context, kube kubernetes.Interface, ns string) error {
	zero := int64(0)
	return kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: cniPodSelector})
}
