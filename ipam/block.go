package ipam

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
	"strings"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// BlockName is the object name of the block with the given CIDR:
// 192.168.29.64/26 → 192-168-29-64-26.
func BlockName(cidr netip.Prefix) string {
	return strings.NewReplacer(".", "-", "/", "-").Replace(cidr.String())
}

// blockSize is the number of addresses in a block.
func blockSize(cidr netip.Prefix) int {
	return 1 << (32 - cidr.Bits())
}

// ordinalOf is the offset of addr in the block, or -1 when it is outside.
func ordinalOf(cidr netip.Prefix, addr netip.Addr) int {
	if !addr.Is4() || !cidr.Contains(addr) {
		return -1
	}
	a, b := addr.As4(), cidr.Addr().As4()
	return int((uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) -
		(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])))
}

// parseBlock reads a block's CIDR, which the API server validated.
func parseBlock(b *v1alpha1.IPAMBlock) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(b.Spec.CIDR)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("block %s has an invalid cidr %q", b.Name, b.Spec.CIDR)
	}
	return p, nil
}

// assignInBlock records a new allocation at the lowest free ordinal and
// updates the counts. It changes b only when it returns ok.
func assignInBlock(b *v1alpha1.IPAMBlock, a v1alpha1.Allocation) (netip.Addr, bool, error) {
	cidr, err := parseBlock(b)
	if err != nil {
		return netip.Addr{}, false, err
	}
	used := make(map[int]bool, len(b.Spec.Allocations))
	for _, x := range b.Spec.Allocations {
		used[x.Ordinal] = true
	}
	for o := 0; o < blockSize(cidr); o++ {
		if used[o] {
			continue
		}
		a.Ordinal = o
		insert(b, cidr, a)
		addr, _ := v1alpha1.AddrAt(cidr, o) // o < blockSize(cidr)
		return addr, true, nil
	}
	return netip.Addr{}, false, nil
}

// assignAt records a at addr's ordinal in b. When another allocation is
// there, b is left as it was and that allocation is returned.
func assignAt(b *v1alpha1.IPAMBlock, addr netip.Addr, a v1alpha1.Allocation) (*v1alpha1.Allocation, error) {
	cidr, err := parseBlock(b)
	if err != nil {
		return nil, err
	}
	o := ordinalOf(cidr, addr)
	if o < 0 {
		return nil, fmt.Errorf("%s is not in block %s", addr, cidr)
	}
	for i := range b.Spec.Allocations {
		if b.Spec.Allocations[i].Ordinal == o {
			return &b.Spec.Allocations[i], nil
		}
	}
	a.Ordinal = o
	insert(b, cidr, a)
	return nil, nil
}

// insert adds a to b's allocations, kept in ordinal order, and counts.
func insert(b *v1alpha1.IPAMBlock, cidr netip.Prefix, a v1alpha1.Allocation) {
	b.Spec.Allocations = append(b.Spec.Allocations, a)
	sort.Slice(b.Spec.Allocations, func(i, j int) bool { return b.Spec.Allocations[i].Ordinal < b.Spec.Allocations[j].Ordinal })
	setCounts(b, cidr)
}

// releaseAt removes the allocation at addr's ordinal from b when handle
// holds it ("" for any handle), and returns it; nil when there was none
// to remove.
func releaseAt(b *v1alpha1.IPAMBlock, addr netip.Addr, handle string) *v1alpha1.Allocation {
	cidr, err := parseBlock(b)
	if err != nil {
		return nil
	}
	o := ordinalOf(cidr, addr)
	for i, x := range b.Spec.Allocations {
		if x.Ordinal != o || handle != "" && x.Handle != handle {
			continue
		}
		b.Spec.Allocations = append(b.Spec.Allocations[:i:i], b.Spec.Allocations[i+1:]...)
		setCounts(b, cidr)
		return &x
	}
	return nil
}

// releaseInBlock removes the handle's allocations and returns their addresses.
func releaseInBlock(b *v1alpha1.IPAMBlock, handle string) ([]netip.Addr, error) {
	cidr, err := parseBlock(b)
	if err != nil {
		return nil, err
	}
	var released []netip.Addr
	kept := b.Spec.Allocations[:0:0]
	for _, x := range b.Spec.Allocations {
		if x.Handle == handle {
			addr, _ := v1alpha1.AddrAt(cidr, x.Ordinal)
			released = append(released, addr)
			continue
		}
		kept = append(kept, x)
	}
	b.Spec.Allocations = kept
	setCounts(b, cidr)
	return released, nil
}

// allocationsOf lists the handle's addresses in the block.
func allocationsOf(b *v1alpha1.IPAMBlock, handle string) []netip.Addr {
	cidr, err := parseBlock(b)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, x := range b.Spec.Allocations {
		if x.Handle == handle {
			addr, _ := v1alpha1.AddrAt(cidr, x.Ordinal)
			out = append(out, addr)
		}
	}
	return out
}

func setCounts(b *v1alpha1.IPAMBlock, cidr netip.Prefix) {
	b.Status.Used = len(b.Spec.Allocations)
	b.Status.Free = blockSize(cidr) - b.Status.Used
}

// newBlock is the object a node creates to claim cidr.
func newBlock(cidr netip.Prefix, pool, node string) *v1alpha1.IPAMBlock {
	b := &v1alpha1.IPAMBlock{}
	b.Name = BlockName(cidr)
	b.Labels = map[string]string{v1alpha1.LabelNode: node, v1alpha1.LabelPool: pool}
	b.Spec = v1alpha1.IPAMBlockSpec{CIDR: cidr.String(), Node: node, Pool: pool}
	setCounts(b, cidr)
	return b
}

// blockCursor enumerates the block CIDRs of a pool lazily (a /8 pool of
// /32 blocks has 16M), starting at an offset derived from the node's name:
// nodes claiming at the same time then mostly try different blocks instead
// of racing for the same first one.
type blockCursor struct {
	pool  netip.Prefix
	size  int
	n     int
	start int
}

func newBlockCursor(pool netip.Prefix, size int, node string) blockCursor {
	n := 1 << (size - pool.Bits())
	h := fnv.New32a()
	h.Write([]byte(node))
	return blockCursor{pool: pool, size: size, n: n, start: int(h.Sum32() % uint32(n))}
}

// at is the i-th block in the cursor's order, 0 <= i < n.
func (c blockCursor) at(i int) netip.Prefix {
	first, _ := v1alpha1.AddrAt(c.pool, ((c.start+i)%c.n)<<(32-c.size)) // i-th block of the pool
	return netip.PrefixFrom(first, c.size)
}
