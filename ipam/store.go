package ipam

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Store is the datastore the allocator needs. Gets are cheap and always
// current. Lists may be slightly stale: the allocator lists only on its
// slow paths (claiming a block, borrowing, GC) and confirms every decision
// it takes from a list with a Create or a compare-and-swap Update. Its
// errors are the
// Kubernetes API's (apierrors.IsNotFound, IsAlreadyExists, IsConflict), so
// the allocator's compare-and-swap logic is the same against any Store.
type Store interface {
	ListPools(ctx context.Context) ([]v1alpha1.IPPool, error)
	GetPool(ctx context.Context, name string) (*v1alpha1.IPPool, error)
	// ListBlocks lists the blocks whose labels match sel (nil: all).
	ListBlocks(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMBlock, error)
	GetBlock(ctx context.Context, name string) (*v1alpha1.IPAMBlock, error)
	CreateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error)
	// UpdateBlock fails with a Conflict when b's resourceVersion is stale.
	UpdateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error)
	GetHandle(ctx context.Context, name string) (*v1alpha1.IPAMHandle, error)
	ListHandles(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMHandle, error)
	CreateHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error)
	UpdateHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error)
	DeleteHandle(ctx context.Context, name string) error
	GetAffinity(ctx context.Context, node string) (*v1alpha1.IPAMAffinity, error)
	CreateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error)
	UpdateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error)
	// Ready says whether the datastore answers.
	Ready(ctx context.Context) error
}

// KubeStore is the Store on the Kubernetes API.
type KubeStore struct {
	cs versioned.Interface
}

// NewKubeStore returns a Store that uses cs.
func NewKubeStore(cs versioned.Interface) *KubeStore { return &KubeStore{cs: cs} }

// NewKubeStoreForConfig builds the clientset from cfg.
func NewKubeStoreForConfig(cfg *rest.Config) (*KubeStore, error) {
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the calyx client: %w", err)
	}
	return NewKubeStore(cs), nil
}

// listOpts reads from the API server's watch cache (resourceVersion 0): a
// consistent List right after any write waits for the cache to catch up,
// about 100 ms, on every block claim.
func listOpts(sel map[string]string) metav1.ListOptions {
	o := metav1.ListOptions{ResourceVersion: "0"}
	if len(sel) > 0 {
		o.LabelSelector = labels.SelectorFromSet(sel).String()
	}
	return o
}

func (s *KubeStore) ListPools(ctx context.Context) ([]v1alpha1.IPPool, error) {
	l, err := s.cs.CalyxV1alpha1().IPPools().List(ctx, listOpts(nil))
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (s *KubeStore) ListBlocks(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMBlock, error) {
	l, err := s.cs.CalyxV1alpha1().IPAMBlocks().List(ctx, listOpts(sel))
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (s *KubeStore) GetBlock(ctx context.Context, name string) (*v1alpha1.IPAMBlock, error) {
	return s.cs.CalyxV1alpha1().IPAMBlocks().Get(ctx, name, metav1.GetOptions{})
}

func (s *KubeStore) CreateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error) {
	return s.cs.CalyxV1alpha1().IPAMBlocks().Create(ctx, b, metav1.CreateOptions{})
}

func (s *KubeStore) UpdateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error) {
	return s.cs.CalyxV1alpha1().IPAMBlocks().Update(ctx, b, metav1.UpdateOptions{})
}

func (s *KubeStore) GetHandle(ctx context.Context, name string) (*v1alpha1.IPAMHandle, error) {
	return s.cs.CalyxV1alpha1().IPAMHandles().Get(ctx, name, metav1.GetOptions{})
}

func (s *KubeStore) ListHandles(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMHandle, error) {
	l, err := s.cs.CalyxV1alpha1().IPAMHandles().List(ctx, listOpts(sel))
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (s *KubeStore) CreateHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error) {
	return s.cs.CalyxV1alpha1().IPAMHandles().Create(ctx, h, metav1.CreateOptions{})
}

func (s *KubeStore) UpdateHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error) {
	return s.cs.CalyxV1alpha1().IPAMHandles().Update(ctx, h, metav1.UpdateOptions{})
}

func (s *KubeStore) DeleteHandle(ctx context.Context, name string) error {
	return s.cs.CalyxV1alpha1().IPAMHandles().Delete(ctx, name, metav1.DeleteOptions{})
}

func (s *KubeStore) GetPool(ctx context.Context, name string) (*v1alpha1.IPPool, error) {
	return s.cs.CalyxV1alpha1().IPPools().Get(ctx, name, metav1.GetOptions{})
}

func (s *KubeStore) GetAffinity(ctx context.Context, node string) (*v1alpha1.IPAMAffinity, error) {
	return s.cs.CalyxV1alpha1().IPAMAffinities().Get(ctx, node, metav1.GetOptions{})
}

func (s *KubeStore) CreateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error) {
	return s.cs.CalyxV1alpha1().IPAMAffinities().Create(ctx, a, metav1.CreateOptions{})
}

func (s *KubeStore) UpdateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error) {
	return s.cs.CalyxV1alpha1().IPAMAffinities().Update(ctx, a, metav1.UpdateOptions{})
}

func (s *KubeStore) Ready(ctx context.Context) error {
	body, err := s.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("%w: %s", err, body)
	}
	return nil
}
