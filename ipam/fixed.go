package ipam

import (
	"context"
	"fmt"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// assignAddr allocates exactly addr (Calico's ipAddrs): in its block,
// claimed for node when nobody has it, borrowed when another node has.
// The node's block cap does not apply: no other block holds that address.
// It runs under the node's lock, after the handle's lookup.
func (m *IPAM) assignAddr(ctx context.Context, node string, addr netip.Addr, alloc v1alpha1.Allocation) (Assignment, error) {
	if !addr.Is4() {
		return Assignment{}, fmt.Errorf("%w: %s is not an IPv4 address", ErrOutsidePools, addr)
	}
	all, err := m.store.ListPools(ctx)
	if err != nil {
		return Assignment{}, fmt.Errorf("listing IP pools: %w", err)
	}
	p, _, ok := poolFor(all, addr)
	if !ok {
		return Assignment{}, fmt.Errorf("%w: %s is in none of the pools (%s)", ErrOutsidePools, addr, poolList(all))
	}
	c := &poolChoice{m: m, node: node, use: useOf(alloc.Type)}
	why, err := unusable(p, node, c.use, c.nodeLabels(ctx))
	if err != nil {
		return Assignment{}, err
	}
	if why != "" {
		return Assignment{}, fmt.Errorf("%w: %s is in pool %s (%s), which cannot give it to node %s: %s", ErrOutsidePools, addr, p.Name, p.Spec.CIDR, node, why)
	}
	b, err := m.blockOf(ctx, p, addr, node)
	if err != nil {
		return Assignment{}, err
	}
	name := b.Name
	for attempt := 0; ; attempt++ {
		nb := b.DeepCopy()
		holder, err := assignAt(nb, addr, alloc)
		if err != nil {
			return Assignment{}, err
		}
		if holder != nil && holder.Handle == alloc.Handle {
			break // a lost answer of an earlier try: the address is ours
		}
		if holder != nil {
			return Assignment{}, fmt.Errorf("%w: %s is held by %s", ErrAddressInUse, addr, Holder(holder))
		}
		if _, err = m.store.UpdateBlock(ctx, nb); err == nil {
			break
		}
		if !apierrors.IsConflict(err) {
			return Assignment{}, fmt.Errorf("updating block %s: %w", name, err)
		}
		if attempt >= m.opts.MaxRetries {
			return Assignment{}, fmt.Errorf("updating block %s: still conflicting after %d retries: %w", name, attempt, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return Assignment{}, err
		}
		if b, err = m.store.GetBlock(ctx, name); err != nil {
			return Assignment{}, fmt.Errorf("re-reading block %s: %w", name, err)
		}
	}
	cidr, _ := parseBlock(b)
	return m.index(ctx, node, Assignment{Addr: addr, Block: cidr, Borrowed: b.Spec.Node != node}, alloc)
}

// blockOf reads the block of p that holds addr, claiming it for node when
// it does not exist yet.
func (m *IPAM) blockOf(ctx context.Context, p *v1alpha1.IPPool, addr netip.Addr, node string) (*v1alpha1.IPAMBlock, error) {
	size := p.Spec.BlockSize
	if size == 0 {
		size = 26
	}
	cidr := netip.PrefixFrom(addr, size).Masked()
	b, err := m.store.GetBlock(ctx, BlockName(cidr))
	if err == nil || !apierrors.IsNotFound(err) {
		if err != nil {
			return nil, fmt.Errorf("reading block %s: %w", cidr, err)
		}
		return b, nil
	}
	b, err = m.store.CreateBlock(ctx, newBlock(cidr, p.Name, node))
	if apierrors.IsAlreadyExists(err) {
		// Another node claimed it first: borrow from it.
		if b, err = m.store.GetBlock(ctx, BlockName(cidr)); err != nil {
			return nil, fmt.Errorf("reading block %s: %w", cidr, err)
		}
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("claiming block %s: %w", cidr, err)
	}
	if err := m.addAffinity(ctx, node, b.Name); err != nil {
		return nil, err
	}
	m.log.Info("claimed block", "block", cidr, "node", node, "pool", p.Name, "for", addr)
	return b, nil
}

// Holder names an allocation's owner for a user: in the error `kubectl
// describe pod` shows, and in calyxctl.
func Holder(a *v1alpha1.Allocation) string {
	switch {
	case a.Type == v1alpha1.AllocationTunnel:
		return fmt.Sprintf("the tunl0 of node %s", a.Node)
	case a.Pod != "":
		return fmt.Sprintf("pod %s/%s on node %s (container %s)", a.Namespace, a.Pod, a.Node, shortID(a.ContainerID))
	}
	return fmt.Sprintf("handle %s on node %s", a.Handle, a.Node)
}
