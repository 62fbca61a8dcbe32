package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/tunnel"
)

type statsOnly struct {
	tunnel.Datapath
	s   tunnel.Stats
	err error
}

func (d statsOnly) Mode() tunnel.Mode            { return tunnel.ModeEBPF }
func (d statsOnly) Stats() (tunnel.Stats, error) { return d.s, d.err }

func scrape(t *testing.T, m *Metrics) []string {
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "calyx_datapath") || strings.HasPrefix(l, "calyx_firewall") {
			out = append(out, l)
		}
	}
	return out
}

func TestKernelCounters(t *testing.T) {
	var dp tunnel.Datapath
	m := New(Sources{
		Datapath: func() tunnel.Datapath { return dp },
		Firewall: func() (map[string]firewall.Counter, error) {
			return map[string]firewall.Counter{firewall.RuleIPIPOthers: {Packets: 2, Bytes: 96}}, nil
		},
	})
	want := []string{
		`calyx_datapath_stats_errors_total 0`,
		`calyx_firewall_rule_bytes_total{rule="drop IPIP from anyone else"} 96`,
		`calyx_firewall_rule_packets_total{rule="drop IPIP from anyone else"} 2`,
	}
	if diff := cmp.Diff(want, scrape(t, m)); diff != "" {
		t.Errorf("before the datapath exists (-want +got):\n%s", diff)
	}

	dp = statsOnly{s: tunnel.Stats{TxPackets: 10, TxBytes: 1000, RxPackets: 9, RxBytes: 900, TxDrops: 1, RxDrops: 3, RxErrors: 4, Path: tunnel.PathFast}}
	want = []string{
		`calyx_datapath_bytes_total{direction="rx"} 900`,
		`calyx_datapath_bytes_total{direction="tx"} 1000`,
		`calyx_datapath_drops_total{direction="rx"} 3`,
		`calyx_datapath_drops_total{direction="tx"} 1`,
		`calyx_datapath_fast_mode 1`,
		`calyx_datapath_fast_receive 1`,
		`calyx_datapath_info{mode="ebpf"} 1`,
		`calyx_datapath_packets_total{direction="rx"} 9`,
		`calyx_datapath_packets_total{direction="tx"} 10`,
		`calyx_datapath_rx_errors_total 4`,
		`calyx_datapath_stats_errors_total 0`,
		`calyx_firewall_rule_bytes_total{rule="drop IPIP from anyone else"} 96`,
		`calyx_firewall_rule_packets_total{rule="drop IPIP from anyone else"} 2`,
	}
	if diff := cmp.Diff(want, filterHelp(scrape(t, m))); diff != "" {
		t.Errorf("with a datapath (-want +got):\n%s", diff)
	}

	// Fast on the way out only: the fast mode, arriving packets on tunl0.
	dp = statsOnly{s: tunnel.Stats{Path: tunnel.PathFastOut}}
	fast := func(lines []string) (out []string) {
		for _, l := range lines {
			if strings.HasPrefix(l, "calyx_datapath_fast_") {
				out = append(out, l)
			}
		}
		return out
	}
	if diff := cmp.Diff([]string{`calyx_datapath_fast_mode 1`, `calyx_datapath_fast_receive 0`}, fast(filterHelp(scrape(t, m)))); diff != "" {
		t.Errorf("fast out only (-want +got):\n%s", diff)
	}

	dp = statsOnly{err: errors.New("maps gone")}
	got := filterHelp(scrape(t, m))
	if !cmp.Equal(got[:2], []string{`calyx_datapath_info{mode="ebpf"} 1`, `calyx_datapath_stats_errors_total 1`}) {
		t.Errorf("with failing stats: %q", got)
	}
}

func filterHelp(ls []string) []string {
	var out []string
	for _, l := range ls {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}
