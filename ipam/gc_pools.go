package ipam

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// ReasonBlockOfDisabledPool: an empty block of a disabled pool, which
// gives no new address; the pass deletes it and drops it from its node's
// affinity. That is how a disabled pool's blocks go away as its pods do,
// without a restart (Calico's pool migration).
const ReasonBlockOfDisabledPool = "block-of-disabled-pool"

// disabledPools are the names of the pools that are disabled, as listed.
func (p *pass) disabledPools(ctx context.Context) map[string]bool {
	pools, err := p.r.ListPools(ctx)
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("listing IP pools: %w", err))
		return nil
	}
	out := map[string]bool{}
	for _, pl := range pools {
		if pl.Spec.Disabled {
			out[pl.Name] = true
		}
	}
	return out
}

// retireBlock deletes listed when its pool is disabled and it holds no
// address, confirmed on the pool and the block as they are now; it says
// whether it did.
func (p *pass) retireBlock(ctx context.Context, listed *v1alpha1.IPAMBlock, disabled map[string]bool) bool {
	if !disabled[listed.Spec.Pool] || p.held(listed) > 0 {
		return false
	}
	// The list may be older than a pool enabled again, or an address
	// allocated since; the deletion's precondition catches the rest.
	pool, err := p.r.GetPool(ctx, listed.Spec.Pool)
	if err != nil || !pool.Spec.Disabled {
		if err != nil && !apierrors.IsNotFound(err) {
			p.errs = append(p.errs, fmt.Errorf("reading pool %s: %w", listed.Spec.Pool, err))
		}
		return false
	}
	b, err := p.r.GetBlock(ctx, listed.Name)
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		p.errs = append(p.errs, fmt.Errorf("reading block %s of disabled pool %s: %w", listed.Name, pool.Name, err))
		return false
	}
	if p.held(b) > 0 {
		return false
	}
	if p.dry {
		p.findings = append(p.findings, Finding{Reason: ReasonBlockOfDisabledPool, Block: b.Name, CIDR: b.Spec.CIDR, Node: b.Spec.Node,
			Detail: fmt.Sprintf("empty block of pool %s, which is disabled", pool.Name)})
		return true
	}
	err = p.c.store.DeleteBlock(ctx, b.Name, b.ResourceVersion)
	switch {
	case apierrors.IsConflict(err):
		return false // changed since: the next pass decides again
	case apierrors.IsNotFound(err):
		return true
	case err != nil:
		p.errs = append(p.errs, fmt.Errorf("deleting block %s of disabled pool %s: %w", b.Name, pool.Name, err))
		return false
	}
	p.res.BlocksDeleted = append(p.res.BlocksDeleted, b.Name)
	p.c.log.Info("deleted an empty block of a disabled pool", "block", b.Spec.CIDR, "pool", pool.Name, "node", b.Spec.Node)
	if err := p.dropAffinity(ctx, b.Spec.Node, b.Name); err != nil {
		p.errs = append(p.errs, err)
	}
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
