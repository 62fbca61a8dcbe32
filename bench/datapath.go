package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/spawn"
)

const (
	iperfSeconds = 4
	vxlanDev     = "vxlan.bench"
	vxlanMTU     = 1450
)

// datapathComms are the threads whose samples tell where a packet's time
// goes: the sender and receiver, softirq, and the idle task softirqs
// borrow.
var datapathComms = []string{"iperf3", "swapper", "ksoftirqd/0", "ksoftirqd/1"}

var dpLabel = map[string]string{"tcp1": "TCP 1 stream", "tcp4": "TCP 4 streams", "udp64": "UDP 64-byte packets"}

// dpMode is a way of carrying pod traffic between the two worker nodes,
// set up over the same pods and namespaces.
type dpMode struct {
	name       string
	setup, off func() error
}

// runDatapath measures iperf3 from a pod on one worker to a pod on the
// other: through calyx's tunl0 (the eBPF IPIP datapath the lab's agents
// run), through a kernel VXLAN device between the same nodes, and routed
// plainly on the underlay; the modes interleave within every run.
func runDatapath(ctx context.Context, e *Env) ([]Row, error) {
	srvNode, cliNode := e.Lab.Workers()[0], e.Lab.Workers()[1]
	c := e.Lab.Client()
	srv, err := c.AddPod(ctx, lab.PodSpec{Namespace: "bench", Name: "iperf-server", Node: srvNode})
	if err != nil {
		return nil, err
	}
	defer c.DelPod(context.WithoutCancel(ctx), srv.Key())
	cli, err := c.AddPod(ctx, lab.PodSpec{Namespace: "bench", Name: "iperf-client", Node: cliNode})
	if err != nil {
		return nil, err
	}
	defer c.DelPod(context.WithoutCancel(ctx), cli.Key())
	srvIP, cliIP := e.Lab.Node(srvNode).IP, e.Lab.Node(cliNode).IP

	// Both nodes' ends, so that replies take the same way.
	type end struct{ node, peerPod, peerNodeIP, pod, vxAddr, peerVxAddr string }
	ends := []end{
		{cliNode, srv.IP, srvIP, cli.NetNS, "172.31.255.3", "172.31.255.2"},
		{srvNode, cli.IP, cliIP, srv.NetNS, "172.31.255.2", "172.31.255.3"},
	}
	if err := addVXLAN(ends[0].node, cliIP, ends[0].vxAddr, ends[1].node, srvIP, ends[1].vxAddr); err != nil {
		return nil, err
	}
	defer func() {
		for _, x := range ends {
			ipIn(x.node, "link", "del", vxlanDev)
		}
	}()
	routeOff := func() error {
		for _, x := range ends {
			ipIn(x.node, "route", "del", x.peerPod+"/32")
			ipIn(x.pod, "route", "del", x.peerPod+"/32")
		}
		return nil
	}
	workers := []string{cliNode, srvNode}
	var taps *silentTap
	modes := []dpMode{
		{name: "calyx", setup: func() error {
			for _, n := range workers {
				if err := lab.WaitFastMode(n, true, 5*time.Second); err != nil {
					return err
				}
			}
			return nil
		}, off: routeOff},
		{name: "calyx-observable", setup: func() (err error) {
			taps, err = openSilentTaps(workers...)
			return err
		}, off: func() error {
			return taps.close(workers...)
		}},
		// A strict rp_filter on both nodes (RHEL's default): leaving
		// packets stay fast, arriving ones cross tunl0.
		{name: "calyx-rpstrict", setup: func() error {
			return strictRPFilter(workers, true)
		}, off: func() error {
			return strictRPFilter(workers, false)
		}},
		{name: "plain", setup: func() error {
			for _, x := range ends {
				if _, err := ipIn(x.node, "route", "replace", x.peerPod+"/32", "via", x.peerNodeIP, "dev", lab.NICName); err != nil {
					return err
				}
			}
			return nil
		}, off: routeOff},
		{name: "vxlan", setup: func() error {
			for _, x := range ends {
				if _, err := ipIn(x.node, "route", "replace", x.peerPod+"/32", "via", x.peerVxAddr, "dev", vxlanDev, "onlink"); err != nil {
					return err
				}
				// The pod learns VXLAN's smaller MTU from its route, as it
				// would from its interface under a VXLAN CNI.
				if _, err := ipIn(x.pod, "route", "replace", x.peerPod+"/32", "via", "169.254.1.1", "dev", "eth0", "onlink", "mtu", "lock", strconv.Itoa(vxlanMTU)); err != nil {
					return err
				}
			}
			return nil
		}, off: routeOff},
	}
	type key struct{ mode, test string }
	res := map[key][]float64{}
	profiles := map[string]profiled{} // the profiled run's, by mode+"/"+test
	tests := []string{"tcp1", "tcp4", "udp64"}
	// The datapath's figures swing the most between runs on a shared
	// machine (a 4-stream TCP test from 12 to 24 Gbit/s): two more runs
	// than the other parts, and the three modes back to back within each
	// test, so that the ones compared share the machine's state.
	runs := e.Opts.Runs + 2
	for run := range runs {
		for _, t := range tests {
			for _, m := range modes {
				r, err := dpTest(e, m, t, false, cli, srv, profiles)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", m.name, dpLabel[t], err)
				}
				res[key{m.name, t}] = append(res[key{m.name, t}], r.value)
				res[key{m.name, t + "cpu"}] = append(res[key{m.name, t + "cpu"}], r.cpu)
				e.Logf("datapath: run %d/%d: %-5s %-5s %s", run+1, runs, m.name, t, r.format(t))
			}
		}
	}
	// Profiles come from a run of their own, outside the medians: perf
	// slows every mode, and the BPF run-time accounting (two clock reads
	// per program run) slows calyx's alone.
	if e.Opts.Profile {
		for _, t := range []string{"tcp4", "udp64"} {
			for _, m := range modes {
				if m.name != "calyx" && m.name != "plain" {
					continue
				}
				r, err := dpTest(e, m, t, true, cli, srv, profiles)
				if err != nil {
					return nil, fmt.Errorf("%s %s, profiled: %w", m.name, dpLabel[t], err)
				}
				e.Logf("datapath: profiled run (not in the medians): %-5s %-5s %s", m.name, t, r.format(t))
			}
		}
	}
	for _, t := range []string{"tcp4", "udp64"} {
		c, p := profiles["calyx/"+t], profiles["plain/"+t]
		if c.prof != nil && p.prof != nil {
			e.Note("datapath, %s: where calyx's time goes beyond plain routing's (perf record -a, the profiled run's calyx and plain tests, %s): %s",
				dpLabel[t], extraUnit[t], extraTime(t, c, p))
		}
	}
	var rows []Row
	unit := map[string]string{"tcp1": "Gbit/s", "tcp4": "Gbit/s", "udp64": "kpps"}
	for _, mode := range []struct {
		name, label string
		goals       bool
	}{{"calyx", "", true}, {"calyx-observable", " (observable mode)", true}, {"calyx-rpstrict", " (strict rp_filter: fast out only)", false}} {
		for _, t := range tests {
			plain, vxlan := RatioAtLeast(0.95, "≥ 95% of plain"), RatioAtLeast(1, "ahead of VXLAN")
			if !mode.goals {
				plain, vxlan = nil, nil
			}
			rows = append(rows,
				Row{Part: "datapath", Metric: dpLabel[t] + " vs plain" + mode.label, Unit: unit[t], Calyx: Of(res[key{mode.name, t}]...),
					RefName: "plain routing", Ref: Of(res[key{"plain", t}]...), Goal: plain},
				Row{Part: "datapath", Metric: dpLabel[t] + " vs VXLAN" + mode.label, Unit: unit[t], Calyx: Of(res[key{mode.name, t}]...),
					RefName: "kernel VXLAN", Ref: Of(res[key{"vxlan", t}]...), Goal: vxlan},
			)
		}
	}
	for _, t := range tests {
		metric, unit := dpLabel[t]+": machine CPU per Gbit", "core-s/Gbit"
		if t == "udp64" {
			metric, unit = dpLabel[t]+": machine CPU per packet received", "core-µs"
		}
		rows = append(rows,
			Row{Part: "datapath", Metric: metric, Unit: unit, Calyx: Of(res[key{"calyx", t + "cpu"}]...),
				RefName: "plain routing", Ref: Of(res[key{"plain", t + "cpu"}]...)},
			Row{Part: "datapath", Metric: metric, Unit: unit, Calyx: Of(res[key{"calyx", t + "cpu"}]...),
				RefName: "kernel VXLAN", Ref: Of(res[key{"vxlan", t + "cpu"}]...)},
		)
	}
	e.Note("datapath: iperf3 %d s per test from pod %s on %s to pod %s on %s; modes interleaved in every run over the same pods: calyx = the agents' tunl0 (eBPF IPIP) in its fast mode (nothing captures on tunl0), calyx observable = the same while a packet socket on each node's tunl0 (a filter that keeps nothing) keeps every packet crossing tunl0, calyx with a strict rp_filter = the same with rp_filter 1 on both nodes (all and the NIC), under which the agents keep arriving packets crossing tunl0 and leaving ones fast, plain = a /32 route via the peer node on %s, VXLAN = a kernel VXLAN device (VNI 4096, MTU %d) with static neighbour/FDB entries. Pods' eth0 MTU is calyx's 1480 in every mode; calyx's tc program stays on the NIC's ingress in every mode (it passes non-IPIP packets on). CPU is the whole machine's busy time from /proc/stat over the test, so other load on the machine counts too.",
		iperfSeconds, cli.Key(), cliNode, srv.Key(), srvNode, lab.NICName, vxlanMTU)
	return rows, nil
}

// dpTest sets mode m up, checks that the pods reach each other, runs
// test t and takes the mode down again. With profile, perf samples the
// machine, and for calyx the kernel accounts the time spent in calyx's tc
// programs.
func dpTest(e *Env, m dpMode, t string, profile bool, cli, srv *lab.PodState, profiles map[string]profiled) (iperfResult, error) {
	defer m.off()
	if err := m.setup(); err != nil {
		return iperfResult{}, fmt.Errorf("setting up: %w", err)
	}
	if _, err := inNetNSCmd(cli.NetNS, "ping", "-c", "1", "-W", "2", srv.IP); err != nil {
		return iperfResult{}, fmt.Errorf("the client pod cannot reach the server pod: %w", err)
	}
	var prof *perfRun
	var progs *bpfStats
	if profile {
		prof = startPerf(e.Dir, m.name+"-"+t, iperfSeconds, []string{"-a"}, datapathComms)
		if m.name == "calyx" {
			progs = startBPFStats()
		}
	}
	r, err := iperf(cli.NetNS, srv.NetNS, srv.IP, t)
	if prof != nil && err == nil {
		profiles[m.name+"/"+t] = profiled{prof, r}
	}
	if prof != nil {
		e.Note("datapath profile, %s %s (perf record -a, samples of iperf3, softirq and idle threads, top symbols): %s", m.name, dpLabel[t], prof.summary())
	}
	if progs != nil {
		e.Note("datapath, calyx %s: time in calyx's own tc programs (kernel BPF run-time stats): %s", dpLabel[t], progs.stop(r.packets, r.wall))
	}
	return r, err
}

// iperfResult is one iperf3 test: Gbit/s (TCP) or received kpps (UDP),
// and the machine's CPU per Gbit (TCP) or per received packet (UDP).
type iperfResult struct {
	value, cpu float64
	// packets is how many were received (UDP only), wall how long the
	// client command ran.
	packets float64
	wall    time.Duration
}

func (r iperfResult) format(t string) string {
	if t == "udp64" {
		return fmt.Sprintf("%.0f kpps, %.1f core-µs/packet", r.value, r.cpu)
	}
	return fmt.Sprintf("%.2f Gbit/s, %.3f core-s/Gbit", r.value, r.cpu)
}

func addVXLAN(nodeA, ipA, addrA, nodeB, ipB, addrB string) error {
	for _, x := range [][3]string{{nodeA, ipA, addrA}, {nodeB, ipB, addrB}} {
		cmds := [][]string{
			{"link", "add", vxlanDev, "type", "vxlan", "id", "4096", "dev", lab.NICName, "local", x[1], "dstport", "4789", "nolearning"},
			{"link", "set", vxlanDev, "mtu", strconv.Itoa(vxlanMTU), "up"},
			{"addr", "add", x[2] + "/32", "dev", vxlanDev},
		}
		for _, c := range cmds {
			if _, err := ipIn(x[0], c...); err != nil {
				return fmt.Errorf("setting up VXLAN: %w", err)
			}
		}
	}
	mac := func(node string) (string, error) {
		out, err := ipIn(node, "-j", "link", "show", vxlanDev)
		if err != nil {
			return "", err
		}
		var l []struct {
			Address string `json:"address"`
		}
		if err := json.Unmarshal([]byte(out), &l); err != nil || len(l) == 0 {
			return "", fmt.Errorf("reading %s's MAC on %s: %v", vxlanDev, node, err)
		}
		return l[0].Address, nil
	}
	for _, x := range [][4]string{{nodeA, nodeB, ipB, addrB}, {nodeB, nodeA, ipA, addrA}} {
		m, err := mac(x[1])
		if err != nil {
			return err
		}
		if _, err := ipIn(x[0], "neigh", "replace", x[3], "lladdr", m, "dev", vxlanDev, "nud", "permanent"); err != nil {
			return err
		}
		if _, err := sh("bridge", "-n", x[0], "fdb", "append", m, "dev", vxlanDev, "dst", x[2], "self", "permanent"); err != nil {
			return err
		}
	}
	return nil
}

// cpuJiffies is the machine's busy and total time from /proc/stat.
func cpuJiffies() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	for i, s := range f[1:] {
		v, _ := strconv.ParseFloat(s, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// iperf runs one test from the client pod.
func iperf(podNS, srvNS, server, test string) (iperfResult, error) {
	args := []string{"iperf3", "--client", server, "--port", "5201", "--time", strconv.Itoa(iperfSeconds), "--json"}
	switch test {
	case "tcp1":
	case "tcp4":
		args = append(args, "--parallel", "4")
	case "udp64":
		args = append(args, "--udp", "--length", "64", "--bitrate", "0")
	}
	// A fresh one-off server per test: a server that has just swallowed
	// a UDP flood may turn the next client away.
	srvCmd := exec.Command("iperf3", "--server", "--one-off", "--port", "5201")
	exited, err := spawn.Start(srvCmd, nsexec.NamedPath(srvNS))
	if err != nil {
		return iperfResult{}, fmt.Errorf("starting the iperf3 server: %w", err)
	}
	defer func() {
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			srvCmd.Process.Kill()
			<-exited
		}
	}()
	var out string
	var b0, b1 float64
	var began time.Time
	var wall time.Duration
	for attempt := 0; ; attempt++ {
		time.Sleep(200 * time.Millisecond) // the server's listen
		b0, _ = cpuJiffies()
		began = time.Now()
		out, err = inNetNSCmd(podNS, args...)
		wall = time.Since(began)
		b1, _ = cpuJiffies()
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "refused") {
			break
		}
	}
	if err != nil {
		return iperfResult{}, err
	}
	var r struct {
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				Seconds     float64 `json:"seconds"`
				Packets     float64 `json:"packets"`
				LostPackets float64 `json:"lost_packets"`
			} `json:"sum"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3 output: %v %s", err, r.Error)
	}
	cpuSeconds := (b1 - b0) / 100 // USER_HZ
	if test == "udp64" {
		s := r.End.Sum
		received := s.Packets - s.LostPackets
		if s.Seconds == 0 || received <= 0 {
			return iperfResult{}, fmt.Errorf("iperf3 UDP output without a sum, or nothing received")
		}
		// CPU over the whole command (with iperf3's start and exit)
		// against the packets of its measured seconds: a slight
		// overestimate, the same for every mode.
		return iperfResult{value: received / s.Seconds / 1e3, cpu: cpuSeconds * 1e6 / received, packets: received, wall: wall}, nil
	}
	gbit := r.End.SumReceived.Bytes * 8 / 1e9
	return iperfResult{value: r.End.SumReceived.BitsPerSecond / 1e9, cpu: cpuSeconds / gbit, wall: wall}, nil
}

// profiled is one test's perf profile and what the test received.
type profiled struct {
	prof *perfRun
	r    iperfResult
}

var extraUnit = map[string]string{"tcp4": "CPU time per Gbit received, core-ms", "udp64": "CPU time per packet received, core-µs"}

// perUnit converts nanoseconds of CPU over a test to extraUnit's unit:
// per Gbit (TCP) or per packet (UDP) received while perf sampled, which
// is the test's iperfSeconds.
func (p profiled) perUnit(t string, ns float64) float64 {
	if t == "udp64" {
		return ns / 1e3 / (p.r.value * 1e3 * iperfSeconds)
	}
	return ns / 1e6 / (p.r.value * iperfSeconds)
}

// extraTime compares calyx's profile with plain routing's, both per unit
// received: the machine's busy time, the functions plain routing never
// ran (calyx's programs and what they call, the redirect, …), and the
// shared functions that grew most. The samples' noise is that of the
// tests: read it beside the rows.
func extraTime(t string, c, p profiled) string {
	cs, err := c.prof.times()
	if err != nil {
		return err.Error()
	}
	ps, err := p.prof.times()
	if err != nil {
		return err.Error()
	}
	busy := func(x profiled, syms map[string]float64) float64 {
		var ns float64
		for s, v := range syms {
			if !isIdle(s) {
				ns += v
			}
		}
		return x.perUnit(t, ns)
	}
	only, grown := map[string]float64{}, map[string]float64{}
	var onlySum float64
	for s, v := range cs {
		if isIdle(s) {
			continue
		}
		if ps[s] == 0 {
			only[s] = c.perUnit(t, v)
			onlySum += only[s]
		} else if d := c.perUnit(t, v) - p.perUnit(t, ps[s]); d > 0 {
			grown[s] = d
		}
	}
	list := func(m map[string]float64, n int) string {
		var l []string
		for _, s := range topSymbols(m, n) {
			l = append(l, fmt.Sprintf("`%s` %.3g", strings.TrimPrefix(s, "[k] "), m[s]))
		}
		return strings.Join(l, ", ")
	}
	return fmt.Sprintf("busy %.3g against plain's %.3g; in functions plain routing never ran %.3g: %s; most grown of the shared ones: %s",
		busy(c, cs), busy(p, ps), onlySum, list(only, 12), list(grown, 6))
}

// isIdle says whether a kernel symbol is the idle loop's, where a CPU
// with nothing to do waits.
func isIdle(sym string) bool {
	for _, s := range []string{"safe_halt", "default_idle", "cpuidle", "do_idle", "idle_enter", "idle_exit", "mwait"} {
		if strings.Contains(sym, s) {
			return true
		}
	}
	return false
}

// strictRPFilter sets rp_filter to 1 (strict) on the nodes, all and the NIC,
// and waits for their agents to keep arriving packets on tunl0; or back to
// the lab's 0, and waits for the fast mode both ways.
func strictRPFilter(nodes []string, strict bool) error {
	v := map[bool]string{true: "1", false: "0"}[strict]
	for _, n := range nodes {
		err := inNetNS(n, func() error {
			for _, dev := range []string{"all", lab.NICName} {
				if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", dev, "rp_filter"), []byte(v), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("rp_filter %s on %s: %w", v, n, err)
		}
	}
	for _, n := range nodes {
		if err := lab.WaitFastReceive(n, !strict, 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}
