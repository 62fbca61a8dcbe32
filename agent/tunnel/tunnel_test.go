package tunnel

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/testnet"
)

// Pure logic first, then what New decides on this kernel.

func TestAddrChanges(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		name     string
		have     []netip.Prefix
		want     netip.Addr
		add, del []netip.Prefix
	}{
		{name: "fresh device", want: netip.MustParseAddr("192.168.29.64"), add: []netip.Prefix{pfx("192.168.29.64/32")}},
		{name: "already right", have: []netip.Prefix{pfx("192.168.29.64/32")}, want: netip.MustParseAddr("192.168.29.64")},
		{
			name: "changed address, and a stray prefix length",
			have: []netip.Prefix{pfx("192.168.29.64/26"), pfx("192.168.29.70/32")},
			want: netip.MustParseAddr("192.168.29.64"),
			add:  []netip.Prefix{pfx("192.168.29.64/32")},
			del:  []netip.Prefix{pfx("192.168.29.64/26"), pfx("192.168.29.70/32")},
		},
		{name: "no address yet", have: []netip.Prefix{pfx("10.0.0.1/32")}, del: []netip.Prefix{pfx("10.0.0.1/32")}},
		{name: "nothing at all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, del := addrChanges(tt.have, tt.want)
			if diff := cmp.Diff(tt.add, add, cmpNetip); diff != "" {
				t.Errorf("add (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.del, del, cmpNetip); diff != "" {
				t.Errorf("del (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDiffMap(t *testing.T) {
	tests := []struct {
		name       string
		have, want map[string]int
		put        map[string]int
		del        []string
	}{
		{name: "empty to empty", put: map[string]int{}},
		{name: "fill", want: map[string]int{"a": 1, "b": 2}, put: map[string]int{"a": 1, "b": 2}},
		{name: "in sync", have: map[string]int{"a": 1}, want: map[string]int{"a": 1}, put: map[string]int{}},
		{
			name: "change, add, remove",
			have: map[string]int{"a": 1, "b": 2, "gone": 3},
			want: map[string]int{"a": 1, "b": 5, "new": 4},
			put:  map[string]int{"b": 5, "new": 4},
			del:  []string{"gone"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put, del := diffMap(tt.have, tt.want)
			if diff := cmp.Diff(tt.put, put); diff != "" {
				t.Errorf("put (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.del, del); diff != "" {
				t.Errorf("del (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDesiredPeersAreNetworkOrder(t *testing.T) {
	got := desiredPeers([]desired.Peer{{CIDR: netip.MustParsePrefix("192.168.29.67/26"), NodeIP: netip.MustParseAddr("10.10.100.208")}})
	want := map[calyxLpmKey]uint32{
		// The bytes of the masked block and of the node address, whatever
		// the host's byte order.
		{Prefixlen: 26, Addr: be32(netip.MustParseAddr("192.168.29.64"))}: be32(netip.MustParseAddr("10.10.100.208")),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("remote_blocks entries (-want +got):\n%s", diff)
	}
	for _, s := range []string{"0.0.0.0", "10.10.100.208", "255.1.2.3"} {
		a := netip.MustParseAddr(s)
		if back := addrFromBE32(be32(a)); back != a {
			t.Errorf("%s came back as %s", a, back)
		}
	}
}

func TestValidateEBPF(t *testing.T) {
	ok := desired.TunnelConfig{
		Address: netip.MustParseAddr("192.168.29.64"), MTU: 1480,
		UnderlayIface: "ens160", UnderlayIP: netip.MustParseAddr("10.10.100.208"),
		Peers:   []desired.Peer{{CIDR: netip.MustParsePrefix("192.168.154.192/26"), NodeIP: netip.MustParseAddr("10.10.100.209")}},
		NodeIPs: []netip.Addr{netip.MustParseAddr("10.10.100.209")},
	}
	tests := []struct {
		name    string
		change  func(*desired.TunnelConfig)
		wantErr string
	}{
		{name: "valid", change: func(*desired.TunnelConfig) {}},
		{name: "no address yet is fine", change: func(c *desired.TunnelConfig) { c.Address = netip.Addr{} }},
		{name: "MTU unset", change: func(c *desired.TunnelConfig) { c.MTU = 0 }, wantErr: "MTU 0 is out of range"},
		{name: "no NIC", change: func(c *desired.TunnelConfig) { c.UnderlayIface = "" }, wantErr: "no underlay interface"},
		{name: "no underlay IP", change: func(c *desired.TunnelConfig) { c.UnderlayIP = netip.Addr{} }, wantErr: "underlay address"},
		{name: "IPv6 tunnel address", change: func(c *desired.TunnelConfig) { c.Address = netip.MustParseAddr("fd00::1") }, wantErr: "not IPv4"},
		{
			name: "one block, two nodes",
			change: func(c *desired.TunnelConfig) {
				c.Peers = append(c.Peers, desired.Peer{CIDR: netip.MustParsePrefix("192.168.154.200/26"), NodeIP: netip.MustParseAddr("10.10.100.210")})
			},
			wantErr: "has two nodes",
		},
		{
			name:    "IPv6 node",
			change:  func(c *desired.TunnelConfig) { c.NodeIPs = append(c.NodeIPs, netip.MustParseAddr("fd00::2")) },
			wantErr: "not IPv4",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			err := validateEBPF(c)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestKernelStats(t *testing.T) {
	got := kernelStats(&netlink.LinkStatistics{
		RxPackets: 1, TxPackets: 2, RxBytes: 3, TxBytes: 4,
		RxErrors: 5, TxErrors: 6, RxDropped: 7, TxDropped: 8,
	})
	want := Stats{RxPackets: 1, TxPackets: 2, RxBytes: 3, TxBytes: 4, RxErrors: 5, TxDrops: 14, RxDrops: 7}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Stats{}, kernelStats(nil)); diff != "" {
		t.Errorf("no statistics (-want +got):\n%s", diff)
	}
}

func TestNewRejectsUnknownSelection(t *testing.T) {
	_, _, err := New("vxlan", Options{})
	if err == nil || !strings.Contains(err.Error(), "use auto, kernel or ebpf") {
		t.Errorf("New(vxlan): %v, want an error naming the choices", err)
	}
}

// TestSelection checks what New picks in a fresh node namespace on this
// kernel, and that it refuses to swap a running datapath.
func TestSelection(t *testing.T) {
	probe := testnet.New(t, "cx-tun-probe")
	kernelCan := createIPIP(probe.Netlink(t)) == nil

	ns := testnet.New(t, "cx-tun-sel")
	h := ns.Netlink(t)
	must(t, h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ens160"}, PeerName: "ens160-peer"}), "creating ens160")

	opts := Options{NetNS: ns.Handle, Logger: testLogger(t)}
	dp, reason, err := New(SelectAuto, opts)
	must(t, err, "New(auto)")
	defer dp.Close()
	t.Logf("auto: %s (%s)", dp.Mode(), reason)
	if kernelCan {
		if dp.Mode() != ModeKernel {
			t.Fatalf("auto chose %s (%s) on a kernel that can create ipip devices", dp.Mode(), reason)
		}
		return // the rest is about a kernel without ipip
	}
	if dp.Mode() != ModeEBPF || !strings.Contains(reason, "cannot create an ipip device") {
		t.Fatalf("auto chose %s (%q), want ebpf because the kernel has no ipip", dp.Mode(), reason)
	}

	_, _, err = New(SelectKernel, opts)
	if err == nil || !strings.Contains(err.Error(), "--ipip-datapath=ebpf") {
		t.Errorf("New(kernel) on a kernel without ipip: %v, want advice to use ebpf", err)
	}

	cfg := desired.TunnelConfig{MTU: 1480, UnderlayIface: "ens160", UnderlayIP: netip.MustParseAddr("10.10.100.208")}
	must(t, dp.Set(cfg), "Set")
	_, _, err = New(SelectKernel, opts)
	if err == nil || !strings.Contains(err.Error(), "eBPF datapath's device") {
		t.Errorf("New(kernel) with the eBPF datapath running: %v, want a refusal", err)
	}
}

func TestEBPFRefusesAForeignTunl0(t *testing.T) {
	ns := testnet.New(t, "cx-tun-foreign")
	h := ns.Netlink(t)
	must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: DeviceName}}), "creating a bridge named tunl0")
	for _, sel := range []string{SelectAuto, SelectEBPF} {
		_, _, err := New(sel, Options{NetNS: ns.Handle, Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "bridge device that calyx did not create") {
			t.Errorf("New(%s) with a bridge named tunl0: %v, want a refusal naming it", sel, err)
		}
	}
	if l, err := h.LinkByName(DeviceName); err != nil || l.Type() != "bridge" {
		t.Errorf("the foreign tunl0 was touched: %v %v", l, err)
	}
}
