package ipam

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// What a pass deletes of pools that give no new address.
const (
	// ReasonBlockOfDisabledPool: an empty block of a disabled pool; the
	// pass deletes it and drops it from its node's affinity. That is how a
	// disabled pool's blocks go away as its pods do, without a restart
	// (Calico's pool migration).
	ReasonBlockOfDisabledPool = "block-of-disabled-pool"
	// ReasonBlockOfDeletedPool: an empty block of a pool that no longer
	// exists, deleted the same way.
	ReasonBlockOfDeletedPool = "block-of-deleted-pool"
)

// poolStates are the listed pools, by name: whether each is disabled. nil
// when they could not be listed: then no block is judged by its pool.
type poolStates map[string]bool

func (p *pass) poolStates(ctx context.Context) poolStates {
	pools, err := p.r.ListPools(ctx)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("listing IP pools: %w", err))
		return nil
	}
	out := poolStates{}
	for _, pl := range pools {
		out[pl.Name] = pl.Spec.Disabled
	}
	return out
}

// retireBlock deletes listed when it holds no address and its pool is
// disabled or gone, confirmed on the pool and the block as they are now;
// it says whether it did.
func (p *pass) retireBlock(ctx context.Context, listed *v1alpha1.IPAMBlock, pools poolStates) bool {
	name := listed.Spec.Pool
	if pools == nil || name == "" || p.held(listed) > 0 {
		return false
	}
	if disabled, listedPool := pools[name]; listedPool && !disabled {
		return false
	}
	// The list may be older than a pool enabled or created again, or than
	// an address allocated since; the deletion's precondition catches the
	// rest.
	reason, why := ReasonBlockOfDisabledPool, "which is disabled"
	pool, err := p.r.GetPool(ctx, name)
	switch {
	case apierrors.IsNotFound(err):
		reason, why = ReasonBlockOfDeletedPool, "which no longer exists"
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("reading pool %s: %w", name, err))
		return false
	case !pool.Spec.Disabled:
		return false
	}
	b, err := p.r.GetBlock(ctx, listed.Name)
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("reading block %s of pool %s: %w", listed.Name, name, err))
		return false
	}
	if p.held(b) > 0 {
		return false
	}
	f := Finding{Reason: reason, Block: b.Name, CIDR: b.Spec.CIDR, Node: b.Spec.Node, Detail: fmt.Sprintf("empty block of pool %s, %s", name, why)}
	if !p.deleteEmptyBlock(ctx, b, f) {
		return false
	}
	if !p.dry {
		if err := p.dropAffinity(ctx, b.Spec.Node, b.Name); err != nil {
			p.errs = append(p.errs, err)
		}
	}
	return true
}

// deleteEmptyBlock deletes b at the version judged, or records f in a dry
// run; it says whether the block is gone.
func (p *pass) deleteEmptyBlock(ctx context.Context, b *v1alpha1.IPAMBlock, f Finding) bool {
	if p.dry {
		p.findings = append(p.findings, f)
		return true
	}
	err := p.c.store.DeleteBlock(ctx, b.Name, b.ResourceVersion)
	switch {
	case apierrors.IsConflict(err):
		return false // changed since: the next pass decides again
	case apierrors.IsNotFound(err):
		return true
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("deleting block %s (%s): %w", b.Name, f.Detail, err))
		return false
	}
	p.res.BlocksDeleted = append(p.res.BlocksDeleted, b.Name)
	p.c.log.Info("deleted an empty block", "block", b.Spec.CIDR, "node", b.Spec.Node, "why", f.Detail)
	return true
}

// dropAffinity removes block from node's affinity. A node whose affinity
// still names a deleted block skips it, so losing this race costs nothing.
func (p *pass) dropAffinity(ctx context.Context, node, block string) error {
	if node == "" {
		return nil
	}
	for attempt := 0; attempt < 5; attempt++ {
		aff, err := p.c.store.GetAffinity(ctx, node)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the block index of node %s: %w", node, err)
		}
		i := slices.Index(aff.Spec.Blocks, block)
		if i < 0 {
			return nil
		}
		aff.Spec.Blocks = slices.Delete(aff.Spec.Blocks, i, i+1)
		_, err = p.c.store.UpdateAffinity(ctx, aff)
		if err == nil || apierrors.IsNotFound(err) {
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("dropping block %s from the index of node %s: %w", block, node, err)
		}
	}
	return nil
}
