package ipam

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func TestBlockName(t *testing.T) {
	for cidr, want := range map[string]string{
		"192.168.29.64/26":   "192-168-29-64-26",
		"192.168.154.192/26": "192-168-154-192-26",
		"10.0.0.0/32":        "10-0-0-0-32",
	} {
		if got := BlockName(netip.MustParsePrefix(cidr)); got != want {
			t.Errorf("BlockName(%s) = %s, want %s", cidr, got, want)
		}
	}
}

func TestOrdinals(t *testing.T) {
	block := netip.MustParsePrefix("192.168.29.64/26")
	for _, tc := range []struct {
		ordinal int
		addr    string
	}{{0, "192.168.29.64"}, {3, "192.168.29.67"}, {63, "192.168.29.127"}} {
		if got, _ := v1alpha1.AddrAt(block, tc.ordinal); got.String() != tc.addr {
			t.Errorf("AddrAt(%d) = %s, want %s", tc.ordinal, got, tc.addr)
		}
		if got := ordinalOf(block, netip.MustParseAddr(tc.addr)); got != tc.ordinal {
			t.Errorf("ordinalOf(%s) = %d, want %d", tc.addr, got, tc.ordinal)
		}
	}
	if got := ordinalOf(block, netip.MustParseAddr("192.168.29.128")); got != -1 {
		t.Errorf("an address outside the block has ordinal %d, want -1", got)
	}
}

func TestAssignAndRelease(t *testing.T) {
	b := newBlock(netip.MustParsePrefix("10.0.0.0/30"), "pool", "node-a")
	var got []string
	for _, h := range []string{"a", "b", "c"} {
		addr, ok, err := assignInBlock(b, v1alpha1.Allocation{Handle: h, Type: v1alpha1.AllocationPod})
		if err != nil || !ok {
			t.Fatalf("assign %s: ok=%v err=%v", h, ok, err)
		}
		got = append(got, addr.String())
	}
	if diff := cmp.Diff([]string{"10.0.0.0", "10.0.0.1", "10.0.0.2"}, got); diff != "" {
		t.Errorf("lowest free ordinals first (-want +got):\n%s", diff)
	}
	released, err := releaseInBlock(b, "b")
	if err != nil || len(released) != 1 || released[0].String() != "10.0.0.1" {
		t.Fatalf("release b = %v, %v; want [10.0.0.1]", released, err)
	}
	if diff := cmp.Diff(v1alpha1.IPAMBlockStatus{Used: 2, Free: 2}, b.Status); diff != "" {
		t.Errorf("counts after release (-want +got):\n%s", diff)
	}
	addr, _, _ := assignInBlock(b, v1alpha1.Allocation{Handle: "d"})
	if addr.String() != "10.0.0.1" {
		t.Errorf("a released address is handed out again: got %s, want 10.0.0.1", addr)
	}
	assignInBlock(b, v1alpha1.Allocation{Handle: "e"})
	if _, ok, _ := assignInBlock(b, v1alpha1.Allocation{Handle: "f"}); ok {
		t.Error("a full block assigned a fifth address in a /30")
	}
	if diff := cmp.Diff(v1alpha1.IPAMBlockStatus{Used: 4, Free: 0}, b.Status); diff != "" {
		t.Errorf("counts when full (-want +got):\n%s", diff)
	}
}

// TestBlockCursor checks that every block of a pool is offered exactly once,
// whatever the node's starting offset.
func TestBlockCursor(t *testing.T) {
	pool := netip.MustParsePrefix("192.168.0.0/16")
	for _, node := range []string{"learn-k8s-2", "learn-k8s-3", ""} {
		c := newBlockCursor(pool, 26, node)
		if c.n != 1024 {
			t.Fatalf("a /16 holds %d /26 blocks, want 1024", c.n)
		}
		seen := map[netip.Prefix]bool{}
		for i := 0; i < c.n; i++ {
			b := c.at(i)
			if !pool.Contains(b.Addr()) || b.Bits() != 26 || b.Masked() != b || seen[b] {
				t.Fatalf("node %q: block %d is %s: outside the pool, misaligned or repeated", node, i, b)
			}
			seen[b] = true
		}
	}
	if a, b := newBlockCursor(pool, 26, "learn-k8s-2").at(0), newBlockCursor(pool, 26, "learn-k8s-3").at(0); a == b {
		t.Errorf("two nodes start at the same block %s: concurrent claims would race", a)
	}
}

func TestHandleObjectName(t *testing.T) {
	for handle, want := range map[string]string{
		"k8s-pod-network.0123abcd": "k8s-pod-network.0123abcd",
		"tunnel-learn-k8s-2":       "tunnel-learn-k8s-2",
	} {
		if got := HandleObjectName(handle); got != want {
			t.Errorf("HandleObjectName(%q) = %q, want %q", handle, got, want)
		}
	}
	a, b := HandleObjectName("My_Net.ABC"), HandleObjectName("my-net.abc")
	if a == b {
		t.Errorf("handles that differ map to the same object name %q", a)
	}
	if got := HandleObjectName("My_Net.ABC"); got[:10] != "my-net.abc" {
		t.Errorf("sanitized name %q does not start with the readable handle", got)
	}
}
