// Package ipam hands out pod addresses from per-node blocks of cluster-wide
// pools, in the shape of Calico's block IPAM. A node claims a block by
// creating its IPAMBlock object (AlreadyExists: another node won); every
// allocation and release is a compare-and-swap update of the block on its
// resourceVersion; an IPAMHandle object per owner indexes its addresses so
// that a release reads two objects, whatever the size of the cluster.
package ipam

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

var (
	// ErrExhausted: no pool has a free address for this node.
	ErrExhausted = errors.New("no free address")
	// ErrNoPool: no enabled pool exists, or none of the requested ones.
	ErrNoPool = errors.New("no usable IP pool")
	// ErrUnknownPool: the configuration names a pool that does not exist.
	ErrUnknownPool = errors.New("unknown IP pool")
	// ErrPoolDisabled: a pool asked for by name is disabled.
	ErrPoolDisabled = errors.New("IP pool is disabled")
	// ErrAddressInUse: the one address asked for is held by another owner.
	ErrAddressInUse = errors.New("address in use")
	// ErrOutsidePools: the one address asked for is in no pool that may
	// give it to this node.
	ErrOutsidePools = errors.New("address outside the IP pools")
)

// Options tune the allocator.
type Options struct {
	// Node is the node this client runs on. A handle whose index object is
	// missing (the process died between allocating and indexing) is then
	// also looked for in this node's blocks.
	Node string
	// Pools restricts allocation to these pools, by name or CIDR, tried
	// in this order; a Request's Pools replace them.
	Pools []string
	// NodeLabels reads a node's labels, for the pools' nodeSelectors. It is
	// called only when a pool has a selector; nil: nodes have no labels.
	NodeLabels func(ctx context.Context, node string) (map[string]string, error)
	// MaxBlocksPerNode caps the blocks one node claims; default 20.
	MaxBlocksPerNode int
	// StrictAffinity forbids borrowing addresses from other nodes' blocks.
	StrictAffinity bool
	// MaxRetries bounds compare-and-swap retries on one block; default 50.
	MaxRetries int
	Logger     *slog.Logger
}

// IPAM is the allocator. It is safe for concurrent use, also across
// processes and nodes: the API server arbitrates every change.
type IPAM struct {
	store Store
	opts  Options
	log   *slog.Logger

	// Allocations for one node go one at a time, as the node's file lock
	// makes them go across processes, and releases from one block too:
	// racing on one object would only turn into compare-and-swap retries.
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

var _ Allocator = (*IPAM)(nil)

// New returns an allocator on store.
func New(store Store, opts Options) *IPAM {
	if opts.MaxBlocksPerNode <= 0 {
		opts.MaxBlocksPerNode = 20
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 50
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &IPAM{store: store, opts: opts, log: opts.Logger, locks: map[string]*sync.Mutex{}}
}

func (m *IPAM) lock(key string) func() {
	m.mu.Lock()
	l := m.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		m.locks[key] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// NewForConfig returns an allocator on the Kubernetes API at cfg.
func NewForConfig(cfg *rest.Config, opts Options) (*IPAM, error) {
	s, err := NewKubeStoreForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return New(s, opts), nil
}

// HandleObjectName is the IPAMHandle name for handle: the handle itself
// when it is a valid object name, else a sanitized form with a hash.
func HandleObjectName(handle string) string {
	if len(validation.IsDNS1123Subdomain(handle)) == 0 {
		return handle
	}
	sum := sha256.Sum256([]byte(handle))
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, handle)
	if len(clean) > 200 {
		clean = clean[:200]
	}
	return strings.Trim(clean, "-.") + "-" + hex.EncodeToString(sum[:8])
}

// AutoAssign allocates one address for a pod.
func (m *IPAM) AutoAssign(ctx context.Context, node, handle string, attrs Attrs) (Assignment, error) {
	return m.Assign(ctx, node, handle, attrs, Request{})
}

// Assign allocates one address for a pod, from the pools or the address
// req asks for. Calling it again with the same handle returns the address
// the handle holds, whatever req says.
func (m *IPAM) Assign(ctx context.Context, node, handle string, attrs Attrs, req Request) (Assignment, error) {
	return m.assign(ctx, node, handle, v1alpha1.Allocation{
		Handle: handle, Type: v1alpha1.AllocationPod, Node: node,
		Namespace: attrs.Namespace, Pod: attrs.Pod, ContainerID: attrs.ContainerID,
	}, req)
}

// AssignTunnelAddress allocates the node's tunl0 address, or returns the one
// it has.
func (m *IPAM) AssignTunnelAddress(ctx context.Context, node string) (Assignment, error) {
	h := TunnelHandle(node)
	return m.assign(ctx, node, h, v1alpha1.Allocation{Handle: h, Type: v1alpha1.AllocationTunnel, Node: node}, Request{})
}

func (m *IPAM) assign(ctx context.Context, node, handle string, alloc v1alpha1.Allocation, req Request) (Assignment, error) {
	if node == "" || handle == "" {
		return Assignment{}, fmt.Errorf("assigning an address needs a node and a handle (got node %q, handle %q)", node, handle)
	}
	defer m.lock("node/" + node)()

	// The fast path reads by name only (the handle, the node's affinity,
	// its blocks and their pools), and lists the pools only when some are
	// asked for by name or CIDR.
	own, err := m.nodeBlocks(ctx, node)
	if err != nil {
		return Assignment{}, err
	}
	// Idempotent: a retried ADD gets the address the first one got.
	a, found, indexed, err := m.lookup(ctx, node, handle, own)
	if err != nil {
		return Assignment{}, err
	}
	if found {
		if !indexed {
			return m.index(ctx, node, a, alloc)
		}
		return a, nil
	}
	if req.Addr.IsValid() {
		return m.assignAddr(ctx, node, req.Addr, alloc)
	}
	pools := m.opts.Pools
	if len(req.Pools) > 0 {
		pools = req.Pools
	}
	choice, err := m.choosePools(ctx, node, useOf(alloc.Type), pools)
	if err != nil {
		return Assignment{}, err
	}
	// The node's own blocks with room, in the order of their pools.
	type ranked struct{ rank, i int }
	var fit []ranked
	for i := range own {
		if own[i].Status.Free == 0 {
			continue
		}
		r, ok, err := choice.rankByName(ctx, own[i].Spec.Pool)
		if err != nil {
			return Assignment{}, err
		}
		if ok {
			fit = append(fit, ranked{r, i})
		}
	}
	slices.SortStableFunc(fit, func(a, b ranked) int { return a.rank - b.rank })
	for _, f := range fit {
		if a, ok, err := m.assignInBlock(ctx, &own[f.i], alloc); err != nil {
			return Assignment{}, err
		} else if ok {
			return m.index(ctx, node, a, alloc)
		}
	}
	return m.assignSlow(ctx, node, alloc, own, choice)
}

// assignSlow runs when the node's indexed blocks are full: it claims a new
// block, else borrows. It lists, so it is where the time goes, once per
// block.
func (m *IPAM) assignSlow(ctx context.Context, node string, alloc v1alpha1.Allocation, own []v1alpha1.IPAMBlock, choice *poolChoice) (Assignment, error) {
	pools, err := choice.pools(ctx)
	if err != nil {
		return Assignment{}, err
	}
	inPool := map[string]bool{}
	for _, p := range pools {
		inPool[p.Name] = true
	}
	// Blocks the node created but did not get to index (it died in
	// between) are found by label and indexed now.
	labelled, err := m.store.ListBlocks(ctx, map[string]string{v1alpha1.LabelNode: node})
	if err != nil {
		return Assignment{}, fmt.Errorf("listing the blocks of node %s: %w", node, err)
	}
	indexed := map[string]bool{}
	for _, b := range own {
		indexed[b.Name] = true
	}
	sort.Slice(labelled, func(i, j int) bool { return labelled[i].Name < labelled[j].Name })
	for i := range labelled {
		b := &labelled[i]
		if indexed[b.Name] || b.Spec.Node != node {
			continue
		}
		if err := m.addAffinity(ctx, node, b.Name); err != nil {
			return Assignment{}, err
		}
		if b.Status.Free == 0 || !inPool[b.Spec.Pool] {
			continue
		}
		if a, ok, err := m.assignInBlock(ctx, b, alloc); err != nil {
			return Assignment{}, err
		} else if ok {
			return m.index(ctx, node, a, alloc)
		}
	}

	// A new block, while the node is under its cap.
	if len(labelled) < m.opts.MaxBlocksPerNode {
		b, err := m.claimBlock(ctx, pools, node)
		switch {
		case err == nil:
			if a, ok, err := m.assignInBlock(ctx, b, alloc); err != nil {
				return Assignment{}, err
			} else if ok {
				return m.index(ctx, node, a, alloc)
			}
		case !errors.Is(err, ErrExhausted):
			return Assignment{}, err
		}
	}

	// Borrow from another node's block.
	if m.opts.StrictAffinity {
		return Assignment{}, fmt.Errorf("%w for node %s in pools %s: every block is claimed and strict affinity forbids borrowing; add a pool or free addresses", ErrExhausted, node, poolList(pools))
	}
	for _, p := range pools {
		others, err := m.store.ListBlocks(ctx, map[string]string{v1alpha1.LabelPool: p.Name})
		if err != nil {
			return Assignment{}, fmt.Errorf("listing the blocks of pool %s: %w", p.Name, err)
		}
		for i := range others {
			if others[i].Spec.Node == node || others[i].Status.Free == 0 {
				continue
			}
			if a, ok, err := m.assignInBlock(ctx, &others[i], alloc); err != nil {
				return Assignment{}, err
			} else if ok {
				return m.index(ctx, node, a, alloc)
			}
		}
	}
	return Assignment{}, fmt.Errorf("%w for node %s: pools %s are full; add a pool, or delete pods to free addresses", ErrExhausted, node, poolList(pools))
}

// nodeBlocks reads the node's indexed blocks, sorted by name.
func (m *IPAM) nodeBlocks(ctx context.Context, node string) ([]v1alpha1.IPAMBlock, error) {
	aff, err := m.store.GetAffinity(ctx, node)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the block index of node %s: %w", node, err)
	}
	names := slices.Sorted(slices.Values(aff.Spec.Blocks))
	out := make([]v1alpha1.IPAMBlock, 0, len(names))
	for _, name := range names {
		b, err := m.store.GetBlock(ctx, name)
		if apierrors.IsNotFound(err) {
			continue // released by the garbage collector
		}
		if err != nil {
			return nil, fmt.Errorf("reading block %s of node %s: %w", name, node, err)
		}
		if b.Spec.Node == node {
			out = append(out, *b)
		}
	}
	return out, nil
}

// addAffinity records that node owns block, with compare-and-swap.
func (m *IPAM) addAffinity(ctx context.Context, node, block string) error {
	for attempt := 0; ; attempt++ {
		aff, err := m.store.GetAffinity(ctx, node)
		if apierrors.IsNotFound(err) {
			aff = &v1alpha1.IPAMAffinity{Spec: v1alpha1.IPAMAffinitySpec{Node: node, Blocks: []string{block}}}
			aff.Name = node
			aff.Labels = map[string]string{v1alpha1.LabelNode: node}
			if _, err = m.store.CreateAffinity(ctx, aff); err == nil {
				return nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating the block index of node %s: %w", node, err)
			}
		} else if err != nil {
			return fmt.Errorf("reading the block index of node %s: %w", node, err)
		} else {
			if slices.Contains(aff.Spec.Blocks, block) {
				return nil
			}
			aff.Spec.Blocks = append(aff.Spec.Blocks, block)
			if _, err = m.store.UpdateAffinity(ctx, aff); err == nil {
				return nil
			}
			if !apierrors.IsConflict(err) {
				return fmt.Errorf("updating the block index of node %s: %w", node, err)
			}
		}
		if attempt >= m.opts.MaxRetries {
			return fmt.Errorf("updating the block index of node %s: still conflicting after %d retries: %w", node, attempt, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
	}
}

func poolList(pools []v1alpha1.IPPool) string {
	var s []string
	for _, p := range pools {
		s = append(s, p.Name+" ("+p.Spec.CIDR+")")
	}
	return strings.Join(s, ", ")
}

// assignInBlock allocates in b with compare-and-swap, re-reading b on a
// conflict. ok is false when the block is full.
func (m *IPAM) assignInBlock(ctx context.Context, b *v1alpha1.IPAMBlock, alloc v1alpha1.Allocation) (Assignment, bool, error) {
	name := b.Name
	for attempt := 0; ; attempt++ {
		// The handle's lookup may have read a block older than this one:
		// an allocation whose answer was lost (the API server died after
		// committing it) shows up here, and is the answer, not a second
		// address for the same handle.
		if held := allocationsOf(b, alloc.Handle); len(held) > 0 {
			cidr, _ := parseBlock(b)
			return Assignment{Addr: held[0], Block: cidr, Borrowed: b.Spec.Node != alloc.Node}, true, nil
		}
		nb := b.DeepCopy()
		addr, ok, err := assignInBlock(nb, alloc)
		if err != nil || !ok {
			return Assignment{}, false, err
		}
		updated, err := m.store.UpdateBlock(ctx, nb)
		if err == nil {
			cidr, _ := parseBlock(updated)
			return Assignment{Addr: addr, Block: cidr, Borrowed: updated.Spec.Node != alloc.Node}, true, nil
		}
		if !apierrors.IsConflict(err) {
			return Assignment{}, false, fmt.Errorf("updating block %s: %w", name, err)
		}
		if attempt >= m.opts.MaxRetries {
			return Assignment{}, false, fmt.Errorf("updating block %s: still conflicting after %d retries: %w", name, attempt, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return Assignment{}, false, err
		}
		if b, err = m.store.GetBlock(ctx, name); err != nil {
			return Assignment{}, false, fmt.Errorf("re-reading block %s: %w", name, err)
		}
	}
}

// blockFromAPI reads a block past the store's cache, for the reads whose
// staleness no compare-and-swap would catch; cached is false when the
// store has no cache (its reads are current already).
func (m *IPAM) blockFromAPI(ctx context.Context, name string) (b *v1alpha1.IPAMBlock, cached bool, err error) {
	f, ok := m.store.(interface {
		GetBlockFromAPI(context.Context, string) (*v1alpha1.IPAMBlock, error)
	})
	if !ok {
		return nil, false, nil
	}
	b, err = f.GetBlockFromAPI(ctx, name)
	return b, true, err
}

// backoff sleeps a short, jittered, growing time so that writers that
// collided do not collide again in lockstep.
func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(1+rand.IntN(5*min(attempt+1, 20))) * time.Millisecond
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// claimBlock creates a free block of one of the pools, affine to node.
func (m *IPAM) claimBlock(ctx context.Context, pools []v1alpha1.IPPool, node string) (*v1alpha1.IPAMBlock, error) {
	for _, p := range pools {
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil {
			return nil, fmt.Errorf("pool %s has an invalid cidr %q", p.Name, p.Spec.CIDR)
		}
		size := p.Spec.BlockSize
		if size == 0 {
			size = 26
		}
		existing, err := m.store.ListBlocks(ctx, map[string]string{v1alpha1.LabelPool: p.Name})
		if err != nil {
			return nil, fmt.Errorf("listing the blocks of pool %s: %w", p.Name, err)
		}
		taken := make(map[string]bool, len(existing))
		for _, b := range existing {
			taken[b.Name] = true
		}
		if len(taken) >= 1<<(size-cidr.Bits()) {
			continue
		}
		cur := newBlockCursor(cidr, size, node)
		for i := 0; i < cur.n; i++ {
			bc := cur.at(i)
			if taken[BlockName(bc)] {
				continue
			}
			b, err := m.store.CreateBlock(ctx, newBlock(bc, p.Name, node))
			if apierrors.IsAlreadyExists(err) {
				continue // another node claimed it first
			}
			if err != nil {
				return nil, fmt.Errorf("claiming block %s: %w", bc, err)
			}
			if err := m.addAffinity(ctx, node, b.Name); err != nil {
				// The block is labelled with its node, so the next slow
				// path indexes it; nothing is lost.
				return nil, err
			}
			m.log.Info("claimed block", "block", bc, "node", node, "pool", p.Name)
			return b, nil
		}
	}
	return nil, ErrExhausted
}

// index records the handle → block entry after a successful allocation. If
// it cannot, the allocation is undone: an address nobody can release by
// handle would leak.
func (m *IPAM) index(ctx context.Context, node string, a Assignment, alloc v1alpha1.Allocation) (Assignment, error) {
	h := &v1alpha1.IPAMHandle{}
	h.Name = HandleObjectName(alloc.Handle)
	h.Labels = map[string]string{v1alpha1.LabelNode: node}
	h.Spec = v1alpha1.IPAMHandleSpec{Handle: alloc.Handle, Block: BlockName(a.Block), Ordinals: []int{ordinalOf(a.Block, a.Addr)}}
	_, err := m.store.CreateHandle(ctx, h)
	if apierrors.IsAlreadyExists(err) {
		// A leftover of an earlier crash, pointing at an address that is
		// gone: this allocation replaces it.
		var old *v1alpha1.IPAMHandle
		if old, err = m.store.GetHandle(ctx, h.Name); err == nil {
			old.Spec = h.Spec
			old.Labels = h.Labels
			_, err = m.store.UpdateHandle(ctx, old)
		}
	}
	if err != nil {
		// Undo with a fresh context: ctx may be what just expired.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, rerr := m.releaseInBlock(uctx, BlockName(a.Block), alloc.Handle); rerr != nil {
			m.log.Error("could not undo an allocation whose handle could not be recorded; the garbage collector will release it", "addr", a.Addr, "handle", alloc.Handle, "err", rerr)
		}
		return Assignment{}, fmt.Errorf("recording handle %s: %w", alloc.Handle, err)
	}
	return a, nil
}

// lookup finds the handle's current address through its index object or,
// when that is missing (indexed is false), in the node's own blocks.
func (m *IPAM) lookup(ctx context.Context, node, handle string, own []v1alpha1.IPAMBlock) (a Assignment, found, indexed bool, err error) {
	h, err := m.store.GetHandle(ctx, HandleObjectName(handle))
	switch {
	case err == nil:
		b, err := m.store.GetBlock(ctx, h.Spec.Block)
		if err != nil && !apierrors.IsNotFound(err) {
			return Assignment{}, false, false, fmt.Errorf("reading block %s of handle %s: %w", h.Spec.Block, handle, err)
		}
		if err == nil && len(allocationsOf(b, handle)) == 0 {
			// The index is read from the API, the block may come from a
			// cache that has not seen the allocation yet: allocating again
			// would give the handle a second address.
			if fresh, cached, ferr := m.blockFromAPI(ctx, h.Spec.Block); cached {
				b, err = fresh, ferr
			}
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return Assignment{}, false, false, fmt.Errorf("reading block %s of handle %s: %w", h.Spec.Block, handle, err)
		}
		if err == nil {
			if addrs := allocationsOf(b, handle); len(addrs) > 0 {
				cidr, _ := parseBlock(b)
				return Assignment{Addr: addrs[0], Block: cidr, Borrowed: b.Spec.Node != node}, true, true, nil
			}
		}
		return Assignment{}, false, false, nil // a stale index entry: index() replaces it
	case !apierrors.IsNotFound(err):
		return Assignment{}, false, false, fmt.Errorf("reading handle %s: %w", handle, err)
	}
	for i := range own {
		if addrs := allocationsOf(&own[i], handle); len(addrs) > 0 {
			cidr, _ := parseBlock(&own[i])
			return Assignment{Addr: addrs[0], Block: cidr}, true, false, nil
		}
	}
	return Assignment{}, false, false, nil
}

// ReleaseByHandle frees the handle's addresses. A handle that holds nothing
// is not an error: DEL must be repeatable.
func (m *IPAM) ReleaseByHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	name := HandleObjectName(handle)
	h, err := m.store.GetHandle(ctx, name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading handle %s: %w", handle, err)
	}
	var released []netip.Addr
	if err == nil {
		if released, err = m.releaseInBlock(ctx, h.Spec.Block, handle); err != nil {
			return nil, err
		}
		if err := m.store.DeleteHandle(ctx, name); err != nil && !apierrors.IsNotFound(err) {
			return released, fmt.Errorf("deleting handle %s: %w", handle, err)
		}
		return released, nil
	}
	// No index entry: an allocation may still sit in one of this node's
	// blocks if the allocating process died before indexing it.
	if m.opts.Node == "" {
		return nil, nil
	}
	blocks, err := m.nodeBlocks(ctx, m.opts.Node)
	if err != nil {
		return nil, err
	}
	for _, b := range blocks {
		// A cached block may not show an allocation yet (the agent's
		// informer after an API server restart): a DEL that missed it
		// would leave the address held.
		if fresh, cached, err := m.blockFromAPI(ctx, b.Name); cached {
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return released, fmt.Errorf("reading block %s: %w", b.Name, err)
			}
			b = *fresh
		}
		if len(allocationsOf(&b, handle)) == 0 {
			continue
		}
		r, err := m.releaseInBlock(ctx, b.Name, handle)
		if err != nil {
			return released, err
		}
		released = append(released, r...)
	}
	return released, nil
}

// releaseInBlock removes the handle's allocations from a block with
// compare-and-swap.
func (m *IPAM) releaseInBlock(ctx context.Context, name, handle string) ([]netip.Addr, error) {
	var released []netip.Addr
	_, err := m.changeBlock(ctx, name, func(b *v1alpha1.IPAMBlock) (bool, error) {
		released = nil
		if len(allocationsOf(b, handle)) == 0 {
			return false, nil
		}
		var err error
		released, err = releaseInBlock(b, handle)
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	return released, nil
}

// changeBlock applies change to the named block as it is now and writes
// it with compare-and-swap, again on a conflict. change says whether it
// changed anything; when it did not, or the block is gone, nothing is
// written and the block returned is nil.
func (m *IPAM) changeBlock(ctx context.Context, name string, change func(*v1alpha1.IPAMBlock) (bool, error)) (*v1alpha1.IPAMBlock, error) {
	defer m.lock("block/" + name)()
	for attempt := 0; ; attempt++ {
		b, err := m.store.GetBlock(ctx, name)
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading block %s: %w", name, err)
		}
		if changed, err := change(b); err != nil || !changed {
			return nil, err
		}
		updated, err := m.store.UpdateBlock(ctx, b)
		if err == nil {
			return updated, nil
		}
		if !apierrors.IsConflict(err) {
			return nil, fmt.Errorf("updating block %s: %w", name, err)
		}
		if attempt >= m.opts.MaxRetries {
			return nil, fmt.Errorf("updating block %s: still conflicting after %d retries: %w", name, attempt, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// Lookup returns the handle's address without allocating.
func (m *IPAM) Lookup(ctx context.Context, node, handle string) (Assignment, bool, error) {
	own, err := m.nodeBlocks(ctx, node)
	if err != nil {
		return Assignment{}, false, err
	}
	a, found, _, err := m.lookup(ctx, node, handle, own)
	return a, found, err
}

// Ready says whether the datastore answers.
func (m *IPAM) Ready(ctx context.Context) error {
	return m.store.Ready(ctx)
}
