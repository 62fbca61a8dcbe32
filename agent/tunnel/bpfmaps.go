package tunnel

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/calyx-net/calyx/agent/desired"
)

// The maps hold addresses in network byte order (the programs compare them
// with packet bytes); Go writes the key and value structs in host order, so
// an address is stored as the host-order number whose bytes are the
// address.

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func configValue(underlay netip.Addr, nicIndex, tunIndex int, tunMAC net.HardwareAddr) calyxConfig {
	c := calyxConfig{
		UnderlayIp:   be32(underlay),
		NicIfindex:   uint32(nicIndex),
		Tunl0Ifindex: uint32(tunIndex),
	}
	copy(c.Tunl0Mac[:], tunMAC)
	return c
}

// desiredPeers is the remote_blocks map that peers describe.
func desiredPeers(peers []desired.Peer) map[calyxLpmKey]uint32 {
	want := make(map[calyxLpmKey]uint32, len(peers))
	for _, p := range peers {
		c := p.CIDR.Masked()
		want[calyxLpmKey{Prefixlen: uint32(c.Bits()), Addr: be32(c.Addr())}] = be32(p.NodeIP)
	}
	return want
}

// peerFromMap is the peer a remote_blocks entry describes: the inverse of
// desiredPeers for one entry.
func peerFromMap(k calyxLpmKey, v uint32) desired.Peer {
	return desired.Peer{CIDR: netip.PrefixFrom(addrFromBE32(k.Addr), int(k.Prefixlen)), NodeIP: addrFromBE32(v)}
}

func desiredNodes(ips []netip.Addr) map[uint32]uint32 {
	want := make(map[uint32]uint32, len(ips))
	for _, a := range ips {
		want[be32(a)] = 1
	}
	return want
}

// diffMap says what turns have into want: entries to write (new or
// different) and keys to delete.
func diffMap[K comparable, V comparable](have, want map[K]V) (put map[K]V, del []K) {
	put = map[K]V{}
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			put[k] = v
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	return put, del
}

// dumpMap reads a whole map, a thousand entries a syscall where the kernel
// can (5.6 and later), else one entry at a time.
func dumpMap[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	keys, vals := make([]K, 1024), make([]V, 1024)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, err
		}
	}

	clear(out)
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// syncMap makes m hold exactly want. New and changed entries go in before
// stale ones go out, so a block that moves between nodes is never missing.
func syncMap[K comparable, V comparable](m *ebpf.Map, want map[K]V) (puts, dels int, err error) {
	have, err := dumpMap[K, V](m)
	if err != nil {
		return 0, 0, err
	}
	put, del := diffMap(have, want)
	if len(put) > 0 {
		keys, vals := make([]K, 0, len(put)), make([]V, 0, len(put))
		for k, v := range put {
			keys, vals = append(keys, k), append(vals, v)
		}
		_, err := m.BatchUpdate(keys, vals, nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for i := range keys {
				if err := m.Put(keys[i], vals[i]); err != nil {
					return 0, 0, err
				}
			}
		} else if err != nil {
			return 0, 0, err
		}
	}
	if len(del) > 0 {
		_, err := m.BatchDelete(del, nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for _, k := range del {
				if err := m.Delete(k); err != nil {
					return 0, 0, err
				}
			}
		} else if err != nil {
			return 0, 0, err
		}
	}
	return len(put), len(del), nil
}

func (d *EBPF) syncConfig(want calyxConfig) error {
	var have calyxConfig
	if err := d.maps.CalyxConfig.Lookup(uint32(0), &have); err != nil {
		return fmt.Errorf("reading the datapath configuration map: %w", err)
	}
	if have == want {
		return nil
	}
	if err := d.maps.CalyxConfig.Put(uint32(0), want); err != nil {
		return fmt.Errorf("writing the datapath configuration map: %w", err)
	}
	d.log.Info("configured datapath", "underlay_ip", addrFromBE32(want.UnderlayIp), "nic_ifindex", want.NicIfindex, "tunl0_ifindex", want.Tunl0Ifindex)
	return nil
}

func (d *EBPF) syncPeers(peers []desired.Peer) error {
	puts, dels, err := syncMap(d.maps.RemoteBlocks, desiredPeers(peers))
	if err != nil {
		return fmt.Errorf("syncing the remote blocks map: %w", err)
	}
	if puts+dels > 0 {
		d.log.Info("synced remote blocks", "written", puts, "deleted", dels, "total", len(peers))
	}
	return nil
}

func (d *EBPF) syncNodes(ips []netip.Addr) error {
	want := desiredNodes(ips)
	puts, dels, err := syncMap(d.maps.NodeIps, want)
	if err != nil {
		return fmt.Errorf("syncing the node address map: %w", err)
	}
	if puts+dels > 0 {
		d.log.Info("synced node addresses", "written", puts, "deleted", dels, "total", len(want))
	}
	return nil
}

// Contents is what the eBPF datapath's maps hold, sorted: for tests and
// for inspection (calyxctl compares it with the desired state).
type Contents struct {
	UnderlayIP netip.Addr
	NICIndex   int
	Tunl0Index int
	Tunl0MAC   net.HardwareAddr
	Peers      []desired.Peer
	NodeIPs    []netip.Addr
}

// Contents reads the maps.
func (d *EBPF) Contents() (Contents, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.maps == nil {
		return Contents{}, fmt.Errorf("the datapath has no maps yet: call Set first")
	}
	var c Contents
	var cfg calyxConfig
	if err := d.maps.CalyxConfig.Lookup(uint32(0), &cfg); err != nil {
		return c, fmt.Errorf("reading the datapath configuration map: %w", err)
	}
	c.UnderlayIP = addrFromBE32(cfg.UnderlayIp)
	c.NICIndex = int(cfg.NicIfindex)
	c.Tunl0Index = int(cfg.Tunl0Ifindex)
	c.Tunl0MAC = net.HardwareAddr(cfg.Tunl0Mac[:])

	blocks, err := dumpMap[calyxLpmKey, uint32](d.maps.RemoteBlocks)
	if err != nil {
		return c, fmt.Errorf("reading the remote blocks map: %w", err)
	}
	for k, v := range blocks {
		c.Peers = append(c.Peers, peerFromMap(k, v))
	}
	slices.SortFunc(c.Peers, func(a, b desired.Peer) int {
		return cmp.Or(comparePrefix(a.CIDR, b.CIDR), a.NodeIP.Compare(b.NodeIP))
	})

	nodes, err := dumpMap[uint32, uint32](d.maps.NodeIps)
	if err != nil {
		return c, fmt.Errorf("reading the node address map: %w", err)
	}
	for k := range nodes {
		c.NodeIPs = append(c.NodeIPs, addrFromBE32(k))
	}
	slices.SortFunc(c.NodeIPs, netip.Addr.Compare)
	return c, nil
}
