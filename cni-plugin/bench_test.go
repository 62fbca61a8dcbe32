package cniplugin_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// debianCNI is where Debian's containernetworking-plugins installs ptp and
// host-local, the reference of the benchmark.
const debianCNI = "/usr/lib/cni"

var benchPods = flag.Int("pods", 100, "pods per setup in BenchmarkPodLatency")

// BenchmarkPodLatency times ADD and DEL through libcni for -pods pods per
// setup, the setups interleaved pod by pod so that they share the
// machine's noise, each on a node namespace of its own. Run it with
//
//	go test -run '^$' -bench PodLatency ./cni-plugin/ -args -pods 100
//
// One run takes well over the default -benchtime, so the framework calls
// it once; b.N is not the pod count. It prints a table and reports each
// calyx setup's ADD p50 over the reference's.
func BenchmarkPodLatency(b *testing.B) {
	pods := *benchPods
	e := newEnv(b, acceptanceIPAM)

	type setup struct {
		name string
		n    *node
		list *libcni.NetworkConfigList
		add  []time.Duration
		del  []time.Duration
	}
	onlyCalyx := func(n *node) *libcni.NetworkConfigList {
		full := n.conflist("1.0.0", nil)
		var list map[string]any
		if err := json.Unmarshal(full.Bytes, &list); err != nil {
			b.Fatal(err)
		}
		list["plugins"] = list["plugins"].([]any)[:1]
		return toConfList(b, list)
	}

	ref := newNode(b, e, withIPAMKind(ipamHostLocal))
	ref.cni = libcni.NewCNIConfigWithCacheDir([]string{debianCNI}, filepath.Join(ref.dir, "cache"), nil)
	refList := toConfList(b, map[string]any{
		"cniVersion": "1.0.0", // Debian's ptp speaks up to 1.0.0
		"name":       "k8s-pod-network",
		"plugins": []any{map[string]any{
			"type": "ptp", "ipMasq": false, "mtu": agentMTU,
			"ipam": map[string]any{
				"type": "host-local", "dataDir": filepath.Join(ref.dir, "host-local"),
				"ranges": []any{[]any{map[string]any{"subnet": "10.244.0.0/16"}}},
			},
		}},
	})
	// The IPAM plugin run on its own, as the only plugin of a list, shows
	// how much of a row is address allocation and how much is wiring.
	ipamOnly := func(n *node) *libcni.NetworkConfigList {
		return toConfList(b, map[string]any{
			"cniVersion": "1.0.0", "name": "k8s-pod-network",
			"plugins": []any{map[string]any{"type": n.ipamConf["type"], "ipam": n.ipamConf}},
		})
	}
	setups := []*setup{{name: "ptp + host-local (Debian, reference)", n: ref, list: refList}}
	hl := newNode(b, e, withIPAMKind(ipamHostLocal))
	setups = append(setups, &setup{name: "calyx + host-local", n: hl, list: onlyCalyx(hl)})
	hlo := newNode(b, e, withIPAMKind(ipamHostLocal))
	setups = append(setups, &setup{name: "host-local alone (no wiring)", n: hlo, list: ipamOnly(hlo)})
	if acceptanceIPAM == ipamCalyx {
		ci := newNode(b, e)
		setups = append(setups, &setup{name: "calyx + calyx-ipam", n: ci, list: onlyCalyx(ci)})
		opt, _ := withAgentIPAM(b, e)
		ca := newNode(b, e, opt)
		setups = append(setups, &setup{name: "calyx + calyx-ipam in the agent (socket)", n: ca, list: onlyCalyx(ca)})
		cio := newNode(b, e)
		setups = append(setups, &setup{name: "calyx-ipam alone (no wiring)", n: cio, list: ipamOnly(cio)})
		full := newNode(b, e)
		setups = append(setups, &setup{name: "shipped conflist: calyx + calyx-ipam, portmap", n: full, list: full.conflist("", nil)})
	}

	podsOf := make([][]*pod, len(setups))
	for i := range setups {
		for j := range pods {
			podsOf[i] = append(podsOf[i], newPod(b, "bench", fmt.Sprintf("pod-%d", j)))
		}
	}
	b.ResetTimer()
	for j := range pods {
		for i, s := range setups {
			start := time.Now()
			if _, err := s.n.add(s.list, podsOf[i][j].rt()); err != nil {
				b.Fatalf("%s: ADD of pod %d: %v", s.name, j, err)
			}
			s.add = append(s.add, time.Since(start))
		}
	}
	for j := range pods {
		for i, s := range setups {
			start := time.Now()
			if err := s.n.del(s.list, podsOf[i][j].rt()); err != nil {
				b.Fatalf("%s: DEL of pod %d: %v", s.name, j, err)
			}
			s.del = append(s.del, time.Since(start))
		}
	}
	b.StopTimer()

	var tab strings.Builder
	fmt.Fprintf(&tab, "%d pods per setup, latency through libcni (ms)\n", pods)
	fmt.Fprintf(&tab, "%-48s %8s %8s %8s %8s %10s\n", "setup", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD p50 ×")
	refP50 := pct(setups[0].add, 50)
	for _, s := range setups {
		fmt.Fprintf(&tab, "%-48s %8.2f %8.2f %8.2f %8.2f %10.2f\n", s.name,
			ms(pct(s.add, 50)), ms(pct(s.add, 99)), ms(pct(s.del, 50)), ms(pct(s.del, 99)),
			float64(pct(s.add, 50))/float64(refP50))
	}
	// Straight to stdout: the framework cuts a benchmark's log to 10 lines.
	fmt.Print(tab.String())
	for _, s := range setups[1:] {
		if strings.Contains(s.name, "alone") {
			continue
		}
		key := strings.NewReplacer(" ", "", "+", "_", ",", "_", ":", "").Replace(s.name)
		b.ReportMetric(float64(pct(s.add, 50))/float64(refP50), "ADDp50/ref("+key+")")
	}
	for _, s := range setups {
		s.n.assertClean(b)
	}
}

// pct is the p-th percentile of ds, nearest rank.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(rank-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
