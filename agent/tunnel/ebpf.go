package tunnel

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nldump"
)

// The eBPF datapath.
//
// tunl0 is one end of a veth pair whose other end, tunl0-encap, runs
// calyx_encap at tc ingress; the underlay NIC runs calyx_decap at tc
// ingress (bpf/calyx.c says what they do).
//
// Why a veth pair and not a dummy device with the program on its egress:
// tcpdump taps a device's outgoing packets in dev_hard_start_xmit, after tc
// egress has run, so a packet that a tc egress program redirects is never
// seen on that device. Crossing the pair is a real transmission on tunl0,
// so the capture shows every inner packet the node sends; the receive side
// enters tunl0 through bpf_redirect(…, BPF_F_INGRESS), which passes the
// same taps. (This kernel has no dummy driver anyway, and a TUN device
// drops what it transmits when nobody reads it.) A macvlan tunl0 on the NIC,
// encapsulating at the NIC's egress, would skip the pair's hop, but it gets
// a copy of every broadcast on the underlay (tcpdump on tunl0 would show
// them), it ties tunl0 to one NIC, and without its program it would put
// pod packets on the wire unencapsulated; and measured in the lab, pod-to-pod
// TCP through the pair, through a tc egress program on tunl0 and through a
// macvlan tunl0 differed by less than the run-to-run spread (BenchmarkPodToPod
// has the figures against plain routing and VXLAN). tunl0 is NOARP: routes
// "via <nodeIP> dev tunl0 onlink" need no neighbour resolution, and the
// next hop they name is only a routing key; the outer destination comes
// from the remote_blocks map, which the agent fills with the same peers.
//
// Nothing is pinned. The programs stay attached (tc filters hold them, and
// they hold the maps) when the agent exits; a new agent finds the maps
// through the filters' program IDs. The filter names carry a hash of the
// embedded object, so a newer agent replaces programs that differ, and
// adopts, without touching, programs that are its own.

const (
	// EncapDeviceName is tunl0's veth peer, where encapsulation runs.
	EncapDeviceName = "tunl0-encap"

	// filterPriority and filterHandle place calyx's tc filters; any other
	// filter on the same hooks keeps its own place.
	filterPriority = 0xca1
	filterHandle   = 1

	encapFilterPrefix     = "calyx_encap"
	decapFilterPrefix     = "calyx_decap"
	encapFastFilterPrefix = "calyx_encap_fast"
)

// objectHash identifies the embedded programs in the filter names.
var objectHash = func() string {
	sum := sha256.Sum256(_CalyxBytes)
	return hex.EncodeToString(sum[:6])
}()

func filterName(prefix string) string { return prefix + ":" + objectHash }

// EBPF is tunl0 carried by tc BPF programs.
type EBPF struct {
	mu   sync.Mutex
	h    *netlink.Handle
	log  *slog.Logger
	spec *ebpf.CollectionSpec

	// maps are this datapath's maps, created or adopted by the first Set.
	maps *calyxMaps
	// mapIDs tell the adopted programs that use maps from programs that do
	// not.
	mapIDs map[ebpf.MapID]bool
	// nic is the NIC that calyx_decap was last put on; swept says that
	// decap filters on other devices have been removed once.
	nic    string
	swept  bool
	closed bool
	// path is the way SetPath last chose. Until told otherwise, every
	// packet crosses tunl0 (PathObservable, the zero value).
	path Path
	// attached says this build's programs are on every hook (a Set went
	// through): until then, adopted maps may still serve an older build's.
	attached bool
}

var _ Datapath = (*EBPF)(nil)

func newEBPF(h *netlink.Handle, opts Options) (*EBPF, error) {
	// Only kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; on
	// others this does nothing.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lifting the memlock limit for BPF maps: %w (the agent needs CAP_SYS_RESOURCE on kernels before 5.11)", err)
	}
	spec, err := loadCalyx()
	if err != nil {
		return nil, fmt.Errorf("reading the embedded BPF programs: %w (rebuild the agent)", err)
	}
	return &EBPF{h: h, log: opts.Logger.With("datapath", ModeEBPF), spec: spec}, nil
}

// isEBPFDevice says whether link is tunl0 as the eBPF datapath makes it.
func isEBPFDevice(h *netlink.Handle, link netlink.Link) bool {
	if link.Type() != "veth" {
		return false
	}
	peer, err := h.LinkByIndex(link.Attrs().ParentIndex)
	return err == nil && peer.Attrs().Name == EncapDeviceName
}

// Mode implements Datapath.
func (d *EBPF) Mode() Mode { return ModeEBPF }

func validateEBPF(cfg desired.TunnelConfig) error {
	if err := validateCommon(cfg); err != nil {
		return err
	}
	if cfg.UnderlayIface == "" {
		return errors.New("no underlay interface: the eBPF datapath needs the NIC that carries IPIP (UnderlayIface)")
	}
	if !cfg.UnderlayIP.Is4() {
		return fmt.Errorf("underlay address %v is not IPv4: the eBPF datapath needs the node's IPv4 address as the outer source", cfg.UnderlayIP)
	}
	seen := map[netip.Prefix]netip.Addr{}
	for _, p := range cfg.Peers {
		if !p.CIDR.IsValid() || !p.CIDR.Addr().Is4() || !p.NodeIP.Is4() {
			return fmt.Errorf("peer %v via %v is not an IPv4 block and node address", p.CIDR, p.NodeIP)
		}
		c := p.CIDR.Masked()
		if n, ok := seen[c]; ok && n != p.NodeIP {
			return fmt.Errorf("block %v has two nodes, %v and %v: the desired state must name one", c, n, p.NodeIP)
		}
		seen[c] = p.NodeIP
	}
	for _, a := range cfg.NodeIPs {
		if !a.Is4() {
			return fmt.Errorf("node address %v is not IPv4", a)
		}
	}
	return nil
}

// Set implements Datapath. Map contents are synced before programs are
// attached, so a program never runs on half-filled maps, and nothing that
// already matches is touched, so a new agent adopts the datapath without
// losing a packet.
func (d *EBPF) Set(cfg desired.TunnelConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("tunnel datapath is closed: create a new one with tunnel.New")
	}
	if err := validateEBPF(cfg); err != nil {
		return err
	}

	nic, err := d.h.LinkByName(cfg.UnderlayIface)
	if err != nil {
		return fmt.Errorf("underlay interface %q: %w (check the agent's underlay interface setting)", cfg.UnderlayIface, err)
	}
	tun, encap, err := d.ensureDevices(cfg)
	if err != nil {
		return err
	}

	if d.maps == nil {
		if err := d.adoptOrCreateMaps(encap, nic); err != nil {
			return err
		}
	}
	tunMAC := tun.Attrs().HardwareAddr
	if len(tunMAC) != 6 {
		return fmt.Errorf("%s has no Ethernet address (%v): delete it (ip link del %s) and let the agent recreate it", DeviceName, tunMAC, DeviceName)
	}
	want := configValue(cfg.UnderlayIP, nic.Attrs().Index, tun.Attrs().Index, tunMAC)
	want.Fast = d.fastValue()
	if err := d.syncConfig(want); err != nil {
		return err
	}
	if err := d.syncPeers(cfg.Peers); err != nil {
		return err
	}
	if err := d.syncNodes(cfg.NodeIPs); err != nil {
		return err
	}

	if err := d.attach(encap, netlink.HANDLE_MIN_INGRESS, encapFilterPrefix); err != nil {
		return err
	}
	if err := d.attach(tun, netlink.HANDLE_MIN_EGRESS, encapFastFilterPrefix); err != nil {
		return err
	}
	if err := d.attach(nic, netlink.HANDLE_MIN_INGRESS, decapFilterPrefix); err != nil {
		return err
	}
	if !d.attached {
		d.attached = true
		if want.Fast != d.fastValue() {
			want.Fast = d.fastValue()
			if err := d.syncConfig(want); err != nil {
				return err
			}
		}
	}
	if !d.swept || d.nic != cfg.UnderlayIface {
		if err := sweepDecap(d.h, d.log, nic.Attrs().Index); err != nil {
			return err
		}
		d.swept, d.nic = true, cfg.UnderlayIface
	}
	return nil
}

// fastValue is config.fast for d.path. Programs of an older build, still
// attached to maps this agent adopted until its first Set replaces them,
// read any value but 0 as fast both ways: PathFastOut is written only once
// this build's programs are in, and is observable until then.
func (d *EBPF) fastValue() uint8 {
	if d.path == PathFastOut && !d.attached {
		return uint8(PathObservable)
	}
	return uint8(d.path)
}

// ensureDevices creates or adopts the tunl0/tunl0-encap pair and gives it
// cfg's MTU, addresses and state.
func (d *EBPF) ensureDevices(cfg desired.TunnelConfig) (tun, encap netlink.Link, err error) {
	tun, err = d.h.LinkByName(DeviceName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = DeviceName
		attrs.MTU = cfg.MTU
		veth := &netlink.Veth{LinkAttrs: attrs, PeerName: EncapDeviceName, PeerMTU: uint32(cfg.MTU)}
		if err := d.h.LinkAdd(veth); err != nil {
			return nil, nil, fmt.Errorf("creating %s (a veth pair with %s): %w", DeviceName, EncapDeviceName, err)
		}
		d.log.Info("created tunnel device", "device", DeviceName, "peer", EncapDeviceName)
		if tun, err = d.h.LinkByName(DeviceName); err != nil {
			return nil, nil, fmt.Errorf("looking up %s after creating it: %w", DeviceName, err)
		}
	case err != nil:
		return nil, nil, fmt.Errorf("looking up %s: %w", DeviceName, err)
	case tun.Type() == "ipip":
		return nil, nil, fmt.Errorf("%s is the kernel's ipip device (the ipip module is loaded): run the agent with --ipip-datapath=kernel (or auto)", DeviceName)
	case !isEBPFDevice(d.h, tun):
		return nil, nil, fmt.Errorf("%s exists as a %s device that calyx did not create: delete it (ip link del %s) and let the agent recreate it", DeviceName, tun.Type(), DeviceName)
	}
	if encap, err = d.h.LinkByIndex(tun.Attrs().ParentIndex); err != nil {
		return nil, nil, fmt.Errorf("looking up %s: %w", EncapDeviceName, err)
	}

	// No IPv6 on either end: no link-local address, so no router or
	// neighbour solicitations are sent into the pair to be dropped.
	for _, l := range []netlink.Link{tun, encap} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := d.h.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */); err != nil {
				return nil, nil, fmt.Errorf("turning off IPv6 addresses on %s: %w", l.Attrs().Name, err)
			}
		}
	}
	if tun.Attrs().RawFlags&unix.IFF_NOARP == 0 {
		if err := d.h.LinkSetARPOff(tun); err != nil {
			return nil, nil, fmt.Errorf("turning off ARP on %s: %w", DeviceName, err)
		}
	}
	// The peer receives what tunl0 sends: it must take tunl0's MTU.
	if encap.Attrs().MTU != cfg.MTU {
		if err := d.h.LinkSetMTU(encap, cfg.MTU); err != nil {
			return nil, nil, fmt.Errorf("setting the MTU of %s to %d: %w", EncapDeviceName, cfg.MTU, err)
		}
	}
	if encap.Attrs().Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(encap); err != nil {
			return nil, nil, fmt.Errorf("bringing %s up: %w", EncapDeviceName, err)
		}
	}
	if err := syncLink(d.h, d.log, tun, cfg); err != nil {
		return nil, nil, err
	}
	return tun, encap, nil
}

// adoptOrCreateMaps takes the maps of calyx's programs attached to links
// (same object hash only) and creates the ones it cannot find.
func (d *EBPF) adoptOrCreateMaps(links ...netlink.Link) error {
	found := map[string]*ebpf.Map{}
	for _, link := range links {
		f, err := ourFilter(d.h, link, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		if f == nil || (f.Name != filterName(encapFilterPrefix) && f.Name != filterName(decapFilterPrefix)) {
			continue
		}
		if err := d.collectMaps(f.Id, found); err != nil {
			d.log.Warn("cannot adopt the maps of an attached program; creating new ones", "device", link.Attrs().Name, "program", f.Id, "error", err)
		}
	}

	maps := map[string]*ebpf.Map{}
	for name, ms := range d.spec.Maps {
		if m, ok := found[name]; ok {
			if err := ms.Compatible(m); err == nil {
				maps[name] = m
				delete(found, name)
				d.log.Info("adopted BPF map", "map", name)
				continue
			}
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			closeAll(maps)
			closeAll(found)
			return fmt.Errorf("creating BPF map %s: %w (the agent needs CAP_BPF and CAP_NET_ADMIN)", name, err)
		}
		maps[name] = m
		d.log.Info("created BPF map", "map", name)
	}
	closeAll(found)

	d.maps = &calyxMaps{
		CalyxConfig:  maps[calyxMapCalyxConfig],
		CalyxStats:   maps[calyxMapCalyxStats],
		NodeIps:      maps[calyxMapNodeIps],
		RemoteBlocks: maps[calyxMapRemoteBlocks],
	}
	d.mapIDs = map[ebpf.MapID]bool{}
	for name, m := range maps {
		info, err := m.Info()
		if err != nil {
			return fmt.Errorf("reading BPF map %s: %w", name, err)
		}
		if id, ok := info.ID(); ok {
			d.mapIDs[id] = true
		}
	}
	return nil
}

func closeAll(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// collectMaps opens the maps program id uses into found, by name.
func (d *EBPF) collectMaps(id int, found map[string]*ebpf.Map) error {
	ids, err := programMapIDs(id)
	if err != nil {
		return err
	}
	for _, mid := range ids {
		m, err := ebpf.NewMapFromID(mid)
		if err != nil {
			return fmt.Errorf("opening map %d: %w", mid, err)
		}
		info, err := m.Info()
		if err != nil {
			m.Close()
			return fmt.Errorf("reading map %d: %w", mid, err)
		}
		if _, ok := d.spec.Maps[info.Name]; !ok || found[info.Name] != nil {
			m.Close()
			continue
		}
		found[info.Name] = m
	}
	return nil
}

func programMapIDs(id int) ([]ebpf.MapID, error) {
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("opening program %d: %w", id, err)
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("reading program %d: %w", id, err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, fmt.Errorf("the kernel does not list the maps of program %d", id)
	}
	return ids, nil
}

// ourFilter returns calyx's filter at the tc hook parent (ingress or
// egress) of link, or nil.
func ourFilter(h *netlink.Handle, link netlink.Link, parent uint32) (*netlink.BpfFilter, error) {
	filters, err := nldump.Retry(func() ([]netlink.Filter, error) {
		return h.FilterList(link, parent)
	})
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no clsact qdisc: no filters
		}
		return nil, fmt.Errorf("listing tc filters on %s: %w", link.Attrs().Name, err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Priority == filterPriority && bf.Handle == filterHandle {
			return bf, nil
		}
	}
	return nil, nil
}

// attach makes the program named by prefix the one at the tc hook parent
// of link, unless it already is, with this datapath's maps.
func (d *EBPF) attach(link netlink.Link, parent uint32, prefix string) error {
	name := link.Attrs().Name
	if err := d.ensureClsact(link); err != nil {
		return err
	}
	f, err := ourFilter(d.h, link, parent)
	if err != nil {
		return err
	}
	if f != nil && f.Name == filterName(prefix) {
		ids, err := programMapIDs(f.Id)
		if err == nil && d.usesOurMaps(ids) {
			return nil
		}
	}

	progs, err := d.loadPrograms()
	if err != nil {
		return err
	}
	defer progs.Close()
	prog := map[string]*ebpf.Program{
		encapFilterPrefix:     progs.CalyxEncap,
		encapFastFilterPrefix: progs.CalyxEncapFast,
		decapFilterPrefix:     progs.CalyxDecap,
	}[prefix]
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link.Attrs().Index,
			Parent:    parent,
			Handle:    filterHandle,
			Priority:  filterPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         filterName(prefix),
		DirectAction: true,
	}
	// Replace swaps the program atomically: no packet sees no program.
	if err := d.h.FilterReplace(filter); err != nil {
		return fmt.Errorf("attaching %s to tc %s of %s: %w", prefix, hookName(parent), name, err)
	}
	old := "none"
	if f != nil {
		old = f.Name
	}
	d.log.Info("attached BPF program", "device", name, "program", filterName(prefix), "replaced", old)
	return nil
}

func (d *EBPF) usesOurMaps(ids []ebpf.MapID) bool {
	if len(ids) == 0 {
		return false
	}
	for _, id := range ids {
		if !d.mapIDs[id] {
			return false
		}
	}
	return true
}

func (d *EBPF) loadPrograms() (*calyxPrograms, error) {
	var progs calyxPrograms
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		calyxMapCalyxConfig:  d.maps.CalyxConfig,
		calyxMapCalyxStats:   d.maps.CalyxStats,
		calyxMapNodeIps:      d.maps.NodeIps,
		calyxMapRemoteBlocks: d.maps.RemoteBlocks,
	}}
	if err := d.spec.LoadAndAssign(&progs, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("the kernel rejected calyx's BPF programs: %+v (the eBPF datapath needs Linux 5.10 or later)", verr)
		}
		return nil, fmt.Errorf("loading calyx's BPF programs: %w (the eBPF datapath needs Linux 5.10 or later and CAP_BPF, CAP_NET_ADMIN)", err)
	}
	return &progs, nil
}

func (d *EBPF) ensureClsact(link netlink.Link) error {
	qdiscs, err := nldump.Retry(func() ([]netlink.Qdisc, error) { return d.h.QdiscList(link) })
	if err != nil {
		return fmt.Errorf("listing qdiscs on %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qdiscs {
		if q.Type() == "clsact" {
			return nil
		}
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: link.Attrs().Index,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := d.h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the clsact qdisc to %s: %w (another tool may own its ingress qdisc)", link.Attrs().Name, err)
	}
	return nil
}

// sweepDecap removes calyx_decap from every device but the one with index
// keep (none when keep is 0): after the underlay interface changed, also
// across an agent restart, and when the kernel datapath takes over from the
// eBPF one, whose program would otherwise keep taking IPIP away from the
// kernel's tunl0.
func sweepDecap(h *netlink.Handle, log *slog.Logger, keep int) error {
	qdiscs, err := nldump.Retry(func() ([]netlink.Qdisc, error) { return h.QdiscList(nil) })
	if err != nil {
		return fmt.Errorf("listing qdiscs: %w", err)
	}
	for _, q := range qdiscs {
		if q.Type() != "clsact" || q.Attrs().LinkIndex == keep {
			continue
		}
		link, err := h.LinkByIndex(q.Attrs().LinkIndex)
		if err != nil {
			continue // gone meanwhile
		}
		f, err := ourFilter(h, link, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		if f == nil || !strings.HasPrefix(f.Name, decapFilterPrefix) {
			continue
		}
		if err := h.FilterDel(f); err != nil {
			return fmt.Errorf("removing %s from %s: %w", f.Name, link.Attrs().Name, err)
		}
		log.Info("removed the eBPF datapath's program from a device that no longer needs it", "device", link.Attrs().Name, "program", f.Name)
	}
	return nil
}

// Stats implements Datapath: the per-CPU counters, summed.
func (d *EBPF) Stats() (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Stats{}, errors.New("tunnel datapath is closed: create a new one with tunnel.New")
	}
	if d.maps == nil {
		return Stats{}, nil // nothing loaded yet
	}
	var perCPU []calyxCounters
	if err := d.maps.CalyxStats.Lookup(uint32(0), &perCPU); err != nil {
		return Stats{}, fmt.Errorf("reading the datapath counters: %w", err)
	}
	var s Stats
	for _, c := range perCPU {
		s.TxPackets += c.TxPackets
		s.TxBytes += c.TxBytes
		s.TxDrops += c.TxDrops
		s.RxPackets += c.RxPackets
		s.RxBytes += c.RxBytes
		s.RxDrops += c.RxDrops
		s.RxErrors += c.RxErrors
	}
	var cfg calyxConfig
	if err := d.maps.CalyxConfig.Lookup(uint32(0), &cfg); err != nil {
		return Stats{}, fmt.Errorf("reading the datapath configuration map: %w", err)
	}
	s.Path = Path(cfg.Fast)
	return s, nil
}

// Close implements Datapath: devices, programs and maps stay in place.
func (d *EBPF) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var err error
	if d.maps != nil {
		err = d.maps.Close()
	}
	d.h.Close()
	return err
}

func hookName(parent uint32) string {
	if parent == netlink.HANDLE_MIN_EGRESS {
		return "egress"
	}
	return "ingress"
}

// SetPath switches the programs between the fast mode (PathFast: tunl0's
// device passes skipped, and with them its capture point), the observable
// one (every packet crosses tunl0, as tcpdump on tunl0 expects) and the
// half-way PathFastOut. It writes one map entry: packets in flight on the
// other path still arrive.
func (d *EBPF) SetPath(p Path) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("tunnel datapath is closed: create a new one with tunnel.New")
	}
	if p > PathFastOut {
		return fmt.Errorf("no such datapath path: %v", p)
	}
	d.path = p
	if d.maps == nil {
		return nil // the first Set writes it
	}
	var cfg calyxConfig
	if err := d.maps.CalyxConfig.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("reading the datapath configuration map: %w", err)
	}
	if cfg.Fast == d.fastValue() {
		return nil
	}
	cfg.Fast = d.fastValue()
	if err := d.maps.CalyxConfig.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("writing the datapath configuration map: %w", err)
	}
	d.log.Info("datapath path", "path", p)
	return nil
}
