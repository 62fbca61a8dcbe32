package v1alpha1

import (
	"encoding/binary"
	"net/netip"
)

// AddrAt is the address at ordinal o of cidr: an Allocation's Ordinal in
// its block's CIDR, or a block's offset in its pool. ok says whether that
// address lies inside cidr. An ordinal past the end (which only a
// hand-edited object holds) still names the address it would be, so that
// a caller that merely reports it has something to print.
func AddrAt(cidr netip.Prefix, o int) (addr netip.Addr, ok bool) {
	base := cidr.Addr().As4()
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(base[:])+uint32(o))
	return netip.AddrFrom4(b), o >= 0 && o < 1<<(32-cidr.Bits())
}
