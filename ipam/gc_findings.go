package ipam

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// What a pass finds besides addresses to release (ReasonPodGone,
// ReasonNodeGone, ReasonSandboxGone).
const (
	// ReasonBlockOfDeletedNode: an empty block (once the pass's releases
	// are done) affine to a node that no longer exists; the pass deletes it.
	ReasonBlockOfDeletedNode = "block-of-deleted-node"
	// ReasonAffinityOfDeletedNode: the block index of a node that no
	// longer exists; the pass deletes it.
	ReasonAffinityOfDeletedNode = "affinity-of-deleted-node"
	// ReasonDanglingHandle: an IPAMHandle index entry whose block holds no
	// address of its handle; the pass deletes it.
	ReasonDanglingHandle = "dangling-handle"
	// ReasonDuplicateHandle: a handle holding more than one address, where
	// a pod or a tunnel has exactly one. The pass reports it and changes
	// nothing: which of the addresses is in use is not for it to guess.
	ReasonDuplicateHandle = "duplicate-handle"
)

// Finding is one thing a pass decided about: an address it releases, an
// object it deletes, or a duplicated handle it only reports. A dry run
// returns them without acting, for calyxctl ipam check.
type Finding struct {
	// Reason is one of the Reason constants.
	Reason string
	// Block is the block's object name, and CIDR its range when the block
	// exists.
	Block, CIDR string
	// Addrs are the addresses concerned: the one released, or every
	// address of a duplicated handle.
	Addrs []netip.Addr
	// Ordinals are the ordinals a dangling index entry points at.
	Ordinals []int
	Handle   string
	// Node is the node the finding is about: the address's, the block's,
	// the affinity's.
	Node string
	// Detail says why, in a sentence.
	Detail string
}

// GCReader is what a pass reads. GCStore is one; a dry run needs nothing
// else, so it can run on objects already listed (GCObjects).
type GCReader interface {
	ListPools(ctx context.Context) ([]v1alpha1.IPPool, error)
	GetPool(ctx context.Context, name string) (*v1alpha1.IPPool, error)
	ListBlocks(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMBlock, error)
	GetBlock(ctx context.Context, name string) (*v1alpha1.IPAMBlock, error)
	ListHandles(ctx context.Context, sel map[string]string) ([]v1alpha1.IPAMHandle, error)
	GetHandle(ctx context.Context, name string) (*v1alpha1.IPAMHandle, error)
	ListAffinities(ctx context.Context) ([]v1alpha1.IPAMAffinity, error)
}

var _ GCReader = GCStore(nil)

// DryRun is a pass of the cluster-wide collector that writes nothing: it
// decides on r's objects with the collector's own rules, as if the grace
// period were over, and returns what it would release and delete. A block
// that the pass's releases would empty is reported as deleted too, as the
// next pass would. Errors on single objects are joined into err; the
// findings are those of the objects the pass could judge.
func DryRun(ctx context.Context, r GCReader, cl Cluster) ([]Finding, error) {
	c := &Collector{
		opts:       CollectorOptions{Now: time.Now},
		log:        slog.New(slog.DiscardHandler),
		candidates: map[candidate]time.Time{},
	}
	p := c.newPass(cl, r)
	p.dry = true
	p.dryReleased = map[string]map[int]bool{}
	err := p.run(ctx)
	slices.SortStableFunc(p.findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Block, b.Block), cmp.Compare(a.Handle, b.Handle))
	})
	return p.findings, err
}

// GCObjects is a GCReader over objects already listed: calyxctl's
// snapshot of the cluster.
type GCObjects struct {
	Pools      []v1alpha1.IPPool
	Blocks     []v1alpha1.IPAMBlock
	Handles    []v1alpha1.IPAMHandle
	Affinities []v1alpha1.IPAMAffinity
}

var (
	blockResource          = schema.GroupResource{Group: v1alpha1.GroupName, Resource: "ipamblocks"}
	poolResource           = schema.GroupResource{Group: v1alpha1.GroupName, Resource: "ippools"}
	_             GCReader = GCObjects{}
)

func (o GCObjects) ListPools(context.Context) ([]v1alpha1.IPPool, error) {
	out := make([]v1alpha1.IPPool, 0, len(o.Pools))
	for _, p := range o.Pools {
		out = append(out, *p.DeepCopy())
	}
	return out, nil
}

func (o GCObjects) GetPool(_ context.Context, name string) (*v1alpha1.IPPool, error) {
	for _, p := range o.Pools {
		if p.Name == name {
			return p.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(poolResource, name)
}

func (o GCObjects) ListBlocks(_ context.Context, sel map[string]string) ([]v1alpha1.IPAMBlock, error) {
	var out []v1alpha1.IPAMBlock
	for _, b := range o.Blocks {
		if labelsMatch(b.Labels, sel) {
			out = append(out, *b.DeepCopy())
		}
	}
	return out, nil
}

func (o GCObjects) GetBlock(_ context.Context, name string) (*v1alpha1.IPAMBlock, error) {
	for _, b := range o.Blocks {
		if b.Name == name {
			return b.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(blockResource, name)
}

func (o GCObjects) ListHandles(_ context.Context, sel map[string]string) ([]v1alpha1.IPAMHandle, error) {
	var out []v1alpha1.IPAMHandle
	for _, h := range o.Handles {
		if labelsMatch(h.Labels, sel) {
			out = append(out, *h.DeepCopy())
		}
	}
	return out, nil
}

func (o GCObjects) GetHandle(_ context.Context, name string) (*v1alpha1.IPAMHandle, error) {
	for _, h := range o.Handles {
		if h.Name == name {
			return h.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(handleResource, name)
}

func (o GCObjects) ListAffinities(context.Context) ([]v1alpha1.IPAMAffinity, error) {
	out := make([]v1alpha1.IPAMAffinity, 0, len(o.Affinities))
	for _, a := range o.Affinities {
		out = append(out, *a.DeepCopy())
	}
	return out, nil
}

// labelsMatch says whether labels has every key and value of sel.
func labelsMatch(labels, sel map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}
