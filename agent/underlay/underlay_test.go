package underlay

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/agent/testnet"
)

func TestParseMethod(t *testing.T) {
	for _, ok := range []string{"first-found", "interface=ens.*", "interface=^ens160$", "can-reach=10.10.100.1"} {
		if _, err := ParseMethod(ok); err != nil {
			t.Errorf("ParseMethod(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "first-found=x", "interface=", "interface=(", "can-reach=nowhere", "can-reach=::1", "magic"} {
		if _, err := ParseMethod(bad); err == nil {
			t.Errorf("ParseMethod(%q) succeeded", bad)
		} else {
			t.Logf("%q: %v", bad, err)
		}
	}
}

func TestDetect(t *testing.T) {
	ul := testnet.NewUnderlay(t)
	node := ul.AddNode(t, "cx-ul", "10.10.100.208/24")
	node.IP(t, "link", "set", "ens160", "mtu", "1450")
	// Decoys first-found must skip: a pod's veth and a tunnel device.
	node.IP(t, "link", "add", "cali0123456789", "type", "veth", "peer", "name", "eth1")
	node.IP(t, "addr", "add", "192.168.5.1/32", "dev", "cali0123456789")
	node.IP(t, "link", "set", "cali0123456789", "up")
	node.IP(t, "link", "set", "eth1", "up")
	node.IP(t, "addr", "add", "172.16.9.1/24", "dev", "eth1")
	node.IP(t, "route", "add", "10.20.0.0/16", "via", "172.16.9.254", "dev", "eth1", "onlink")
	h := node.Netlink(t)

	ens160 := Underlay{Iface: "ens160", Addr: netip.MustParsePrefix("10.10.100.208/24"), MTU: 1450}
	eth1 := Underlay{Iface: "eth1", Addr: netip.MustParsePrefix("172.16.9.1/24"), MTU: 1500}
	tests := []struct {
		method  string
		want    Underlay
		wantErr string
	}{
		{method: "first-found", want: ens160},
		{method: "interface=ens.*", want: ens160},
		{method: "interface=^eth1$", want: eth1},
		{method: "can-reach=10.10.100.1", want: ens160},
		{method: "can-reach=10.20.3.4", want: eth1},
		{method: "interface=^eth9$", wantErr: "no interface matches"},
		{method: "can-reach=8.8.8.8", wantErr: "no route to 8.8.8.8"},
		{method: "can-reach=10.10.100.208", wantErr: "this node's own address"},
	}
	for _, tt := range tests {
		m, err := ParseMethod(tt.method)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Detect(h, m)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Detect(%s) = %+v, %v; want an error with %q", tt.method, got, err, tt.wantErr)
			} else {
				t.Logf("Detect(%s): %v", tt.method, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Detect(%s): %v", tt.method, err)
			continue
		}
		got.Index = 0
		if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
			t.Errorf("Detect(%s) (-want +got):\n%s", tt.method, diff)
		}
	}
}
