package ipam

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// GCStore is a Store with the deletions only the cluster-wide collector
// makes: nodes never delete blocks or affinities. Every deletion names the
// resourceVersion the collector decided on, so an object that changed in
// between (an address allocated in an empty block, a handle re-indexed by
// a retried ADD) is left alone with a Conflict.
type GCStore interface {
	Store
	ListAffinities(ctx context.Context) ([]v1alpha1.IPAMAffinity, error)
	DeleteBlock(ctx context.Context, name, resourceVersion string) error
	DeleteAffinity(ctx context.Context, name, resourceVersion string) error
	DeleteHandleAt(ctx context.Context, name, resourceVersion string) error
}

// KubeGCStore is the GCStore on the Kubernetes API.
type KubeGCStore struct {
	*KubeStore
}

var _ GCStore = (*KubeGCStore)(nil)

// NewKubeGCStore returns a GCStore that uses cs.
func NewKubeGCStore(cs versioned.Interface) *KubeGCStore {
	return &KubeGCStore{KubeStore: NewKubeStore(cs)}
}

func deleteAt(rv string) metav1.DeleteOptions {
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}}
}

func (s *KubeGCStore) ListAffinities(ctx context.Context) ([]v1alpha1.IPAMAffinity, error) {
	l, err := s.cs.CalyxV1alpha1().IPAMAffinities().List(ctx, listOpts(nil))
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (s *KubeGCStore) DeleteBlock(ctx context.Context, name, rv string) error {
	return s.cs.CalyxV1alpha1().IPAMBlocks().Delete(ctx, name, deleteAt(rv))
}

func (s *KubeGCStore) DeleteAffinity(ctx context.Context, name, rv string) error {
	return s.cs.CalyxV1alpha1().IPAMAffinities().Delete(ctx, name, deleteAt(rv))
}

func (s *KubeGCStore) DeleteHandleAt(ctx context.Context, name, rv string) error {
	return s.cs.CalyxV1alpha1().IPAMHandles().Delete(ctx, name, deleteAt(rv))
}
