package tunnel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

// The eBPF datapath against the real kernel, in the lab of netns_test.go:
// the reference scenario's client pod on learn-k8s-3 talks to the server
// pod on learn-k8s-2 across the underlay, IPIP-encapsulated by the
// programs under test.

func startLab(t *testing.T) (l *lab, server, client *labNode) {
	t.Helper()
	l = newLab(t)
	server, client = l.nodes[0], l.nodes[1]
	for _, n := range l.nodes {
		n.startEBPF(t)
		n.routeViaTunnel(t)
	}
	return l, server, client
}

func TestEBPFCarriesPodTraffic(t *testing.T) {
	for _, p := range []Path{PathObservable, PathFast, PathFastOut} {
		t.Run(p.String(), func(t *testing.T) { carriesPodTraffic(t, p) })
	}
}

// carriesPodTraffic: pings, TCP and bulk TCP between pods of two nodes, as
// the kernel's ipip would put them on the wire; tunl0 shows the inner
// packets both ways in the observable mode, none in the fast one, and the
// arriving ones only when only the way out is fast. That half-way path is
// for a strict rp_filter, so its nodes run with one.
func carriesPodTraffic(t *testing.T, path Path) {
	l, server, client := startLab(t)
	for _, n := range l.nodes {
		must(t, n.dp.(*EBPF).SetPath(path), n.name+": SetPath")
		if path == PathFastOut {
			n.ns.Sysctl(t, "net/ipv4/conf/all/rp_filter", "1")
			n.ns.Sysctl(t, "net/ipv4/conf/ens160/rp_filter", "1")
		}
	}

	nic := startCapture(t, server.ns, "ens160")
	tun := startCapture(t, server.ns, DeviceName)

	if got := client.pod.Ping(t, server.podIP, 3); got != 3 {
		t.Fatalf("ping %v from the client pod: %d of 3 answered", server.podIP, got)
	}
	// The node itself reaches remote pods too, from tunl0's address.
	if got := client.ns.Ping(t, server.podIP, 1); got != 1 {
		t.Fatalf("ping %v from the client's node: no answer", server.podIP)
	}

	port := netip.AddrPortFrom(server.podIP, 8080)
	listenTCP(t, server.pod, port)
	conn := dialTCP(t, client.pod, port)
	r := bufio.NewReader(conn)
	seen, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading from the server pod: %v", err)
	}
	if got := strings.TrimSpace(seen); got != client.podIP.String() {
		t.Errorf("the server pod saw the client as %s, want the client pod's own IP %s", got, client.podIP)
	}

	// Bulk TCP: GSO super-packets must be encapsulated whole, not stall.
	sendBulk(t, conn, r, 256<<20)

	nicFrames, tunFrames := nic.stop(), tun.stop()

	// On the NIC: protocol 4 between the node addresses, the pods inside.
	in, out := 0, 0
	for _, f := range nicFrames {
		p := f.IP
		if p.Proto != 4 || p.Inner == nil {
			continue
		}
		switch {
		case !f.Outgoing && p.Src == client.ip && p.Dst == server.ip && p.Inner.Src == client.podIP && p.Inner.Dst == server.podIP:
			in++
		case f.Outgoing && p.Src == server.ip && p.Dst == client.ip && p.Inner.Src == server.podIP && p.Inner.Dst == client.podIP:
			out++
		case p.Inner.Src == client.tunnelIP || p.Inner.Dst == client.tunnelIP:
			// the ping from the client's node
		default:
			t.Errorf("unexpected IPIP on the server's NIC: %v", p)
			continue
		}
		// The kernel's ipip format: valid checksum, TTL and DF from the
		// inner packet.
		if !p.CsumOK || p.TTL != p.Inner.TTL || p.DF != p.Inner.DF {
			t.Errorf("outer header does not follow the inner one as the kernel's ipip does: %v (checksum ok %v)", p, p.CsumOK)
		}
	}
	if in == 0 || out == 0 {
		t.Errorf("capture on the server's ens160: %d IPIP packets in (%v > %v carrying %v > %v) and %d out, want both", in, client.ip, server.ip, client.podIP, server.podIP, out)
	}
	for _, f := range nicFrames {
		if f.IP.Src == client.podIP || f.IP.Dst == client.podIP {
			t.Errorf("pod traffic crossed the underlay unencapsulated: %v", f.IP)
			break
		}
	}

	// On tunl0: the inner packets, both ways.
	tin, tout := 0, 0
	for _, f := range tunFrames {
		switch {
		case f.IP.Proto == 4:
			t.Errorf("tunl0 showed an outer header: %v", f.IP)
		case !f.Outgoing && f.IP.Src == client.podIP && f.IP.Dst == server.podIP:
			tin++
		case f.Outgoing && f.IP.Src == server.podIP && f.IP.Dst == client.podIP:
			tout++
		}
	}
	switch path {
	case PathObservable:
		if tin == 0 || tout == 0 {
			t.Errorf("capture on tunl0: %d inner packets in and %d out, want both", tin, tout)
		}
	case PathFast:
		if len(tunFrames) > 0 {
			t.Errorf("fast mode: tunl0 showed %d packets, want none (the packets crossed its device passes)", len(tunFrames))
		}
	case PathFastOut:
		if tin == 0 || tout != 0 {
			t.Errorf("fast out only: tunl0 showed %d inner packets in and %d out, want arriving ones only", tin, tout)
		}
	}
	t.Logf("server NIC: %d IPIP in, %d out; tunl0: %d in, %d out", in, out, tin, tout)

	for _, n := range l.nodes {
		s, err := n.dp.Stats()
		must(t, err, "Stats")
		t.Logf("%s: %+v", n.name, s)
		if s.TxPackets == 0 || s.RxPackets == 0 || s.TxBytes == 0 || s.RxBytes == 0 {
			t.Errorf("%s: counters did not move: %+v", n.name, s)
		}
		if s.TxDrops != 0 || s.RxDrops != 0 || s.RxErrors != 0 {
			t.Errorf("%s: drops or errors on good traffic: %+v", n.name, s)
		}
		if s.Path != path {
			t.Errorf("%s: Stats says path %v, want %v", n.name, s.Path, path)
		}
	}
}

// cmpNetip compares addresses and prefixes by value.
var cmpNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

// sendBulk sends n bytes on conn, whose server answers with the count it
// received (listenTCP), and fails the test if they do not all arrive.
func sendBulk(t *testing.T, conn *net.TCPConn, r *bufio.Reader, n int) {
	t.Helper()
	start := time.Now()
	conn.SetDeadline(start.Add(60 * time.Second))
	if _, err := io.CopyN(conn, zeroReader{}, int64(n)); err != nil {
		t.Fatalf("sending %d MiB to the server pod: %v", n>>20, err)
	}
	conn.CloseWrite()
	count, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the server's byte count: %v", err)
	}
	if got, _ := strconv.Atoi(strings.TrimSpace(count)); got != n {
		t.Fatalf("the server pod received %d bytes, want %d", got, n)
	}
	elapsed := time.Since(start)
	t.Logf("bulk TCP: %d MiB in %v (%.1f Gbit/s)", n>>20, elapsed.Round(time.Millisecond), float64(n)*8/elapsed.Seconds()/1e9)
}

// TestEBPFBulkTCPOnANICWithoutIPIPOffload makes the client's NIC unable to
// take GSO packets (a gso_max_size below one segment, as for a NIC without
// tx-ipxip4-segmentation), so the kernel must cut the encapsulated
// super-packets itself: without the ipip module, with its built-in IPIP
// GSO. Bulk TCP must still flow, in segments that fit the underlay MTU.
func TestEBPFBulkTCPOnANICWithoutIPIPOffload(t *testing.T) {
	for _, fast := range []bool{false, true} {
		t.Run(map[bool]string{false: "observable", true: "fast"}[fast], func(t *testing.T) { bulkWithoutOffload(t, fast) })
	}
}

func bulkWithoutOffload(t *testing.T, fast bool) {
	l, server, client := startLab(t)
	for _, n := range l.nodes {
		must(t, n.dp.(*EBPF).SetPath(map[bool]Path{false: PathObservable, true: PathFast}[fast]), n.name+": SetPath")
	}
	must(t, client.nl.LinkSetGSOMaxSize(linkByName(t, client.nl, "ens160"), labMTU), "limiting GSO on the client's NIC")
	nic := startCapture(t, server.ns, "ens160")

	port := netip.AddrPortFrom(server.podIP, 8081)
	listenTCP(t, server.pod, port)
	conn := dialTCP(t, client.pod, port)
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatalf("reading from the server pod: %v", err)
	}
	sendBulk(t, conn, r, 64<<20)

	frames, largest, bad := 0, 0, 0
	for _, f := range nic.stop() {
		if f.Outgoing || f.IP.Proto != 4 {
			continue
		}
		frames++
		largest = max(largest, f.Len)
		if !f.IP.CsumOK || f.IP.Inner == nil || f.IP.Inner.Src != client.podIP {
			bad++
		}
	}
	if frames == 0 || largest > 14+labMTU || bad > 0 {
		t.Errorf("server NIC saw %d IPIP frames, largest %d bytes (want at most %d), %d malformed", frames, largest, 14+labMTU, bad)
	}
	t.Logf("%d IPIP frames, largest %d bytes", frames, largest)
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestEBPFDropsIPIPFromOutsiders(t *testing.T) {
	l, server, client := startLab(t)

	port := netip.AddrPortFrom(server.podIP, 9999)
	udp := listenUDP(t, server.pod, port)
	nic := startCapture(t, server.ns, "ens160")
	before, err := server.dp.Stats()
	must(t, err, "Stats")

	// From a namespace on the underlay that is not a node: forged as if from
	// the client pod.
	const n = 5
	forged := udpPacket(netip.AddrPortFrom(client.podIP, 5555), port, 0, []byte("forged"))
	sendIPIP(t, l.outsider, server.ip, outerHeader{}, forged, n)

	waitFor(t, "the forged packets on the server's NIC", 2*time.Second, func() bool {
		return countIPIP(nic.snapshot(), l.outIP, server.ip) == n
	})
	after, err := server.dp.Stats()
	must(t, err, "Stats")
	if got := after.RxDrops - before.RxDrops; got != n {
		t.Errorf("sent %d IPIP packets from %v (not a node); the drop counter rose by %d", n, l.outIP, got)
	}
	udp.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 100)
	if k, from, err := udp.ReadFrom(buf); err == nil {
		t.Fatalf("the server pod received %q from %v, sent by a namespace that is not a node", buf[:k], from)
	}

	// The same packet from the client's node is delivered: the drop above
	// is the source check, not a malformed packet.
	sendIPIP(t, client.ns, server.ip, outerHeader{}, forged, 1)
	udp.SetReadDeadline(time.Now().Add(2 * time.Second))
	k, from, err := udp.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the same IPIP packet from node %v was not delivered: %v", client.ip, err)
	}
	if string(buf[:k]) != "forged" || from.(*net.UDPAddr).IP.String() != client.podIP.String() {
		t.Errorf("delivered %q from %v, want %q from %v", buf[:k], from, "forged", client.podIP)
	}
	final, err := server.dp.Stats()
	must(t, err, "Stats")
	if final.RxDrops != after.RxDrops {
		t.Errorf("IPIP from a node was counted as dropped: %+v", final)
	}
}

func countIPIP(frames []frame, src, dst netip.Addr) int {
	n := 0
	for _, f := range frames {
		if !f.Outgoing && f.IP.Proto == 4 && f.IP.Src == src && f.IP.Dst == dst {
			n++
		}
	}
	return n
}

// attachedState is what the datapath owns in a node, as text-comparable
// values: the programs' IDs and names on both hooks and the device.
type attachedState struct {
	Encap, Decap   string
	Tunl0Index     int
	Tunl0Addresses []string
}

func readAttached(t *testing.T, n *labNode) attachedState {
	t.Helper()
	var s attachedState
	for dev, dst := range map[string]*string{EncapDeviceName: &s.Encap, "ens160": &s.Decap} {
		filters, err := n.nl.FilterList(linkByName(t, n.nl, dev), netlink.HANDLE_MIN_INGRESS)
		must(t, err, "listing filters on "+dev)
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok {
				*dst += fmt.Sprintf("%s id=%d prio=%d;", bf.Name, bf.Id, bf.Priority)
			}
		}
	}
	tun := linkByName(t, n.nl, DeviceName)
	s.Tunl0Index = tun.Attrs().Index
	addrs, err := n.nl.AddrList(tun, netlink.FAMILY_V4)
	must(t, err, "listing tunl0's addresses")
	for _, a := range addrs {
		s.Tunl0Addresses = append(s.Tunl0Addresses, a.IPNet.String())
	}
	return s
}

// echoStream sends numbered UDP datagrams from the client pod to an echo
// in the server pod every interval until stop is closed, and reports which
// sequence numbers never came back.
func echoStream(t *testing.T, client, server *labNode, interval time.Duration, stop <-chan struct{}) (sent int, missing []int, sentAt []time.Time) {
	t.Helper()
	addr := netip.AddrPortFrom(server.podIP, 7777)
	echo := listenUDP(t, server.pod, addr)
	// Room for seconds of datagrams: a test process starved of CPU by a
	// busy machine must not look like a datapath that lost packets.
	echo.SetReadBuffer(8 << 20)
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	conn := listenUDP(t, client.pod, netip.AddrPortFrom(client.podIP, 0))
	conn.SetReadBuffer(8 << 20)

	var mu sync.Mutex
	got := map[int]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if seq, err := strconv.Atoi(string(buf[:n])); err == nil {
				mu.Lock()
				got[seq] = true
				mu.Unlock()
			}
		}
	}()

	tick := time.NewTicker(interval)
	defer tick.Stop()
	for loop := true; loop; {
		select {
		case <-stop:
			loop = false
		case <-tick.C:
			if _, err := conn.WriteToUDPAddrPort([]byte(strconv.Itoa(sent)), addr); err != nil {
				t.Errorf("sending datagram %d: %v", sent, err)
			}
			sentAt = append(sentAt, time.Now())
			sent++
		}
	}
	// Late answers still count; a lost one never comes.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == sent {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn.Close()
	<-done
	for i := range sent {
		if !got[i] {
			missing = append(missing, i)
		}
	}
	return sent, missing, sentAt
}

func TestEBPFAgentRestartKeepsTrafficFlowing(t *testing.T) {
	l, server, client := startLab(t)

	before := map[string]attachedState{}
	for _, n := range l.nodes {
		before[n.name] = readAttached(t, n)
	}

	stop := make(chan struct{})
	type result struct {
		sent    int
		missing []int
		sentAt  []time.Time
	}
	res := make(chan result, 1)
	go func() {
		s, m, at := echoStream(t, client, server, time.Millisecond, stop)
		res <- result{s, m, at}
	}()
	start := time.Now()
	var events []string
	event := func(what string) {
		events = append(events, fmt.Sprintf("%v %s", time.Since(start).Round(time.Millisecond), what))
	}

	time.Sleep(300 * time.Millisecond)
	for _, n := range l.nodes {
		// "The agent" exits and a new one starts in the same namespace.
		old, err := n.dp.Stats()
		must(t, err, n.name+": Stats")
		must(t, n.dp.Close(), n.name+": Close")
		event(n.name + " closed")
		time.Sleep(100 * time.Millisecond)
		dp, reason, err := New(SelectAuto, Options{NetNS: n.ns.Handle, Logger: testLogger(t).With("node", n.name)})
		must(t, err, n.name+": tunnel.New(auto)")
		t.Cleanup(func() { dp.Close() })
		if dp.Mode() != ModeEBPF || !strings.Contains(reason, "already runs the eBPF datapath") {
			t.Errorf("%s: auto chose %s (%q), want the eBPF datapath that is running", n.name, dp.Mode(), reason)
		}
		must(t, dp.Set(n.config()), n.name+": Set after restart")
		event(n.name + " adopted")
		n.dp = dp
		now, err := dp.Stats()
		must(t, err, n.name+": Stats after restart")
		if now.TxPackets < old.TxPackets || now.RxPackets < old.RxPackets {
			t.Errorf("%s: counters went back after the restart: %+v, before %+v", n.name, now, old)
		}
	}
	time.Sleep(300 * time.Millisecond)

	// A program of another version is replaced in place, atomically.
	enc := linkByName(t, server.nl, EncapDeviceName)
	f, err := ourFilter(server.dp.(*EBPF).h, enc, netlink.HANDLE_MIN_INGRESS)
	must(t, err, "reading the encap filter")
	renamed := *f
	renamed.Name = encapFilterPrefix + ":000000000000"
	prog, err := server.dp.(*EBPF).loadPrograms()
	must(t, err, "loading programs")
	renamed.Fd = prog.CalyxEncap.FD()
	must(t, server.nl.FilterReplace(&renamed), "attaching an 'older' program")
	prog.Close()
	event("older program attached")
	must(t, server.dp.Set(server.config()), "Set over an older program")
	event("older program replaced")
	time.Sleep(300 * time.Millisecond)
	close(stop)

	r := <-res
	if len(r.missing) > 0 {
		first, last := r.sentAt[r.missing[0]].Sub(start), r.sentAt[r.missing[len(r.missing)-1]].Sub(start)
		var stats []string
		for _, n := range l.nodes {
			st, _ := n.dp.Stats()
			stats = append(stats, fmt.Sprintf("%s %+v, pod UDP: %s", n.name, st, udpErrors(t, n.pod)))
		}
		t.Errorf("%d of %d datagrams lost across the agent restarts and the program upgrade, sent between %v and %v: %v\nevents: %v\n%s",
			len(r.missing), r.sent, first.Round(time.Millisecond), last.Round(time.Millisecond), r.missing, events, strings.Join(stats, "\n"))
	}
	t.Logf("%d datagrams, none lost, across two restarts and one program upgrade", r.sent)

	for _, n := range l.nodes {
		after := readAttached(t, n)
		want := before[n.name]
		if n == server {
			// Only the upgraded program changed.
			if after.Encap == want.Encap {
				t.Errorf("%s: the older program was not replaced: %s", n.name, after.Encap)
			}
			want.Encap = after.Encap
		}
		if diff := cmp.Diff(want, after); diff != "" {
			t.Errorf("%s: the restarted agent changed the datapath (-before +after):\n%s", n.name, diff)
		}
	}
}

func TestEBPFMapsFollowConfig(t *testing.T) {
	ns := testnet.New(t, "cx-tun-maps")
	h := ns.Netlink(t)
	for _, nic := range []string{"ens160", "ens192"} {
		must(t, h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nic}, PeerName: nic + "-peer"}), "creating "+nic)
		setUp(t, h, nic, nic+"-peer")
	}
	dp, _, err := New(SelectEBPF, Options{NetNS: ns.Handle, Logger: testLogger(t)})
	must(t, err, "tunnel.New")
	t.Cleanup(func() { dp.Close() })
	e := dp.(*EBPF)

	pfx := netip.MustParsePrefix
	ip := netip.MustParseAddr
	base := desired.TunnelConfig{
		Address: ip("192.168.29.64"), MTU: 1480,
		UnderlayIface: "ens160", UnderlayIP: ip("10.10.100.208"),
	}
	with := func(f func(*desired.TunnelConfig)) desired.TunnelConfig {
		c := base
		f(&c)
		return c
	}
	three := []desired.Peer{
		{CIDR: pfx("192.168.154.192/26"), NodeIP: ip("10.10.100.209")},
		{CIDR: pfx("192.168.7.0/26"), NodeIP: ip("10.10.100.210")},
		{CIDR: pfx("192.168.7.77/32"), NodeIP: ip("10.10.100.211")}, // a borrowed address
	}
	nodes := []netip.Addr{ip("10.10.100.208"), ip("10.10.100.209"), ip("10.10.100.210"), ip("10.10.100.211")}

	steps := []struct {
		name         string
		cfg          desired.TunnelConfig
		wantPeers    []desired.Peer
		wantNodes    []netip.Addr
		wantDecapNIC string
		wantAddrs    []string
	}{
		{
			name:         "three peers",
			cfg:          with(func(c *desired.TunnelConfig) { c.Peers, c.NodeIPs = three, nodes }),
			wantPeers:    []desired.Peer{three[1], three[2], three[0]},
			wantNodes:    nodes,
			wantDecapNIC: "ens160",
			wantAddrs:    []string{"192.168.29.64/32"},
		},
		{
			name:         "a peer removed",
			cfg:          with(func(c *desired.TunnelConfig) { c.Peers, c.NodeIPs = three[:2], nodes[:3] }),
			wantPeers:    []desired.Peer{three[1], three[0]},
			wantNodes:    nodes[:3],
			wantDecapNIC: "ens160",
			wantAddrs:    []string{"192.168.29.64/32"},
		},
		{
			name: "a block moved to another node, unmasked CIDR",
			cfg: with(func(c *desired.TunnelConfig) {
				c.Peers = []desired.Peer{{CIDR: pfx("192.168.154.200/26"), NodeIP: ip("10.10.100.210")}, three[1]}
				c.NodeIPs = nodes[:3]
			}),
			wantPeers:    []desired.Peer{three[1], {CIDR: pfx("192.168.154.192/26"), NodeIP: ip("10.10.100.210")}},
			wantNodes:    nodes[:3],
			wantDecapNIC: "ens160",
			wantAddrs:    []string{"192.168.29.64/32"},
		},
		{
			name: "new underlay interface and tunnel address",
			cfg: with(func(c *desired.TunnelConfig) {
				c.UnderlayIface, c.Address = "ens192", ip("192.168.29.65")
				c.Peers, c.NodeIPs = three[:1], nodes[:2]
			}),
			wantPeers:    three[:1],
			wantNodes:    nodes[:2],
			wantDecapNIC: "ens192",
			wantAddrs:    []string{"192.168.29.65/32"},
		},
		{
			name:         "no peers, no tunnel address yet",
			cfg:          with(func(c *desired.TunnelConfig) { c.UnderlayIface, c.Address = "ens192", netip.Addr{} }),
			wantDecapNIC: "ens192",
		},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			var programs []string
			for i := range 2 { // the second Set must be a no-op
				must(t, dp.Set(step.cfg), "Set")
				var now []string
				for _, name := range []string{EncapDeviceName, "ens160", "ens192"} {
					if f, err := ourFilter(e.h, linkByName(t, h, name), netlink.HANDLE_MIN_INGRESS); err == nil && f != nil {
						now = append(now, fmt.Sprintf("%s: %s id %d", name, f.Name, f.Id))
					}
				}
				if i == 1 {
					if diff := cmp.Diff(programs, now); diff != "" {
						t.Errorf("a repeated Set changed the programs (-first +second):\n%s", diff)
					}
				}
				programs = now
				got, err := e.Contents()
				must(t, err, "Contents")
				if diff := cmp.Diff(step.wantPeers, got.Peers, cmpNetip); diff != "" {
					t.Errorf("remote_blocks (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(step.wantNodes, got.NodeIPs, cmpNetip); diff != "" {
					t.Errorf("node_ips (-want +got):\n%s", diff)
				}
				nic := linkByName(t, h, step.cfg.UnderlayIface)
				tun := linkByName(t, h, DeviceName)
				if got.NICIndex != nic.Attrs().Index || got.Tunl0Index != tun.Attrs().Index ||
					got.UnderlayIP != step.cfg.UnderlayIP || !bytes.Equal(got.Tunl0MAC, tun.Attrs().HardwareAddr) {
					t.Errorf("config map %+v does not name %s (%d), tunl0 (%d, %v) and %v",
						got, nic.Attrs().Name, nic.Attrs().Index, tun.Attrs().Index, tun.Attrs().HardwareAddr, step.cfg.UnderlayIP)
				}
				decapOn := []string{}
				for _, name := range []string{"ens160", "ens192"} {
					if f, err := ourFilter(e.h, linkByName(t, h, name), netlink.HANDLE_MIN_INGRESS); err == nil && f != nil {
						decapOn = append(decapOn, name)
					}
				}
				if diff := cmp.Diff([]string{step.wantDecapNIC}, decapOn); diff != "" {
					t.Errorf("NICs with calyx_decap (-want +got):\n%s", diff)
				}
				var addrs []string
				al, err := h.AddrList(tun, netlink.FAMILY_V4)
				must(t, err, "listing tunl0's addresses")
				for _, a := range al {
					addrs = append(addrs, a.IPNet.String())
				}
				if diff := cmp.Diff(step.wantAddrs, addrs); diff != "" {
					t.Errorf("tunl0 addresses (-want +got):\n%s", diff)
				}
				if tun.Attrs().MTU != step.cfg.MTU || tun.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("tunl0: MTU %d, flags %v; want MTU %d and up", tun.Attrs().MTU, tun.Attrs().Flags, step.cfg.MTU)
				}
			}
		})
	}
}

// TestEBPFRepairsDrift deletes what an operator might delete by hand; the
// next Set (the agent runs one on every netlink event and resync) puts it
// back and traffic flows again.
func TestEBPFRepairsDrift(t *testing.T) {
	_, server, client := startLab(t)
	if got := client.pod.Ping(t, server.podIP, 1); got != 1 {
		t.Fatalf("no traffic before the drift")
	}

	must(t, server.nl.LinkDel(linkByName(t, server.nl, DeviceName)), "deleting tunl0")
	nic := linkByName(t, server.nl, "ens160")
	f, err := ourFilter(server.nl, nic, netlink.HANDLE_MIN_INGRESS)
	must(t, err, "reading the decap filter")
	must(t, server.nl.FilterDel(f), "deleting the decap filter")
	if got := client.pod.Ping(t, server.podIP, 1); got != 0 {
		t.Fatalf("traffic flows without tunl0 and the decap program: the test is broken")
	}

	must(t, server.dp.Set(server.config()), "Set after the drift")
	server.routeViaTunnel(t) // the agent's route went with the device
	if got := client.pod.Ping(t, server.podIP, 3); got != 3 {
		t.Fatalf("after Set repaired the datapath, %d of 3 pings answered", got)
	}
	c, err := server.dp.(*EBPF).Contents()
	must(t, err, "Contents")
	if tun := linkByName(t, server.nl, DeviceName); c.Tunl0Index != tun.Attrs().Index {
		t.Errorf("the config map names ifindex %d, the new tunl0 is %d", c.Tunl0Index, tun.Attrs().Index)
	}
}

// TestEBPFDecapsulatesAsTheKernel sends IPIP built by the client node's own
// kernel (a raw IPPROTO_IPIP socket: the kernel writes the outer header, as
// its ipip device would) and checks what the server's pod receives.
func TestEBPFDecapsulatesAsTheKernel(t *testing.T) {
	_, server, client := startLab(t)
	port := netip.AddrPortFrom(server.podIP, 9998)
	udp := listenUDP(t, server.pod, port)
	from := netip.AddrPortFrom(client.podIP, 5555)
	const (
		notECT = 0x0
		ect0   = 0x2
		ce     = 0x3
	)
	big := make([]byte, 2000)

	tests := []struct {
		name       string
		outer      outerHeader
		innerTOS   byte
		payload    []byte
		wantTOS    byte // TOS the pod sees
		wantErrors uint64
		delivered  bool
	}{
		{name: "plain", payload: []byte("a"), delivered: true},
		{name: "DSCP stays the inner one", outer: outerHeader{TOS: 0xb8}, innerTOS: 0x28, payload: []byte("b"), wantTOS: 0x28, delivered: true},
		{name: "congestion on the underlay reaches an ECN-capable pod", outer: outerHeader{TOS: ce}, innerTOS: ect0, payload: []byte("c"), wantTOS: ce, delivered: true},
		{name: "CE inside stays CE", outer: outerHeader{TOS: ect0}, innerTOS: ce, payload: []byte("d"), wantTOS: ce, delivered: true},
		{name: "congestion mark on a packet that cannot carry it", outer: outerHeader{TOS: ce}, innerTOS: notECT, payload: []byte("e"), wantErrors: 1},
		// 2048 bytes of IPIP on a 1500-byte underlay: the sender's kernel
		// fragments the outer packet, which tc cannot reassemble.
		{name: "outer fragments", outer: outerHeader{Fragment: true}, payload: big, wantErrors: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := server.dp.Stats()
			must(t, err, "Stats")
			sendIPIP(t, client.ns, server.ip, tt.outer, udpPacket(from, port, tt.innerTOS, tt.payload), 1)
			timeout := time.Second
			if !tt.delivered {
				timeout = 300 * time.Millisecond
			}
			got, src, tos, err := readUDPWithTOS(udp, timeout)
			switch {
			case tt.delivered && err != nil:
				t.Fatalf("not delivered: %v", err)
			case tt.delivered:
				if !bytes.Equal(got, tt.payload) || src != from || tos != tt.wantTOS {
					t.Errorf("delivered %q from %v with TOS %#x, want %q from %v with TOS %#x", got, src, tos, tt.payload, from, tt.wantTOS)
				}
			case err == nil:
				t.Fatalf("delivered %d bytes from %v, want a drop", len(got), src)
			}
			after, err := server.dp.Stats()
			must(t, err, "Stats")
			if n := after.RxErrors - before.RxErrors; n != tt.wantErrors {
				t.Errorf("rx errors rose by %d, want %d", n, tt.wantErrors)
			}
			if after.RxDrops != before.RxDrops {
				t.Errorf("IPIP from a node counted as from a stranger: %+v", after)
			}
		})
	}
}

// TestEBPFEncapsulatesAsTheKernel sends from the client pod with chosen
// TOS, TTL and DF, and checks the outer header on the client node's NIC
// against what the kernel's tunl0 writes: TTL and DF copied, TOS 0 plus the
// inner ECN bits with CE sent as ECT(0).
func TestEBPFEncapsulatesAsTheKernel(t *testing.T) {
	_, server, client := startLab(t)
	dst := netip.AddrPortFrom(server.podIP, 9997)
	listenUDP(t, server.pod, dst)

	tests := []struct {
		name         string
		tos, ttl     int
		df           bool
		wantOuterTOS byte
	}{
		{name: "defaults", tos: 0, ttl: 64, df: true, wantOuterTOS: 0},
		{name: "DSCP is not copied, ECT(1) is", tos: 0xb9, ttl: 17, df: true, wantOuterTOS: 0x01},
		{name: "CE goes out as ECT(0)", tos: 0x03, ttl: 5, df: false, wantOuterTOS: 0x02},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nic := startCapture(t, client.ns, "ens160")
			client.pod.Do(t, func() error {
				conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
				if err != nil {
					return err
				}
				defer conn.Close()
				raw, err := conn.SyscallConn()
				if err != nil {
					return err
				}
				pmtu := unix.IP_PMTUDISC_DONT
				if tt.df {
					pmtu = unix.IP_PMTUDISC_DO
				}
				raw.Control(func(fd uintptr) {
					err = errors.Join(
						unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tt.tos),
						unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, tt.ttl),
						unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, pmtu))
				})
				if err != nil {
					return err
				}
				_, err = conn.Write([]byte(tt.name))
				return err
			})
			var got *ipv4Packet
			waitFor(t, "the packet on the client's NIC", 2*time.Second, func() bool {
				for _, f := range nic.snapshot() {
					if f.Outgoing && f.IP.Proto == 4 && f.IP.Inner != nil && f.IP.Inner.Dst == server.podIP && f.IP.Inner.Proto == unix.IPPROTO_UDP {
						got = &f.IP
						return true
					}
				}
				return false
			})
			// The node forwarded the packet once before encapsulating it.
			want := ipv4Packet{Src: client.ip, Dst: server.ip, Proto: 4, TTL: uint8(tt.ttl - 1), DF: tt.df, TOS: tt.wantOuterTOS, CsumOK: true}
			gotOuter := *got
			gotOuter.Inner = nil
			if diff := cmp.Diff(want, gotOuter, cmpNetip); diff != "" {
				t.Errorf("outer header (-want +got):\n%s", diff)
			}
			if got.Inner.TOS != byte(tt.tos) || got.Inner.TTL != uint8(tt.ttl-1) || got.Inner.Src != client.podIP {
				t.Errorf("inner header changed: %v tos %#x", got.Inner, got.Inner.TOS)
			}
		})
	}
}

// udpErrors is the UDP line of ns's /proc/net/snmp: receive-buffer
// overflows there are the test's, not the datapath's.
func udpErrors(t *testing.T, ns *testnet.NS) string {
	var out string
	ns.Do(t, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i++ {
			if strings.HasPrefix(lines[i], "Udp:") && strings.HasPrefix(lines[i+1], "Udp:") {
				out = lines[i] + " / " + lines[i+1]
				break
			}
		}
		return nil
	})
	return out
}

// A switch between the modes, as when tcpdump starts or stops on tunl0 (or
// rp_filter turns strict), under a steady UDP stream whose every packet is
// numbered: none may be lost. The switches go every way between the three
// paths. Packets still crossing the pair when the fast path takes over can
// be overtaken; the test counts those and logs them.
func TestEBPFModeSwitchLosesNothing(t *testing.T) {
	l, server, client := startLab(t)
	var rx, tx *net.UDPConn
	server.pod.Do(t, func() (err error) {
		rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(server.podIP, 9000)))
		return err
	})
	defer rx.Close()
	rx.SetReadBuffer(8 << 20)
	client.pod.Do(t, func() (err error) {
		tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(server.podIP, 9000)))
		return err
	})
	defer tx.Close()

	const switches, every, burst = 20, 100 * time.Millisecond, 20
	sent := make(chan uint32, 1)
	go func() {
		var seq uint32
		buf := make([]byte, 64)
		for end := time.Now().Add(switches*every + 200*time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
			for range burst {
				seq++
				binary.BigEndian.PutUint32(buf, seq)
				tx.Write(buf)
			}
		}
		sent <- seq
	}()
	switched := make(chan []time.Duration, 1)
	go func() {
		var switchTimes []time.Duration
		defer func() { switched <- switchTimes }()
		time.Sleep(100 * time.Millisecond)
		// From the observable start: to fast, and every other transition.
		order := []Path{PathFast, PathFastOut, PathObservable, PathFastOut, PathFast, PathObservable}
		for i := range switches {
			begin := time.Now()
			for _, n := range l.nodes {
				if err := n.dp.(*EBPF).SetPath(order[i%len(order)]); err != nil {
					t.Error(err)
				}
			}
			switchTimes = append(switchTimes, time.Since(begin))
			time.Sleep(every)
		}
	}()

	var got, reordered, last uint32
	var total uint32
	buf := make([]byte, 64)
	for total == 0 || got < total {
		select {
		case total = <-sent:
		default:
		}
		rx.SetReadDeadline(time.Now().Add(time.Second))
		n, err := rx.Read(buf)
		if err != nil {
			break // nothing for a second: what is missing is lost
		}
		if n < 4 {
			continue
		}
		seq := binary.BigEndian.Uint32(buf)
		got++
		if seq < last {
			reordered++
		}
		last = max(last, seq)
	}
	if total == 0 {
		total = <-sent
	}
	switchTimes := <-switched
	t.Logf("%d mode switches (one map write on each node: %v): %d packets sent, %d received, %d overtaken", switches, switchTimes, total, got, reordered)
	if got != total {
		t.Errorf("%d of %d packets lost across %d mode switches", total-got, total, switches)
	}
}

// A path chosen before the first Set (the agent's watcher may run first)
// is the one in force after it. PathFastOut goes in only once this build's
// programs are attached, since an older build's would read it as fast both
// ways: the Set that attaches them must write it afterwards.
func TestEBPFPathChosenBeforeFirstSet(t *testing.T) {
	l := newLab(t)
	n := l.nodes[0]
	dp, _, err := New(SelectEBPF, Options{NetNS: n.ns.Handle, Logger: testLogger(t).With("node", n.name)})
	must(t, err, "tunnel.New")
	t.Cleanup(func() { dp.Close() })
	must(t, dp.(*EBPF).SetPath(PathFastOut), "SetPath before Set")
	must(t, dp.Set(n.config()), "Set")
	s, err := dp.Stats()
	must(t, err, "Stats")
	if s.Path != PathFastOut {
		t.Errorf("after the first Set the datapath's path is %v, want %v", s.Path, PathFastOut)
	}
	if err := dp.(*EBPF).SetPath(Path(3)); err == nil {
		t.Error("SetPath(3) was taken; want an error")
	}
}
