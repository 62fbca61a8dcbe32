package v1alpha1_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func TestAddrAt(t *testing.T) {
	type result struct {
		Addr string
		OK   bool
	}
	for _, tc := range []struct {
		cidr    string
		ordinal int
		want    result
	}{
		{"192.168.29.64/26", 0, result{"192.168.29.64", true}},
		{"192.168.29.64/26", 3, result{"192.168.29.67", true}},
		{"192.168.29.64/26", 63, result{"192.168.29.127", true}},
		{"192.168.29.64/26", 64, result{"192.168.29.128", false}}, // past the end
		{"192.168.29.64/26", -1, result{"192.168.29.63", false}},
		{"192.168.255.192/26", 64, result{"192.169.0.0", false}}, // carries over octets
		{"192.168.0.0/16", 29<<8 | 64, result{"192.168.29.64", true}},
		{"10.0.0.7/32", 0, result{"10.0.0.7", true}},
	} {
		a, ok := v1alpha1.AddrAt(netip.MustParsePrefix(tc.cidr), tc.ordinal)
		if diff := cmp.Diff(tc.want, result{a.String(), ok}); diff != "" {
			t.Errorf("AddrAt(%s, %d) (-want +got):\n%s", tc.cidr, tc.ordinal, diff)
		}
	}
}
