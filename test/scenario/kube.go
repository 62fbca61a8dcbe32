package scenario

import "k8s.io/client-go/kubernetes"

func kubernetesFor(c Cluster) (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(c.Config())
}
