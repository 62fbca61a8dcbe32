package bench

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExtraTime(t *testing.T) {
	// 1,000 packets each (0.25 kpps over 4 s); 1 µs of CPU is 1,000 ns.
	r := iperfResult{value: 0.25}
	calyx := profiled{&perfRun{read: true, syms: map[string]float64{
		"[k] pv_native_safe_halt":       9e9, // idle: never counted
		"[k] nft_do_chain":              3e6,
		"[k] pskb_expand_head":          5e5,
		"[k] bpf_prog_1234_calyx_encap": 2e5,
		"[k] veth_xmit":                 1e6,
	}}, r}
	plain := profiled{&perfRun{read: true, syms: map[string]float64{
		"[k] pv_native_safe_halt": 1e9,
		"[k] nft_do_chain":        2e6,
		"[k] veth_xmit":           1e6,
		"[k] ip_forward":          1e5,
	}}, r}
	got := extraTime("udp64", calyx, plain)
	want := "busy 4.7 against plain's 3.1; in functions plain routing never ran 0.7: `pskb_expand_head` 0.5, `bpf_prog_1234_calyx_encap` 0.2; most grown of the shared ones: `nft_do_chain` 1"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("extraTime (-want +got):\n%s", diff)
	}
}
