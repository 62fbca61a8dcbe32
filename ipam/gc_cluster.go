package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Why the cluster-wide collector released an address.
const (
	// ReasonPodGone: the pod the address was allocated for has not existed
	// for longer than the grace period.
	ReasonPodGone = "pod-gone"
	// ReasonNodeGone: the node the address is used on no longer exists.
	ReasonNodeGone = "node-gone"
	// ReasonSandboxGone: the pod exists and has another address of the
	// same network, the one its status reports: this one was an earlier
	// sandbox's, whose DEL never finished.
	ReasonSandboxGone = "sandbox-gone"
)

// PodInfo is what the collector needs to know of a pod.
type PodInfo struct {
	// Node is the pod's node, "" while it is not scheduled.
	Node string
	// IPs are the pod's addresses as its status reports them, none until
	// the kubelet has written them.
	IPs []netip.Addr
}

// Cluster says which pods and nodes exist. Cached answers (fresh false)
// may lag behind the API server; fresh answers are read from it, and every
// release is decided on one.
type Cluster interface {
	// Pod says whether namespace/name exists, and if so where and with
	// which addresses.
	Pod(ctx context.Context, namespace, name string, fresh bool) (pod PodInfo, exists bool, err error)
	Node(ctx context.Context, name string, fresh bool) (exists bool, err error)
}

// CollectorOptions tune the Collector.
type CollectorOptions struct {
	// Grace is how long a pod address must have been without its pod
	// before it is released: a pod force-deleted from the API may still
	// run until its node notices, and an ADD may still be in flight for a
	// pod the informer has not shown yet.
	Grace time.Duration
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Collector is the cluster-wide IPAM garbage collector: it releases the
// addresses of pods that no longer exist (after Grace) and of nodes that no
// longer exist (at once), deletes the empty blocks and the affinities of
// deleted nodes, and the index entries (IPAMHandles) that point at no
// address. Only one collector may run in a cluster at a time (the agent
// elects one); its passes must not overlap.
type Collector struct {
	store GCStore
	m     *IPAM
	opts  CollectorOptions
	log   *slog.Logger
	// candidates are the leaks seen and when they were first seen.
	candidates map[candidate]time.Time
}

// candidate is a pod address without its pod, or an index entry without
// its address.
type candidate struct {
	block   string
	ordinal int // -1 for an index entry
	handle  string
}

// NewCollector returns a collector on store.
func NewCollector(store GCStore, opts CollectorOptions) *Collector {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{
		store: store, opts: opts, log: opts.Logger,
		m:          New(store, Options{Logger: opts.Logger}),
		candidates: map[candidate]time.Time{},
	}
}

// Released is one address a pass released.
type Released struct {
	Addr      netip.Addr
	Block     string
	Handle    string
	Node      string
	Namespace string
	Pod       string
	Reason    string
}

// PassResult is what one pass did.
type PassResult struct {
	// Candidates are pod addresses without a pod, waiting out the grace
	// period.
	Candidates        int
	Released          []Released
	BlocksDeleted     []string
	AffinitiesDeleted []string
	HandlesDeleted    []string
	// BlocksPerNode counts the blocks affine to each node after the pass.
	BlocksPerNode map[string]int
}

// pass is the state of one pass.
type pass struct {
	c  *Collector
	cl Cluster
	// r is what the pass reads: the collector's store, or for a dry run
	// objects already listed.
	r     GCReader
	now   time.Time
	res   PassResult
	errs  []error
	nodes map[string]bool // node → gone, confirmed by the API server
	seen  map[candidate]bool
	// listed are the blocks as the pass listed them, by name.
	listed map[string]*v1alpha1.IPAMBlock
	// sandboxes are the addresses of each pod and network, with their
	// handles: more than one handle means earlier sandboxes' leaks.
	sandboxes map[sandboxKey][]held
	// dry makes the pass decide without writing (DryRun), and record
	// its decisions in findings instead.
	dry      bool
	findings []Finding
	// dryReleased are the allocations a dry run would have released, by
	// block name and ordinal, so that it judges the blocks they empty as
	// the pass that released them would.
	dryReleased map[string]map[int]bool
}

type sandboxKey struct{ namespace, pod, network string }

// held is an address and the handle that holds it.
type held struct {
	addr   netip.Addr
	handle string
}

func sandboxOf(a *v1alpha1.Allocation) (sandboxKey, bool) {
	i := strings.LastIndexByte(a.Handle, '.')
	if a.Type != v1alpha1.AllocationPod || a.Namespace == "" || a.Pod == "" || i <= 0 {
		return sandboxKey{}, false
	}
	return sandboxKey{a.Namespace, a.Pod, a.Handle[:i]}, true
}

// Forget drops every candidate, so that a collector that stopped leading
// and leads again waits out the full grace period from then.
func (c *Collector) Forget() { clear(c.candidates) }

// Pass collects once. It goes on past errors on single objects and
// returns them joined with what it did.
func (c *Collector) Pass(ctx context.Context, cl Cluster) (PassResult, error) {
	p := c.newPass(cl, c.store)
	err := p.run(ctx)
	return p.res, err
}

func (c *Collector) newPass(cl Cluster, r GCReader) *pass {
	return &pass{c: c, cl: cl, r: r, now: c.opts.Now(), nodes: map[string]bool{}, seen: map[candidate]bool{}, listed: map[string]*v1alpha1.IPAMBlock{}}
}

// run is one pass: every allocation, then the blocks, affinities and
// index entries of gone nodes, then the collector's memory of candidates.
func (p *pass) run(ctx context.Context) error {
	c := p.c
	blocks, err := p.r.ListBlocks(ctx, nil)
	if err != nil {
		return fmt.Errorf("listing IPAM blocks: %w; is the API server up and the agent allowed to list ipamblocks?", err)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i].Name < blocks[j].Name })
	p.indexAddresses(blocks)
	for i := range blocks {
		p.listed[blocks[i].Name] = &blocks[i]
		p.allocations(ctx, &blocks[i])
	}
	deleted := map[string]bool{}
	pools := p.poolStates(ctx)
	for i := range blocks {
		if p.deleteBlock(ctx, &blocks[i]) || p.retireBlock(ctx, &blocks[i], pools) {
			deleted[blocks[i].Name] = true
		}
	}
	p.affinities(ctx)
	p.handles(ctx)
	for k := range c.candidates {
		if !p.seen[k] {
			delete(c.candidates, k) // released, or its owner is back
		}
	}

	p.res.BlocksPerNode = map[string]int{}
	for _, b := range blocks {
		if !deleted[b.Name] && b.Spec.Node != "" {
			p.res.BlocksPerNode[b.Spec.Node]++
		}
	}
	for k := range c.candidates {
		if k.ordinal >= 0 {
			p.res.Candidates++
		}
	}
	return errors.Join(p.errs...)
}

// indexAddresses records the addresses each pod sandbox holds across the
// listed blocks, a pod's siblings for the sandbox-gone rule, and for a dry
// run the handles that hold more than one address (which the collector
// only reports: keeping that index on every pass would cost it for nothing).
func (p *pass) indexAddresses(blocks []v1alpha1.IPAMBlock) {
	type inBlock struct {
		block *v1alpha1.IPAMBlock
		addr  netip.Addr
	}
	byHandle := map[string][]inBlock{}
	p.sandboxes = map[sandboxKey][]held{}
	for i := range blocks {
		cidr, err := parseBlock(&blocks[i])
		if err != nil {
			continue
		}
		for _, a := range blocks[i].Spec.Allocations {
			addr, _ := v1alpha1.AddrAt(cidr, a.Ordinal)
			if k, ok := sandboxOf(&a); ok {
				p.sandboxes[k] = append(p.sandboxes[k], held{addr, a.Handle})
			}
			if p.dry {
				byHandle[a.Handle] = append(byHandle[a.Handle], inBlock{&blocks[i], addr})
			}
		}
	}
	for _, h := range slices.Sorted(maps.Keys(byHandle)) {
		hs := byHandle[h]
		if len(hs) < 2 {
			continue
		}
		f := Finding{Reason: ReasonDuplicateHandle, Block: hs[0].block.Name, CIDR: hs[0].block.Spec.CIDR, Handle: h,
			Detail: fmt.Sprintf("handle holds %d addresses, want 1", len(hs))}
		for _, x := range hs {
			f.Addrs = append(f.Addrs, x.addr)
		}
		slices.SortFunc(f.Addrs, netip.Addr.Compare)
		p.findings = append(p.findings, f)
	}
}

// nodeGone says whether node is gone: the cache says so and the API server
// confirms. Each node is asked about once per pass.
func (p *pass) nodeGone(ctx context.Context, node string) (bool, error) {
	if g, ok := p.nodes[node]; ok {
		return g, nil
	}
	exists, err := p.cl.Node(ctx, node, false)
	if err == nil && !exists {
		exists, err = p.cl.Node(ctx, node, true)
	}
	if err != nil {
		return false, fmt.Errorf("checking whether node %s exists: %w", node, err)
	}
	p.nodes[node] = !exists
	return !exists, nil
}

// podGone says why the pod an allocation at addr was made for no longer
// uses it ("" if it may), and in a sentence for a finding: it does not
// exist, a pod of that name runs on another node (a StatefulSet's pod
// recreated elsewhere is another pod), or the pod reports another address
// of the same network as its own.
func (p *pass) podGone(ctx context.Context, a *v1alpha1.Allocation, addr netip.Addr, owner string, fresh bool) (reason, detail string, err error) {
	pod, exists, err := p.cl.Pod(ctx, a.Namespace, a.Pod, fresh)
	if err != nil {
		return "", "", fmt.Errorf("checking whether pod %s/%s exists: %w", a.Namespace, a.Pod, err)
	}
	key := a.Namespace + "/" + a.Pod
	switch {
	case !exists:
		return ReasonPodGone, fmt.Sprintf("pod %s (container %s) does not exist", key, shortID(a.ContainerID)), nil
	case pod.Node != "" && pod.Node != owner:
		return ReasonPodGone, fmt.Sprintf("pod %s runs on node %s, not %s: the address was an earlier pod's of that name", key, pod.Node, owner), nil
	}
	// Only between addresses of one network: a pod's status names its
	// primary network's address alone, and the others are not leaks. And
	// only another sandbox's (handle's) address in use condemns this one:
	// the release goes by handle, and would take the address in use too.
	k, _ := sandboxOf(a)
	siblings := p.sandboxes[k]
	if len(siblings) < 2 || len(pod.IPs) == 0 || slices.Contains(pod.IPs, addr) {
		return "", "", nil
	}
	for _, s := range siblings {
		if s.handle != a.Handle && slices.Contains(pod.IPs, s.addr) {
			return ReasonSandboxGone, fmt.Sprintf("pod %s uses %s now: this address was an earlier sandbox's (container %s)", key, s.addr, shortID(a.ContainerID)), nil
		}
	}
	return "", "", nil
}

// nodeGoneDetail says in a sentence why an address of a gone node goes.
func nodeGoneDetail(a *v1alpha1.Allocation, node string) string {
	switch {
	case a.Type == v1alpha1.AllocationTunnel:
		return fmt.Sprintf("tunnel address of node %s, which does not exist", node)
	case a.Pod != "":
		return fmt.Sprintf("address of pod %s/%s on node %s, which does not exist", a.Namespace, a.Pod, node)
	}
	return fmt.Sprintf("address on node %s, which does not exist", node)
}

// shortID is a container ID as runtimes print it: its first 12 characters.
func shortID(id string) string {
	if id == "" {
		return "-"
	}
	return id[:min(len(id), 12)]
}

func (p *pass) allocations(ctx context.Context, b *v1alpha1.IPAMBlock) {
	c := p.c
	for i := range b.Spec.Allocations {
		a := &b.Spec.Allocations[i]
		owner := a.Node
		if owner == "" {
			owner = b.Spec.Node
		}
		if owner == "" {
			continue // nobody to ask about: never guess
		}
		gone, err := p.nodeGone(ctx, owner)
		if err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		if gone {
			p.release(ctx, b, a, owner, ReasonNodeGone, nodeGoneDetail(a, owner))
			continue
		}
		// Tunnel addresses belong to their node, and a pod address
		// without a pod name cannot be checked: both live as long as the
		// node.
		if a.Type != v1alpha1.AllocationPod || a.Namespace == "" || a.Pod == "" {
			continue
		}
		addr, err := addrIn(b, a)
		if err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		reason, _, err := p.podGone(ctx, a, addr, owner, false)
		if err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		if reason == "" {
			continue
		}
		k := candidate{block: b.Name, ordinal: a.Ordinal, handle: a.Handle}
		first, known := c.candidates[k]
		if !known {
			first = p.now
			c.candidates[k] = first
			c.log.Info("pod address without its pod; released after the grace period unless the pod comes back",
				"address", addr, "handle", a.Handle, "reason", reason, "pod", a.Namespace+"/"+a.Pod, "node", owner, "grace", c.opts.Grace)
		}
		p.seen[k] = true
		if p.now.Sub(first) < c.opts.Grace {
			continue
		}
		// The cache may lag: only the API server's word releases.
		reason, detail, err := p.podGone(ctx, a, addr, owner, true)
		if err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		if reason == "" {
			delete(c.candidates, k)
			delete(p.seen, k)
			c.log.Info("the API server shows the pod using the address; keeping it", "address", addr, "handle", a.Handle, "pod", a.Namespace+"/"+a.Pod)
			continue
		}
		p.release(ctx, b, a, owner, reason, detail)
	}
}

func addrIn(b *v1alpha1.IPAMBlock, a *v1alpha1.Allocation) (netip.Addr, error) {
	cidr, err := parseBlock(b)
	if err != nil {
		return netip.Addr{}, err
	}
	addr, _ := v1alpha1.AddrAt(cidr, a.Ordinal)
	return addr, nil
}

func addrOf(b *v1alpha1.IPAMBlock, a *v1alpha1.Allocation) string {
	addr, err := addrIn(b, a)
	if err != nil {
		return b.Name + "#" + strconv.Itoa(a.Ordinal)
	}
	return addr.String()
}

// release frees the handle's addresses in b and its index entry when that
// points at b. A dry run records what it would free instead.
func (p *pass) release(ctx context.Context, b *v1alpha1.IPAMBlock, a *v1alpha1.Allocation, node, reason, detail string) {
	c := p.c
	if p.dry {
		p.dryRelease(b, a, node, reason, detail)
		return
	}
	addrs, err := c.m.releaseInBlock(ctx, b.Name, a.Handle)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("releasing %s (handle %s) in block %s: %w", addrOf(b, a), a.Handle, b.Name, err))
		return
	}
	delete(c.candidates, candidate{block: b.Name, ordinal: a.Ordinal, handle: a.Handle})
	delete(p.seen, candidate{block: b.Name, ordinal: a.Ordinal, handle: a.Handle})
	for _, addr := range addrs {
		r := Released{Addr: addr, Block: b.Name, Handle: a.Handle, Node: node, Namespace: a.Namespace, Pod: a.Pod, Reason: reason}
		p.res.Released = append(p.res.Released, r)
		attrs := []any{"address", addr, "handle", a.Handle, "reason", reason, "node", node, "block", b.Name}
		if a.Pod != "" {
			attrs = append(attrs, "pod", a.Namespace+"/"+a.Pod)
		}
		c.log.Info("released address", attrs...)
	}
	name := HandleObjectName(a.Handle)
	h, err := c.store.GetHandle(ctx, name)
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("reading handle %s after releasing its address: %w", a.Handle, err))
		return
	}
	if h.Spec.Block != b.Name {
		return // re-indexed to another block by a later ADD: not ours
	}
	if err := c.store.DeleteHandleAt(ctx, name, h.ResourceVersion); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		p.errs = append(p.errs, fmt.Errorf("deleting handle %s after releasing its address: %w", a.Handle, err))
	}
}

// dryRelease records the addresses release would free: every one of the
// handle's in b that an earlier finding did not already free.
func (p *pass) dryRelease(b *v1alpha1.IPAMBlock, a *v1alpha1.Allocation, node, reason, detail string) {
	cidr, err := parseBlock(b)
	if err != nil {
		p.errs = append(p.errs, err)
		return
	}
	freed := p.dryReleased[b.Name]
	if freed == nil {
		freed = map[int]bool{}
		p.dryReleased[b.Name] = freed
	}
	for _, x := range b.Spec.Allocations {
		if x.Handle != a.Handle || freed[x.Ordinal] {
			continue
		}
		freed[x.Ordinal] = true
		addr, _ := v1alpha1.AddrAt(cidr, x.Ordinal)
		p.findings = append(p.findings, Finding{Reason: reason, Block: b.Name, CIDR: b.Spec.CIDR,
			Addrs: []netip.Addr{addr}, Handle: a.Handle, Node: node, Detail: detail})
	}
	delete(p.c.candidates, candidate{block: b.Name, ordinal: a.Ordinal, handle: a.Handle})
	delete(p.seen, candidate{block: b.Name, ordinal: a.Ordinal, handle: a.Handle})
}

// held counts b's allocations, less those a dry run has released.
func (p *pass) held(b *v1alpha1.IPAMBlock) int {
	n := 0
	for _, a := range b.Spec.Allocations {
		if !p.dryReleased[b.Name][a.Ordinal] {
			n++
		}
	}
	return n
}

// deleteBlock deletes b when its node is gone and it holds no address; it
// says whether it did.
func (p *pass) deleteBlock(ctx context.Context, listed *v1alpha1.IPAMBlock) bool {
	if listed.Spec.Node == "" {
		return false
	}
	gone, err := p.nodeGone(ctx, listed.Spec.Node)
	if err != nil {
		p.errs = append(p.errs, err)
		return false
	}
	if !gone {
		return false
	}
	// The list is from before this pass's releases, and a borrowing node
	// may have allocated since: decide on the block as it is now, and
	// delete exactly that version.
	b, err := p.r.GetBlock(ctx, listed.Name)
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("reading block %s of deleted node %s: %w", listed.Name, listed.Spec.Node, err))
		return false
	}
	if p.held(b) > 0 || b.Spec.Node != listed.Spec.Node {
		return false // still lent out to live nodes' pods
	}
	return p.deleteEmptyBlock(ctx, b, Finding{Reason: ReasonBlockOfDeletedNode, Block: b.Name, CIDR: b.Spec.CIDR, Node: b.Spec.Node,
		Detail: fmt.Sprintf("block is affine to node %s, which does not exist", b.Spec.Node)})
}

// affinities deletes the block indexes of deleted nodes. Blocks of theirs
// that are kept (lent to live nodes) keep their node label, so a node that
// comes back under the same name indexes them again.
func (p *pass) affinities(ctx context.Context) {
	affs, err := p.r.ListAffinities(ctx)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("listing IPAM affinities: %w", err))
		return
	}
	sort.Slice(affs, func(i, j int) bool { return affs[i].Name < affs[j].Name })
	for _, aff := range affs {
		node := aff.Spec.Node
		if node == "" {
			node = aff.Name
		}
		gone, err := p.nodeGone(ctx, node)
		if err != nil {
			p.errs = append(p.errs, err)
			continue
		}
		if !gone {
			continue
		}
		if p.dry {
			p.findings = append(p.findings, Finding{Reason: ReasonAffinityOfDeletedNode, Node: node,
				Detail: fmt.Sprintf("IPAMAffinity %s indexes the blocks of node %s, which does not exist", aff.Name, node)})
			continue
		}
		err = p.c.store.DeleteAffinity(ctx, aff.Name, aff.ResourceVersion)
		switch {
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
			continue
		case err != nil:
			p.errs = append(p.errs, fmt.Errorf("deleting the IPAM affinity of deleted node %s: %w", node, err))
			continue
		}
		p.res.AffinitiesDeleted = append(p.res.AffinitiesDeleted, aff.Name)
		p.c.log.Info("deleted the IPAM affinity of a deleted node", "node", node)
	}
}

// handles deletes index entries that point at no address: left by a DEL
// that died between releasing the address and deleting the entry. Those of
// deleted nodes go at once, the others after the grace period: a retried
// ADD re-indexes a stale entry, and deleting it under that ADD would make
// the ADD fail.
func (p *pass) handles(ctx context.Context) {
	c := p.c
	hs, err := p.r.ListHandles(ctx, nil)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("listing IPAM handles: %w", err))
		return
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Name < hs[j].Name })
	for _, listed := range hs {
		// Screen on the listed blocks; only suspects cost reads. A handle
		// newer than the list looks stale here and is cleared below.
		if b := p.listed[listed.Spec.Block]; b != nil && len(allocationsOf(b, listed.Spec.Handle)) > 0 {
			continue
		}
		var err error
		gone := false
		if node := listed.Labels[v1alpha1.LabelNode]; node != "" {
			if gone, err = p.nodeGone(ctx, node); err != nil {
				p.errs = append(p.errs, err)
				continue
			}
		}
		if !gone {
			k := candidate{block: listed.Spec.Block, ordinal: -1, handle: listed.Name}
			first, known := c.candidates[k]
			if !known {
				first = p.now
				c.candidates[k] = first
			}
			p.seen[k] = true
			if p.now.Sub(first) < c.opts.Grace {
				continue
			}
		}
		// Confirm on the current objects, and delete exactly the version
		// confirmed.
		h, err := p.r.GetHandle(ctx, listed.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			p.errs = append(p.errs, fmt.Errorf("reading handle %s: %w", listed.Name, err))
			continue
		}
		if stale, err := p.staleHandle(ctx, h); err != nil || !stale {
			if err != nil {
				p.errs = append(p.errs, err)
			}
			continue
		}
		if p.dry {
			p.findings = append(p.findings, p.danglingHandle(h))
			delete(p.seen, candidate{block: listed.Spec.Block, ordinal: -1, handle: listed.Name})
			continue
		}
		err = c.store.DeleteHandleAt(ctx, h.Name, h.ResourceVersion)
		switch {
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
			continue
		case err != nil:
			p.errs = append(p.errs, fmt.Errorf("deleting stale handle %s: %w", h.Name, err))
			continue
		}
		delete(p.seen, candidate{block: listed.Spec.Block, ordinal: -1, handle: listed.Name})
		p.res.HandlesDeleted = append(p.res.HandlesDeleted, h.Name)
		c.log.Info("deleted an index entry that points at no address", "handle", h.Spec.Handle, "block", h.Spec.Block)
	}
}

// danglingHandle is the finding for the stale index entry h.
func (p *pass) danglingHandle(h *v1alpha1.IPAMHandle) Finding {
	f := Finding{Reason: ReasonDanglingHandle, Block: h.Spec.Block, Ordinals: slices.Clone(h.Spec.Ordinals),
		Handle: h.Spec.Handle, Node: h.Labels[v1alpha1.LabelNode]}
	if b := p.listed[h.Spec.Block]; b != nil {
		f.CIDR = b.Spec.CIDR
	}
	ords := make([]string, len(h.Spec.Ordinals))
	for i, o := range h.Spec.Ordinals {
		ords[i] = strconv.Itoa(o)
	}
	f.Detail = fmt.Sprintf("IPAMHandle %s points at ordinal %s of block %s, which the handle does not hold", h.Name, strings.Join(ords, ", "), h.Spec.Block)
	return f
}

// staleHandle says whether h points at no allocation of its handle.
func (p *pass) staleHandle(ctx context.Context, h *v1alpha1.IPAMHandle) (bool, error) {
	b, err := p.r.GetBlock(ctx, h.Spec.Block)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading block %s of handle %s: %w", h.Spec.Block, h.Name, err)
	}
	return len(allocationsOf(b, h.Spec.Handle)) == 0, nil
}
