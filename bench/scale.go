package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/spawn"
)

var scaleSizes = []int{1000, 5000, 10000}

const (
	scalePoolCIDR = "10.128.0.0/9"
	blocksPerNode = 4
	// scaleIdle is one resync period of the agent (its default): the
	// window starts when the routes are in, so it holds the rest of the
	// start-up and exactly one periodic full resync.
	scaleIdle       = 30 * time.Second
	scaleAgentNode  = "bench-agent"
	scaleCPAddr     = "10.77.0.1"
	scaleAgentAddr  = "10.77.0.2"
	scaleCreateJobs = 32
)

// scaleEnv is a control plane in a namespace of its own and a node
// namespace wired to it by a veth, the underlay.
type scaleEnv struct {
	e             *Env
	cpNS, agentNS string
	cp            *controlplane.ControlPlane
	kube          kubernetes.Interface
	calyx         versioned.Interface
	kubeconfig    string
	next          int // index of the next remote block to create
	created       int // remote blocks that exist
	pool          netip.Prefix
	agentStateDir string
	agentLogPath  string
}

// runScale creates 1,000 / 5,000 / 10,000 remote blocks (IPAMBlock and
// Node objects in a real kube-apiserver) and starts one real calyx-agent
// at each size: time from its start until every route is in the kernel,
// its RSS, its CPU while idle, and the latency of one more block.
func runScale(ctx context.Context, e *Env) ([]Row, error) {
	s := &scaleEnv{e: e, pool: netip.MustParsePrefix(scalePoolCIDR)}
	sfx := randSuffix()
	s.cpNS, s.agentNS = "cxb-cp-"+sfx, "cxb-agent-"+sfx
	defer nsexec.DeleteNamed(s.cpNS)
	defer nsexec.DeleteNamed(s.agentNS)
	if err := nsexec.CreateNamed(s.cpNS); err != nil {
		return nil, err
	}
	e.Logf("scale: starting a control plane in namespace %s", s.cpNS)
	if err := s.wireAgentNS(); err != nil {
		return nil, err
	}
	var err error
	s.cp, err = controlplane.Start(ctx, controlplane.Options{NetNS: nsexec.NamedPath(s.cpNS), BindAddress: scaleCPAddr,
		AdvertiseAddress: scaleCPAddr, Progress: prefixWriter{e, "scale: "}})
	if err != nil {
		return nil, err
	}
	defer s.cp.Stop()
	cfg := *s.cp.Config
	s.kube = kubernetes.NewForConfigOrDie(&cfg)
	s.calyx = versioned.NewForConfigOrDie(&cfg)
	s.kubeconfig = filepath.Join(e.Dir, "scale-kubeconfig")
	if err := s.cp.WriteKubeconfig(s.kubeconfig, s.cp.URL); err != nil {
		return nil, err
	}
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec: v1alpha1.IPPoolSpec{CIDR: scalePoolCIDR, BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways, NATOutgoing: true}}
	if _, err := s.calyx.CalyxV1alpha1().IPPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := s.kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: scaleAgentNode}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	runs := min(e.Opts.Runs, 2)
	var rows []Row
	for _, size := range scaleSizes {
		if err := s.grow(ctx, size); err != nil {
			return rows, err
		}
		var sync, rss, hwm, idle, one, ref []float64
		for run := range runs {
			r, err := s.measure(ctx, size, e.Opts.Profile && size == scaleSizes[len(scaleSizes)-1] && run == runs-1)
			if err != nil {
				return rows, err
			}
			sync, rss, hwm, idle, one = append(sync, r.sync), append(rss, r.rssMB), append(hwm, r.hwmMB), append(idle, r.idlePct), append(one, r.oneMS)
			refT, err := ipBatch(size)
			if err != nil {
				return rows, err
			}
			ref = append(ref, refT)
			e.Logf("scale: %d blocks, run %d/%d: full sync %.3f s (ip -batch %.3f s), RSS %.1f MB (peak %.1f), idle CPU %.2f%% of a core, one more block %.1f ms",
				size, run+1, runs, r.sync, refT, r.rssMB, r.hwmMB, r.idlePct, r.oneMS)
		}
		var syncGoal, rssGoal, idleGoal *Goal
		if size == 5000 {
			syncGoal, rssGoal = AtMost(1, "s"), AtMost(60, "MB")
		}
		idleGoal = AtMost(1, "% of a core")
		rows = append(rows,
			Row{Part: "scale", Metric: fmt.Sprintf("%d blocks: full sync (agent start → all routes)", size), Unit: "s", Calyx: Of(sync...),
				RefName: "ip -batch of the same routes", Ref: Of(ref...), Goal: syncGoal},
			Row{Part: "scale", Metric: fmt.Sprintf("%d blocks: agent RSS after sync + %s idle", size, scaleIdle), Unit: "MB", Calyx: Of(rss...), Goal: rssGoal},
			Row{Part: "scale", Metric: fmt.Sprintf("%d blocks: agent peak RSS (VmHWM)", size), Unit: "MB", Calyx: Of(hwm...)},
			Row{Part: "scale", Metric: fmt.Sprintf("%d blocks: agent CPU while idle %s", size, scaleIdle), Unit: "% of a core", Calyx: Of(idle...), Goal: idleGoal},
			Row{Part: "scale", Metric: fmt.Sprintf("%d blocks: one more block → its route", size), Unit: "ms", Calyx: Of(one...)},
		)
	}
	e.Note("scale: one real calyx-agent (--ipip-datapath=ebpf) in a namespace of its own, its underlay a veth to the namespace of a real kube-apiserver; remote blocks are IPAMBlock objects, %d per Node object (Nodes annotated with %s), created before the agent starts; full sync is timed from the agent's exec until the kernel has a route for every remote block (polled every 20 ms); %d run(s) per size. Reference: `ip -batch` adding the same routes to a device (ifb: this kernel has no dummy) in a fresh namespace.",
		blocksPerNode, desired.AnnotationIPv4Address, runs)
	return rows, nil
}

func (s *scaleEnv) wireAgentNS() error {
	nsexec.DeleteNamed(s.agentNS)
	if err := nsexec.CreateNamed(s.agentNS); err != nil {
		return err
	}
	ipIn(s.cpNS, "link", "del", "eth0")
	cmds := [][]string{
		{"-n", s.cpNS, "link", "add", "eth0", "type", "veth", "peer", "name", "ens160", "netns", s.agentNS},
		{"-n", s.cpNS, "addr", "add", scaleCPAddr + "/24", "dev", "eth0"},
		{"-n", s.cpNS, "link", "set", "eth0", "up"},
		{"-n", s.agentNS, "addr", "add", scaleAgentAddr + "/24", "dev", "ens160"},
		{"-n", s.agentNS, "link", "set", "ens160", "up"},
		{"-n", s.agentNS, "route", "add", "default", "via", scaleCPAddr},
	}
	for _, c := range cmds {
		if _, err := sh("ip", c...); err != nil {
			return fmt.Errorf("wiring the agent's namespace: %w", err)
		}
	}
	return nil
}

func blockCIDR(pool netip.Prefix, i int) netip.Prefix {
	b := pool.Addr().As4()
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) + uint32(i)*64
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
}

func remoteNode(i int) (name, ip string) {
	n := i / blocksPerNode
	return fmt.Sprintf("remote-%05d", n), fmt.Sprintf("10.79.%d.%d", n/250, n%250+1)
}

// grow creates remote blocks, and their nodes, until there are size.
// The agent's own block comes from the same pool: an index it took fails
// with AlreadyExists and the worker takes the next one.
func (s *scaleEnv) grow(ctx context.Context, size int) error {
	want := size - s.created
	if want <= 0 {
		return nil
	}
	begin := time.Now()
	s.e.Logf("scale: creating %d more remote blocks (and their Node objects) → %d", want, size)
	var next, made atomic.Int64
	next.Store(int64(s.next))
	errs := make([]error, scaleCreateJobs)
	var wg sync.WaitGroup
	for w := range scaleCreateJobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Reserve a slot, then create until one index is free.
			for d := made.Add(1); d <= int64(want); d = made.Add(1) {
				for {
					err := s.createRemote(ctx, int(next.Add(1)-1))
					if err == errSkipped {
						continue
					}
					if err != nil {
						errs[w] = err
						return
					}
					break
				}
				if d%1000 == 0 {
					s.e.Logf("scale: … %d/%d", d, want)
				}
			}
		}()
	}
	wg.Wait()
	s.next = int(next.Load())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.created = size
	s.e.Logf("scale: %d remote blocks exist (created in %s)", s.created, time.Since(begin).Round(time.Millisecond))
	return nil
}

func (s *scaleEnv) createRemote(ctx context.Context, i int) error {
	name, ip := remoteNode(i)
	if i%blocksPerNode == 0 {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
			Annotations: map[string]string{desired.AnnotationIPv4Address: ip + "/16"}}}
		if _, err := s.kube.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating Node %s: %w", name, err)
		}
	}
	cidr := blockCIDR(s.pool, i)
	b := &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: ipam.BlockName(cidr)},
		Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr.String(), Node: name, Pool: "default-ipv4-ippool"}}
	if _, err := s.calyx.CalyxV1alpha1().IPAMBlocks().Create(ctx, b, metav1.CreateOptions{}); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return errSkipped
		}
		return fmt.Errorf("creating IPAMBlock %s: %w", b.Name, err)
	}
	return nil
}

var errSkipped = errors.New("skipped: the block exists")

type scaleResult struct {
	sync, rssMB, hwmMB, idlePct, oneMS float64
}

// measure starts the agent on a fresh node namespace and measures it.
func (s *scaleEnv) measure(ctx context.Context, size int, profile bool) (scaleResult, error) {
	var r scaleResult
	if err := s.wireAgentNS(); err != nil {
		return r, err
	}
	dir, err := os.MkdirTemp(s.e.Dir, "agent-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return r, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.e.Opts.BinDir, "calyx-agent"),
		"--node-name="+scaleAgentNode, "--kubeconfig="+s.kubeconfig, "--underlay=interface=^ens160$",
		"--ipip-datapath=ebpf", "--state-dir="+filepath.Join(dir, "state"), "--rt-protos-dir=",
		"--ipam-socket="+filepath.Join(dir, "ipam.sock"),
		"--health-address=127.0.0.1:9099", "--metrics-address=127.0.0.1:9091")
	cmd.Stdout, cmd.Stderr = logf, logf
	h, nsh, err := netlinkIn(s.agentNS)
	if err != nil {
		return r, err
	}
	defer nsh.Close()
	defer h.Close()
	s.e.Logf("scale: starting calyx-agent with %d remote blocks", size)
	begin := time.Now()
	exited, err := spawn.Start(cmd, nsexec.NamedPath(s.agentNS))
	if err != nil {
		return r, fmt.Errorf("starting calyx-agent: %w", err)
	}
	if profile {
		// The first seconds of the agent's life: its full sync.
		p := startPerf(s.e.Dir, "agent-sync", 3, []string{"-p", strconv.Itoa(cmd.Process.Pid)}, nil)
		defer func() {
			s.e.Note("scale profile, calyx-agent's first 3 s with %d blocks (start and full sync; perf record -p, top symbols): %s", size, p.summary())
		}()
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	deadline := begin.Add(60 * time.Second)
	for {
		n, err := s.remoteRoutes(h)
		if err != nil {
			return r, err
		}
		if n >= s.created {
			r.sync = time.Since(begin).Seconds()
			break
		}
		select {
		case err := <-exited:
			return r, fmt.Errorf("calyx-agent exited (%v): %s", err, tailFile(logf.Name(), 10))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("after 60 s the agent has %d of %d routes: %s", n, s.created, tailFile(logf.Name(), 10))
		}
	}
	pid := cmd.Process.Pid
	cpu0 := procCPU(pid)
	var idleProf *perfRun
	if profile {
		idleProf = startPerf(s.e.Dir, "agent-idle", int(scaleIdle.Seconds()), []string{"-p", strconv.Itoa(pid)}, nil)
	}
	time.Sleep(scaleIdle)
	cpu1 := procCPU(pid)
	if idleProf != nil {
		s.e.Note("scale profile, calyx-agent idle for %s with %d blocks (perf record -p, top symbols): %s", scaleIdle, size, idleProf.summary())
	}
	r.idlePct = 100 * (cpu1 - cpu0) / scaleIdle.Seconds()
	r.rssMB, r.hwmMB = procMem(pid)

	// One more block, on a node that exists, watched by netlink.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen, err := watchRoutes(wctx, []string{s.agentNS})
	if err != nil {
		return r, err
	}
	for {
		i := s.next
		s.next++
		cidr := blockCIDR(s.pool, i)
		t0 := time.Now()
		if err := s.createRemote(ctx, i); err == errSkipped {
			continue
		} else if err != nil {
			return r, err
		}
		s.created++
		timeout := time.After(10 * time.Second)
		for r.oneMS == 0 {
			select {
			case x := <-seen:
				if x.dst == cidr {
					r.oneMS = ms(x.at.Sub(t0))
				}
			case <-timeout:
				return r, fmt.Errorf("the route to one more block %s did not come within 10 s", cidr)
			}
		}
		break
	}
	return r, nil
}

// remoteRoutes counts the agent's routes to remote blocks of the pool.
func (s *scaleEnv) remoteRoutes(h *netlink.Handle) (int, error) {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtoCalyx}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, fmt.Errorf("listing routes in %s: %w", s.agentNS, err)
	}
	n := 0
	for _, r := range routes {
		if r.Dst == nil || r.Type == 6 /* blackhole */ {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok && s.pool.Contains(a) {
			n++
		}
	}
	return n, nil
}

// procCPU is a process's user + system time in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// procMem is a process's VmRSS and VmHWM in MB.
func procMem(pid int) (rss, hwm float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[0], 64)
		switch k {
		case "VmRSS":
			rss = kb / 1024
		case "VmHWM":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

// ipBatch times `ip -batch` adding n routes like the agent's to a dummy
// device in a fresh namespace: what the kernel and iproute2 alone take.
func ipBatch(n int) (float64, error) {
	name := "cxb-ref-" + randSuffix()
	if err := nsexec.CreateNamed(name); err != nil {
		return 0, err
	}
	defer nsexec.DeleteNamed(name)
	for _, c := range [][]string{{"link", "add", "ref0", "type", "ifb"}, {"link", "set", "ref0", "up"}} {
		if _, err := ipIn(name, c...); err != nil {
			return 0, err
		}
	}
	var b strings.Builder
	pool := netip.MustParsePrefix(scalePoolCIDR)
	for i := range n {
		_, ip := remoteNode(i)
		fmt.Fprintf(&b, "route add %s via %s dev ref0 onlink proto 202\n", blockCIDR(pool, i), ip)
	}
	f, err := os.CreateTemp("", "calyx-bench-routes-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	f.WriteString(b.String())
	f.Close()
	begin := time.Now()
	if _, err := ipIn(name, "-batch", f.Name()); err != nil {
		return 0, err
	}
	return time.Since(begin).Seconds(), nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return "agent log: " + strings.Join(l, " ⏎ ")
}
