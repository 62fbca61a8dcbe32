package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// PoolUsage counts one pool's addresses. Free includes the addresses of
// blocks nobody has claimed yet.
type PoolUsage struct {
	Name   string `json:"name"`
	CIDR   string `json:"cidr"`
	Size   int    `json:"size"`
	Blocks int    `json:"blocks"`
	Used   int    `json:"used"`
	Free   int    `json:"free"`
	// NodeSelector is the pool's, as kubectl -l takes it; "<all>" for
	// every node.
	NodeSelector string `json:"nodeSelector"`
	// Nodes are the nodes it selects, when the caller knows them.
	Nodes       []string             `json:"nodes,omitempty"`
	AllowedUses []v1alpha1.IPPoolUse `json:"allowedUses,omitempty"`
	Disabled    bool                 `json:"disabled,omitempty"`
}

// BlockUsage counts one block's addresses.
type BlockUsage struct {
	Name     string   `json:"name"`
	CIDR     string   `json:"cidr"`
	Node     string   `json:"node"`
	Pool     string   `json:"pool"`
	Used     int      `json:"used"`
	Free     int      `json:"free"`
	Borrowed []string `json:"borrowed,omitempty"` // addresses used on other nodes
}

// Usage is the whole IPAM picture, for calyxctl and metrics.
type Usage struct {
	Pools  []PoolUsage  `json:"pools"`
	Blocks []BlockUsage `json:"blocks"`
}

// Usage reads every pool and block.
func (m *IPAM) Usage(ctx context.Context) (Usage, error) {
	pools, err := m.store.ListPools(ctx)
	if err != nil {
		return Usage{}, fmt.Errorf("listing IP pools: %w", err)
	}
	blocks, err := m.store.ListBlocks(ctx, nil)
	if err != nil {
		return Usage{}, fmt.Errorf("listing IPAM blocks: %w", err)
	}
	var u Usage
	byPool := map[string]*PoolUsage{}
	for _, p := range pools {
		size := 0
		if c, err := netip.ParsePrefix(p.Spec.CIDR); err == nil {
			size = 1 << (32 - c.Bits())
		}
		u.Pools = append(u.Pools, PoolUsage{Name: p.Name, CIDR: p.Spec.CIDR, Size: size, Free: size,
			NodeSelector: SelectorString(&p), AllowedUses: p.Spec.AllowedUses, Disabled: p.Spec.Disabled})
	}
	for i := range u.Pools {
		byPool[u.Pools[i].Name] = &u.Pools[i]
	}
	for _, b := range blocks {
		cidr, err := parseBlock(&b)
		if err != nil {
			return Usage{}, err
		}
		bu := BlockUsage{Name: b.Name, CIDR: b.Spec.CIDR, Node: b.Spec.Node, Pool: b.Spec.Pool,
			Used: len(b.Spec.Allocations), Free: blockSize(cidr) - len(b.Spec.Allocations)}
		for _, a := range b.Spec.Allocations {
			if a.Node != "" && a.Node != b.Spec.Node {
				addr, _ := v1alpha1.AddrAt(cidr, a.Ordinal)
				bu.Borrowed = append(bu.Borrowed, addr.String())
			}
		}
		u.Blocks = append(u.Blocks, bu)
		if p := byPool[b.Spec.Pool]; p != nil {
			p.Blocks++
			p.Used += bu.Used
			p.Free -= bu.Used
		}
	}
	sort.Slice(u.Blocks, func(i, j int) bool { return u.Blocks[i].Name < u.Blocks[j].Name })
	return u, nil
}
