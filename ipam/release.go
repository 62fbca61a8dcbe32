package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// ReleaseAddress frees addr when handle still holds it ("" for whichever
// handle does): what `calyxctl ipam release` runs once it has decided. It
// returns the allocation it removed, or nil when addr is free or another
// handle holds it now: the decision was taken on an older read, and does
// not carry over to a new owner.
func (m *IPAM) ReleaseAddress(ctx context.Context, addr netip.Addr, handle string) (*v1alpha1.Allocation, error) {
	blocks, err := m.store.ListBlocks(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("listing IPAM blocks: %w", err)
	}
	i := slices.IndexFunc(blocks, func(b v1alpha1.IPAMBlock) bool {
		cidr, err := parseBlock(&b)
		return err == nil && cidr.Contains(addr)
	})
	if i < 0 {
		return nil, nil
	}
	var removed *v1alpha1.Allocation
	updated, err := m.changeBlock(ctx, blocks[i].Name, func(b *v1alpha1.IPAMBlock) (bool, error) {
		removed = releaseAt(b, addr, handle)
		return removed != nil, nil
	})
	if err != nil || updated == nil {
		return nil, err
	}
	return removed, m.unindex(ctx, updated, removed.Handle)
}

// unindex brings handle's index entry in line with b after one of its
// addresses there was released: deleted when it holds no other.
func (m *IPAM) unindex(ctx context.Context, b *v1alpha1.IPAMBlock, handle string) error {
	name := HandleObjectName(handle)
	h, err := m.store.GetHandle(ctx, name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading handle %s: %w", handle, err)
	}
	if h.Spec.Block != b.Name {
		return nil // indexed elsewhere by a later allocation: not ours
	}
	var left []int
	for _, a := range b.Spec.Allocations {
		if a.Handle == handle {
			left = append(left, a.Ordinal)
		}
	}
	if len(left) == 0 {
		err = m.store.DeleteHandle(ctx, name)
	} else {
		h.Spec.Ordinals = left
		_, err = m.store.UpdateHandle(ctx, h)
	}
	// A handle changed meanwhile is the garbage collector's to judge.
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("updating handle %s: %w", handle, err)
	}
	return nil
}
