package ipam

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	calyxlisters "github.com/calyx-net/calyx/api/client/listers/api/v1alpha1"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

// affinityTTL bounds how long a cached affinity is trusted. Only this
// node writes its affinity, through this store, except the calyx-ipam
// binary while the agent is down; a stale copy costs a Conflict, not a
// wrong answer.
const affinityTTL = 30 * time.Second

// CachedStore is a Store whose reads of blocks, pools and the node's
// affinity come from memory: the agent's informer caches, overlaid with
// the objects its own writes returned (the informer sees them a few
// milliseconds later). Every allocation decision is still confirmed by a
// compare-and-swap on the API server; a stale read costs one Conflict,
// after which that block is read from the API.
type CachedStore struct {
	Store
	blocks calyxlisters.IPAMBlockLister
	pools  calyxlisters.IPPoolLister

	mu sync.Mutex
	// wrote holds the newest version of each block this store wrote or
	// fetched, until the informer has caught up with it.
	wrote map[string]*v1alpha1.IPAMBlock
	// stale blocks lost a compare-and-swap: the next read asks the API.
	stale      map[string]bool
	affinities map[string]cachedAffinity
	now        func() time.Time

	// The handle index, from the blocks; see BlockEvents.
	handles   map[string]handleLoc // by IPAMHandle name
	byBlock   map[string][]string  // block → handle names indexed from it
	indexedRV map[string]string    // block → resourceVersion indexed
	// pending handle writes, in order; wake nudges the writer.
	pending []handleOp
	wake    chan struct{}
}

type cachedAffinity struct {
	a  *v1alpha1.IPAMAffinity
	at time.Time
}

// NewCachedStore reads through blocks and pools, the listers of running
// informers, and writes to (and falls back on) s.
func NewCachedStore(s Store, blocks calyxlisters.IPAMBlockLister, pools calyxlisters.IPPoolLister) *CachedStore {
	return &CachedStore{
		Store: s, blocks: blocks, pools: pools,
		wrote: map[string]*v1alpha1.IPAMBlock{}, stale: map[string]bool{},
		affinities: map[string]cachedAffinity{}, now: time.Now,
		handles: map[string]handleLoc{}, byBlock: map[string][]string{}, indexedRV: map[string]string{},
		wake: make(chan struct{}, 1),
	}
}

// newer says whether a is a later version of the same object than b.
// Resource versions are opaque to clients, but a wrong guess only costs a
// Conflict: the compare-and-swap still decides.
func newer(a, b string) bool {
	x, errX := strconv.ParseUint(a, 10, 64)
	y, errY := strconv.ParseUint(b, 10, 64)
	if errX != nil || errY != nil {
		return a != b
	}
	return x > y
}

func (s *CachedStore) GetBlock(ctx context.Context, name string) (*v1alpha1.IPAMBlock, error) {
	s.mu.Lock()
	stale := s.stale[name]
	own := s.wrote[name]
	s.mu.Unlock()
	if !stale {
		informer, err := s.blocks.Get(name)
		if err != nil {
			informer = nil
		}
		switch {
		case informer != nil && (own == nil || !newer(own.ResourceVersion, informer.ResourceVersion)):
			if own != nil {
				s.forget(name, own)
			}
			return informer.DeepCopy(), nil
		case own != nil:
			return own.DeepCopy(), nil
		}
	}
	return s.GetBlockFromAPI(ctx, name)
}

// GetBlockFromAPI skips the caches: for the one read whose staleness would
// lead to a wrong decision that no compare-and-swap catches.
func (s *CachedStore) GetBlockFromAPI(ctx context.Context, name string) (*v1alpha1.IPAMBlock, error) {
	b, err := s.Store.GetBlock(ctx, name)
	if err != nil {
		return nil, err
	}
	s.remember(b)
	return b.DeepCopy(), nil
}

func (s *CachedStore) remember(b *v1alpha1.IPAMBlock) {
	s.mu.Lock()
	delete(s.stale, b.Name)
	if cur := s.wrote[b.Name]; cur == nil || newer(b.ResourceVersion, cur.ResourceVersion) {
		s.wrote[b.Name] = b.DeepCopy()
	}
	s.mu.Unlock()
	s.indexBlock(b)
}

// forget drops own once the informer has it.
func (s *CachedStore) forget(name string, own *v1alpha1.IPAMBlock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wrote[name] == own {
		delete(s.wrote, name)
	}
}

func (s *CachedStore) invalidate(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.wrote, name)
	s.stale[name] = true
}

func (s *CachedStore) CreateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error) {
	out, err := s.Store.CreateBlock(ctx, b)
	if err == nil {
		s.remember(out)
	}
	return out, err
}

func (s *CachedStore) UpdateBlock(ctx context.Context, b *v1alpha1.IPAMBlock) (*v1alpha1.IPAMBlock, error) {
	out, err := s.Store.UpdateBlock(ctx, b)
	switch {
	case err == nil:
		s.remember(out)
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		s.invalidate(b.Name)
	}
	return out, err
}

func (s *CachedStore) GetPool(ctx context.Context, name string) (*v1alpha1.IPPool, error) {
	if p, err := s.pools.Get(name); err == nil {
		return p.DeepCopy(), nil
	}
	return s.Store.GetPool(ctx, name)
}

// ListPools lists the informer's pools: choosing among them on every
// ADD that names pools must not cost a round trip.
func (s *CachedStore) ListPools(ctx context.Context) ([]v1alpha1.IPPool, error) {
	ps, err := s.pools.List(labels.Everything())
	if err != nil || len(ps) == 0 {
		return s.Store.ListPools(ctx) // not synced yet, or really none: ask
	}
	out := make([]v1alpha1.IPPool, len(ps))
	for i, p := range ps {
		p.DeepCopyInto(&out[i])
	}
	return out, nil
}

func (s *CachedStore) GetAffinity(ctx context.Context, node string) (*v1alpha1.IPAMAffinity, error) {
	s.mu.Lock()
	c, ok := s.affinities[node]
	s.mu.Unlock()
	if ok && s.now().Sub(c.at) < affinityTTL {
		return c.a.DeepCopy(), nil
	}
	a, err := s.Store.GetAffinity(ctx, node)
	if err != nil {
		return nil, err
	}
	s.rememberAffinity(node, a)
	return a.DeepCopy(), nil
}

func (s *CachedStore) rememberAffinity(node string, a *v1alpha1.IPAMAffinity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a == nil {
		delete(s.affinities, node)
		return
	}
	s.affinities[node] = cachedAffinity{a: a.DeepCopy(), at: s.now()}
}

func (s *CachedStore) CreateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error) {
	out, err := s.Store.CreateAffinity(ctx, a)
	if err == nil {
		s.rememberAffinity(a.Name, out)
	} else {
		s.rememberAffinity(a.Name, nil)
	}
	return out, err
}

func (s *CachedStore) UpdateAffinity(ctx context.Context, a *v1alpha1.IPAMAffinity) (*v1alpha1.IPAMAffinity, error) {
	out, err := s.Store.UpdateAffinity(ctx, a)
	if err == nil {
		s.rememberAffinity(a.Name, out)
	} else {
		s.rememberAffinity(a.Name, nil)
	}
	return out, err
}

// The agent answers "which address does this handle hold" from the blocks,
// which record the handle of every allocation, and writes the IPAMHandle
// objects behind the answer: they are an index for the calyx-ipam binary
// and for tools, and the blocks stay the truth, so a handle write that is
// late or lost (the agent killed between the two) costs a block scan, not
// an address. That takes two API round trips off every pod start.

type handleLoc struct {
	handle, block string
	ordinals      []int
}

type handleOp struct {
	name string
	h    *v1alpha1.IPAMHandle // nil: delete
}

var handleResource = schema.GroupResource{Group: v1alpha1.GroupName, Resource: "ipamhandles"}

// indexBlock records b's handles, unless a newer version of b is indexed.
func (s *CachedStore) indexBlock(b *v1alpha1.IPAMBlock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rv, ok := s.indexedRV[b.Name]; ok && newer(rv, b.ResourceVersion) {
		return
	}
	s.unindexLocked(b.Name)
	s.indexedRV[b.Name] = b.ResourceVersion
	locs := map[string]*handleLoc{}
	for _, a := range b.Spec.Allocations {
		name := HandleObjectName(a.Handle)
		if l := locs[name]; l != nil {
			l.ordinals = append(l.ordinals, a.Ordinal)
			continue
		}
		locs[name] = &handleLoc{handle: a.Handle, block: b.Name, ordinals: []int{a.Ordinal}}
	}
	names := make([]string, 0, len(locs))
	for name, l := range locs {
		s.handles[name] = *l
		names = append(names, name)
	}
	s.byBlock[b.Name] = names
}

func (s *CachedStore) unindexLocked(block string) {
	for _, name := range s.byBlock[block] {
		if s.handles[name].block == block {
			delete(s.handles, name)
		}
	}
	delete(s.byBlock, block)
	delete(s.indexedRV, block)
}

// BlockEvents keep the handle index: register them on the blocks informer
// whose lister the store reads.
func (s *CachedStore) BlockEvents() cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if b, ok := obj.(*v1alpha1.IPAMBlock); ok {
				s.indexBlock(b)
			}
		},
		UpdateFunc: func(_, obj any) {
			if b, ok := obj.(*v1alpha1.IPAMBlock); ok {
				s.indexBlock(b)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if b, ok := obj.(*v1alpha1.IPAMBlock); ok {
				s.mu.Lock()
				s.unindexLocked(b.Name)
				s.mu.Unlock()
			}
		},
	}
}

// GetHandle answers from the blocks.
func (s *CachedStore) GetHandle(_ context.Context, name string) (*v1alpha1.IPAMHandle, error) {
	s.mu.Lock()
	l, ok := s.handles[name]
	s.mu.Unlock()
	if !ok {
		return nil, apierrors.NewNotFound(handleResource, name)
	}
	h := &v1alpha1.IPAMHandle{Spec: v1alpha1.IPAMHandleSpec{Handle: l.handle, Block: l.block, Ordinals: slices.Clone(l.ordinals)}}
	h.Name = name
	return h, nil
}

// CreateHandle, UpdateHandle and DeleteHandle queue the write for the
// handle writer, in order, and succeed at once.
func (s *CachedStore) CreateHandle(_ context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error) {
	s.queueHandle(handleOp{name: h.Name, h: h.DeepCopy()})
	return h.DeepCopy(), nil
}

func (s *CachedStore) UpdateHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (*v1alpha1.IPAMHandle, error) {
	return s.CreateHandle(ctx, h)
}

func (s *CachedStore) DeleteHandle(_ context.Context, name string) error {
	s.queueHandle(handleOp{name: name})
	return nil
}

func (s *CachedStore) queueHandle(op handleOp) {
	s.mu.Lock()
	s.pending = append(s.pending, op)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// PendingHandleWrites is the length of the handle writer's queue.
func (s *CachedStore) PendingHandleWrites() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// RunHandleWriter writes the queued handle objects, one at a time in
// queue order (a delete never overtakes its create), until ctx ends.
func (s *CachedStore) RunHandleWriter(ctx context.Context, log *slog.Logger) {
	for {
		s.mu.Lock()
		var op *handleOp
		if len(s.pending) > 0 {
			op = &s.pending[0]
			s.pending = s.pending[1:]
		}
		s.mu.Unlock()
		if op == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		for attempt := 0; ; attempt++ {
			err := s.writeHandle(ctx, *op)
			if err == nil || ctx.Err() != nil {
				break
			}
			if attempt == 4 {
				// The block holds the allocation; the garbage collector
				// and the next ADD or DEL of the handle repair the index.
				log.Warn("giving up on an IPAMHandle write; the blocks stay correct", "handle", op.name, "delete", op.h == nil, "err", err)
				break
			}
			if backoff(ctx, attempt) != nil {
				return
			}
		}
	}
}

func (s *CachedStore) writeHandle(ctx context.Context, op handleOp) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if op.h == nil {
		if err := s.Store.DeleteHandle(ctx, op.name); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		return nil
	}
	_, err := s.Store.CreateHandle(ctx, op.h)
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	old, err := s.Store.GetHandle(ctx, op.name)
	if err != nil {
		return err
	}
	old.Spec, old.Labels = op.h.Spec, op.h.Labels
	_, err = s.Store.UpdateHandle(ctx, old)
	return err
}
