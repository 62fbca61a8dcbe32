// Package crash kills the real CNI binaries in the middle of their work
// and checks what the IPAM is left with: no address held twice, and every
// address whose pod is gone released by the garbage collector.
package crash

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/agent/ipamgc"
	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
	"github.com/calyx-net/calyx/lab/spawn"
)

const (
	nodeName  = "crash-node"
	network   = "k8s-pod-network"
	namespace = "default"
	pods      = 100
	// maxKillDelay bounds the random delay before a SIGKILL.
	maxKillDelay = 40 * time.Millisecond
	// maxWiringDelay bounds the delay of a kill after calyx-ipam returned.
	maxWiringDelay = 5 * time.Millisecond
)

// rig is one node's CNI setup: the real binaries, a node namespace that
// reaches the real API server, and the netconf a runtime would pass.
type rig struct {
	t        *testing.T
	bin      string
	node     *testnet.NS
	netconf  []byte
	kube     kubernetes.Interface
	calyx    versioned.Interface
	ipamPath string
}

func build(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	begin := time.Now()
	cmd := exec.Command("go", "build", "-o", bin+"/", "github.com/calyx-net/calyx/cmd/calyx", "github.com/calyx-net/calyx/cmd/calyx-ipam")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building calyx and calyx-ipam: %v\n%s", err, out)
	}
	t.Logf("built calyx and calyx-ipam in %s", time.Since(begin).Round(time.Millisecond))
	return bin
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, bin: build(t)}
	r.ipamPath = filepath.Join(r.bin, "calyx-ipam")
	cp := cptest.Start(t)
	r.kube = kubernetes.NewForConfigOrDie(cp.Config)
	r.calyx = versioned.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	if _, err := r.calyx.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default-ipv4-ippool"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the pool: %v", err)
	}
	if _, err := r.kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the node: %v", err)
	}
	// Pods need their service account; no controller-manager makes it.
	if _, err := r.kube.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the default service account: %v", err)
	}

	r.node = testnet.New(t, "crashnode")
	cptest.ForwardInto(t, "/var/run/netns/"+r.node.Name, cp.URL)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"nodename": nodeName + "\n", "mtu": "1430\n"} {
		if err := os.WriteFile(filepath.Join(state, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The shipped conflist's calyx entry, without the agent's IPAM socket:
	// calyx runs the calyx-ipam binary, which this test kills.
	conf := map[string]any{
		"cniVersion":  "1.1.0",
		"name":        network,
		"type":        "calyx",
		"state_dir":   state,
		"veth_prefix": "cali",
		"ipam": map[string]any{
			"type":          "calyx-ipam",
			"kubeconfig":    cp.Kubeconfig,
			"nodename_file": filepath.Join(state, "nodename"),
			"timeout":       "10s",
			"lock_file":     filepath.Join(dir, "ipam.lock"),
		},
	}
	var err error
	if r.netconf, err = json.Marshal(conf); err != nil {
		t.Fatal(err)
	}
	return r
}

// sandbox is one pod sandbox: a container ID and its network namespace.
type sandbox struct {
	pod   string
	id    string
	netns string // name under /var/run/netns
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (r *rig) newSandbox(pod string) *sandbox {
	r.t.Helper()
	s := &sandbox{pod: pod, id: randHex(16), netns: "crashpod-" + randHex(4)}
	if out, err := exec.Command("ip", "netns", "add", s.netns).CombinedOutput(); err != nil {
		r.t.Fatalf("ip netns add %s: %v: %s", s.netns, err, out)
	}
	r.t.Cleanup(func() { s.remove(r.t) })
	return s
}

// remove deletes the sandbox's namespace, as a runtime does when the
// sandbox goes; the pod's veth goes with it.
func (s *sandbox) remove(t *testing.T) {
	if _, err := os.Stat(filepath.Join("/var/run/netns", s.netns)); errors.Is(err, os.ErrNotExist) {
		return
	}
	if out, err := exec.Command("ip", "netns", "del", s.netns).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v: %s", s.netns, err, out)
	}
}

// killPlan is where a call is killed: which binary, how long after it
// starts. target "" kills nothing.
type killPlan struct {
	// target is "calyx", "calyx-ipam", or "calyx-wiring": calyx, delay
	// after its calyx-ipam returned, while it wires the pod.
	target string
	delay  time.Duration
}

// outcome is what became of one call.
type outcome struct {
	ok     bool
	stage  string // where the kill landed
	result []byte
	stderr string
}

// Stages a kill can land in.
const (
	stageNone          = "not killed"
	stageFinishedFirst = "finished before the kill"
	stageCalyxBefore   = "calyx killed before calyx-ipam started"
	stageCalyxDuring   = "calyx killed while calyx-ipam ran (orphaned)"
	stageCalyxAfter    = "calyx killed after calyx-ipam returned"
	stageIPAM          = "calyx-ipam killed"
	stageIPAMNeverRan  = "calyx-ipam not caught before the call ended"
)

// run invokes calyx with command for sb from inside the node's
// namespace, as a runtime does, and kills what plan says when it says.
func (r *rig) run(command string, sb *sandbox, plan killPlan) outcome {
	r.t.Helper()
	cmd := exec.Command(filepath.Join(r.bin, "calyx"))
	cmd.Stdin = bytes.NewReader(r.netconf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + sb.id,
		"CNI_NETNS=" + filepath.Join("/var/run/netns", sb.netns),
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + r.bin,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + sb.pod + ";K8S_POD_INFRA_CONTAINER_ID=" + sb.id,
		"PATH=" + os.Getenv("PATH"),
	}
	done, err := spawn.Start(cmd, filepath.Join("/var/run/netns", r.node.Name))
	if err != nil {
		r.t.Fatalf("starting calyx %s: %v", command, err)
	}
	calyxPid := cmd.Process.Pid
	start := time.Now()

	// Watch for calyx's calyx-ipam child until calyx exits, and kill one
	// of them when the plan says.
	var (
		ipamSeen, ipamGone, killed bool
		stageAtKill                string
	)
	var werr error
	exited := false
	ipamPid := 0
	var ipamFound, ipamGoneAt time.Time
	for !exited {
		select {
		case werr = <-done:
			exited = true
			continue
		default:
		}
		if plan.target == "" {
			// Nothing to kill, nothing to watch.
		} else if pid := childByExe(calyxPid, r.ipamPath); pid != 0 {
			if !ipamSeen {
				ipamSeen, ipamPid, ipamFound = true, pid, time.Now()
			}
		} else if ipamSeen && !ipamGone && !processAlive(ipamPid, r.ipamPath) {
			ipamGone, ipamGoneAt = true, time.Now()
		}
		if !killed && plan.target == "calyx" && time.Since(start) >= plan.delay {
			killed = true
			switch {
			case !ipamSeen:
				stageAtKill = stageCalyxBefore
			case ipamGone || !processAlive(ipamPid, r.ipamPath):
				stageAtKill = stageCalyxAfter
			default:
				stageAtKill = stageCalyxDuring
			}
			syscall.Kill(calyxPid, syscall.SIGKILL)
		}
		if !killed && plan.target == "calyx-wiring" && ipamGone && time.Since(ipamGoneAt) >= plan.delay {
			killed = true
			stageAtKill = stageCalyxAfter
			syscall.Kill(calyxPid, syscall.SIGKILL)
		}
		if !killed && plan.target == "calyx-ipam" && ipamSeen && time.Since(ipamFound) >= plan.delay {
			killed = true
			if processAlive(ipamPid, r.ipamPath) {
				syscall.Kill(ipamPid, syscall.SIGKILL)
				stageAtKill = stageIPAM
			} else {
				stageAtKill = stageFinishedFirst // calyx-ipam had returned
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	o := outcome{ok: werr == nil, result: stdout.Bytes(), stderr: stderr.String()}
	// A kill that reached calyx shows in its exit; one that reached only
	// calyx-ipam, in calyx's error.
	var exit *exec.ExitError
	calyxKilled := errors.As(werr, &exit) && exit.Sys().(syscall.WaitStatus).Signaled()
	if stageAtKill != "" && stageAtKill != stageIPAM && !calyxKilled {
		stageAtKill = stageFinishedFirst
	}
	switch {
	case plan.target == "":
		o.stage = stageNone
	case stageAtKill != "":
		o.stage = stageAtKill
	case (plan.target == "calyx-ipam" || plan.target == "calyx-wiring") && !ipamSeen:
		o.stage = stageIPAMNeverRan
	default:
		o.stage = stageFinishedFirst
	}
	return o
}

// childByExe finds a child of parent running exe.
func childByExe(parent int, exe string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(parent) {
			continue
		}
		if processAlive(pid, exe) {
			return pid
		}
	}
	return 0
}

// processAlive says whether pid runs exe (and is not a zombie).
func processAlive(pid int, exe string) bool {
	link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && link == exe
}

// waitOrphans waits until no calyx-ipam of this test runs: one whose
// calyx was killed finishes on its own.
func (r *rig) waitOrphans() int {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	seen := 0
	for {
		n := 0
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil && processAlive(pid, r.ipamPath) {
				n++
			}
		}
		seen = max(seen, n)
		if n == 0 {
			return seen
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d calyx-ipam processes still run after 30s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// addResultIP reads the pod address from an ADD's result.
func addResultIP(t *testing.T, out []byte) netip.Addr {
	t.Helper()
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD result %q: no address (%v)", out, err)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		t.Fatalf("ADD result address %q: %v", res.IPs[0].Address, err)
	}
	return p.Addr()
}

// ipamState is what the IPAM objects hold.
type ipamState struct {
	byHandle map[string][]netip.Addr // allocations
	pods     map[string]string       // handle → pod name
	// problems are addresses held twice: by two allocations, or a handle
	// (one sandbox) holding two.
	problems []string
	// staleIndex counts index entries that point at an address their
	// handle does not hold (free, or another's since): left by a DEL that
	// died between releasing and deleting the entry. Releases go by the
	// block's allocations, never by the entry alone, so they free nothing
	// of another's.
	staleIndex int
	handles    []string // index entries' handles
}

func (r *rig) state() ipamState {
	r.t.Helper()
	ctx := context.Background()
	st := ipamState{byHandle: map[string][]netip.Addr{}, pods: map[string]string{}}
	blocks, err := r.calyx.CalyxV1alpha1().IPAMBlocks().List(ctx, metav1.ListOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	owner := map[string]map[int]string{} // block → ordinal → handle
	seenAddr := map[netip.Addr]string{}
	for _, b := range blocks.Items {
		cidr := netip.MustParsePrefix(b.Spec.CIDR)
		owner[b.Name] = map[int]string{}
		for _, a := range b.Spec.Allocations {
			addr, _ := v1alpha1.AddrAt(cidr, a.Ordinal)
			if h, dup := seenAddr[addr]; dup {
				st.problems = append(st.problems, fmt.Sprintf("%s allocated to %s and %s", addr, h, a.Handle))
			}
			seenAddr[addr] = a.Handle
			owner[b.Name][a.Ordinal] = a.Handle
			st.byHandle[a.Handle] = append(st.byHandle[a.Handle], addr)
			st.pods[a.Handle] = a.Pod
		}
	}
	for h, addrs := range st.byHandle {
		if len(addrs) > 1 {
			st.problems = append(st.problems, fmt.Sprintf("handle %s holds %v", h, addrs))
		}
	}
	hs, err := r.calyx.CalyxV1alpha1().IPAMHandles().List(ctx, metav1.ListOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	for _, h := range hs.Items {
		st.handles = append(st.handles, h.Spec.Handle)
		for _, o := range h.Spec.Ordinals {
			if owner[h.Spec.Block][o] != h.Spec.Handle {
				st.staleIndex++
			}
		}
	}
	sort.Strings(st.problems)
	sort.Strings(st.handles)
	return st
}

func seed(t *testing.T) uint64 {
	if v := os.Getenv("CALYX_CRASH_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CALYX_CRASH_SEED=%q: want a number", v)
		}
		return s
	}
	return 11
}

// TestCrashDuringAdd runs 100 pod ADDs through the real calyx and
// calyx-ipam, each killed with SIGKILL at a random point, followed by what
// a runtime does: a DEL after a failed ADD (killed too, sometimes), a new
// sandbox for the pods that must run, and for the others a DEL or nothing
// at all (the node lost them). Then no address may be held twice, and a
// garbage collection pass (grace 0) must release every address whose pod
// is gone and keep every running pod's.
func TestCrashDuringAdd(t *testing.T) {
	r := newRig(t)
	s := seed(t)
	rng := mrand.New(mrand.NewPCG(s, s))
	t.Logf("seed %d (CALYX_CRASH_SEED to repeat)", s)
	// calyx and calyx-ipam are killed 0–40 ms after they start; and, as
	// calyx-ipam takes most of an ADD, one kill in five lands in calyx
	// 0–5 ms after its calyx-ipam returned, while it wires the pod.
	plan := func() killPlan {
		switch n := rng.IntN(5); {
		case n == 0:
			return killPlan{target: "calyx-wiring", delay: time.Duration(rng.Int64N(int64(maxWiringDelay) + 1))}
		case n%2 == 1:
			return killPlan{target: "calyx", delay: time.Duration(rng.Int64N(int64(maxKillDelay) + 1))}
		default:
			return killPlan{target: "calyx-ipam", delay: time.Duration(rng.Int64N(int64(maxKillDelay) + 1))}
		}
	}

	type kept struct {
		sb   *sandbox
		addr netip.Addr
	}
	var (
		keep    []kept
		stages  = map[string]int{} // "ADD: stage" → count
		killedN int
		// addTimes are the durations of ADDs nothing killed.
		addTimes []time.Duration
		begin    = time.Now()
	)
	count := func(verb string, o outcome) {
		k := verb + ": " + o.stage
		if o.stage != stageNone && o.stage != stageFinishedFirst && o.stage != stageIPAMNeverRan {
			killedN++
		}
		result := "failed"
		if o.ok {
			result = "succeeded"
		}
		stages[k+" → "+result]++
	}
	for i := range pods {
		pod := fmt.Sprintf("pod-%03d", i)
		keepIt := i%4 == 0
		sb := r.newSandbox(pod)
		add := r.run("ADD", sb, plan())
		count("ADD", add)
		if !add.ok {
			// The runtime tears a failed sandbox down: DEL, itself
			// killed half the time, then the namespace goes.
			p := killPlan{}
			if rng.IntN(2) == 0 {
				p = plan()
			}
			count("DEL after failed ADD", r.run("DEL", sb, p))
			if keepIt {
				// A pod that must run gets DELs until one succeeds, and
				// a new sandbox.
				for attempt := 0; ; attempt++ {
					if o := r.run("DEL", sb, killPlan{}); o.ok {
						break
					} else if attempt == 3 {
						t.Fatalf("DEL of %s/%s keeps failing: %s", pod, sb.id, o.stderr)
					}
				}
			}
			sb.remove(t)
			if keepIt {
				sb = r.newSandbox(pod)
				addStart := time.Now()
				if add = r.run("ADD", sb, killPlan{}); !add.ok {
					t.Fatalf("ADD of a new sandbox of %s failed: %s", pod, add.stderr)
				}
				count("ADD of a new sandbox", add)
				addTimes = append(addTimes, time.Since(addStart))
			}
		}
		switch {
		case keepIt:
			keep = append(keep, kept{sb: sb, addr: addResultIP(t, add.result)})
		case add.ok && rng.IntN(2) == 0:
			// Deleted the ordinary way; the DEL is killed half the time.
			p := killPlan{}
			if rng.IntN(2) == 0 {
				p = plan()
			}
			count("DEL of a running pod", r.run("DEL", sb, p))
			sb.remove(t)
		default:
			// Abandoned: the node lost the pod, nobody calls DEL.
			sb.remove(t)
		}
	}
	orphans := r.waitOrphans()
	if len(addTimes) > 0 {
		sort.Slice(addTimes, func(i, j int) bool { return addTimes[i] < addTimes[j] })
		t.Logf("an ADD nothing kills takes %s (median of %d), %s to %s",
			addTimes[len(addTimes)/2].Round(time.Millisecond), len(addTimes), addTimes[0].Round(time.Millisecond), addTimes[len(addTimes)-1].Round(time.Millisecond))
	}
	t.Logf("%d pods, %d calls killed, in %s; at most %d orphaned calyx-ipam at the end",
		pods, killedN, time.Since(begin).Round(time.Millisecond), orphans)
	var lines []string
	for k, n := range stages {
		lines = append(lines, fmt.Sprintf("%4d  %s", n, k))
	}
	sort.Strings(lines)
	t.Logf("where the kills landed:\n%s", strings.Join(lines, "\n"))

	// No address held twice, and every running pod holds the address its
	// ADD returned.
	before := r.state()
	if len(before.problems) > 0 {
		t.Errorf("addresses held twice after the crashes:\n%s", strings.Join(before.problems, "\n"))
	}
	wantHeld := map[string][]netip.Addr{}
	keptIPs := map[netip.Addr]string{}
	for _, k := range keep {
		wantHeld[network+"."+k.sb.id] = []netip.Addr{k.addr}
		if other, dup := keptIPs[k.addr]; dup {
			t.Errorf("pods %s and %s were both given %s", other, k.sb.pod, k.addr)
		}
		keptIPs[k.addr] = k.sb.pod
	}
	leaked := 0
	for h, addrs := range before.byHandle {
		if _, ok := wantHeld[h]; !ok {
			leaked += len(addrs)
		}
	}
	for h, want := range wantHeld {
		if diff := cmp.Diff(want, before.byHandle[h], cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("running pod's handle %s before GC (-want +got):\n%s", h, diff)
		}
	}
	t.Logf("before GC: %d addresses held, %d by the %d running pods, %d leaked; %d index entries point at addresses their handle does not hold",
		len(before.byHandle), len(keep), len(keep), leaked, before.staleIndex)

	// The running pods as the kubelet writes them; the others are gone.
	ctx := context.Background()
	for _, k := range keep {
		p, err := r.kube.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: k.sb.pod},
			Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.PodIP = k.addr.String()
		p.Status.PodIPs = []corev1.PodIP{{IP: k.addr.String()}}
		if _, err := r.kube.CoreV1().Pods(namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	gc, err := ipamgc.New(ipamgc.Config{Enabled: true, Grace: 0}, "crash-test", r.kube, r.calyx,
		metrics.New(metrics.Sources{}), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	gcStart := time.Now()
	res, err := gc.CollectOnce(ctx)
	if err != nil {
		t.Errorf("GC pass: %v", err)
	}
	gcTook := time.Since(gcStart)
	sc := bufio.NewScanner(&logs)
	for sc.Scan() {
		t.Log(sc.Text())
	}
	byReason := map[string]int{}
	for _, rel := range res.Released {
		byReason[rel.Reason]++
	}
	t.Logf("GC pass in %s: released %d addresses %v, deleted %d index entries",
		gcTook.Round(time.Millisecond), len(res.Released), byReason, len(res.HandlesDeleted))

	after := r.state()
	if len(after.problems) > 0 {
		t.Errorf("addresses held twice after GC:\n%s", strings.Join(after.problems, "\n"))
	}
	if diff := cmp.Diff(wantHeld, after.byHandle, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("after GC, the addresses held must be exactly the running pods' (-want +got):\n%s", diff)
	}
	var wantHandles []string
	for h := range wantHeld {
		wantHandles = append(wantHandles, h)
	}
	sort.Strings(wantHandles)
	if diff := cmp.Diff(wantHandles, after.handles); diff != "" {
		t.Errorf("after GC, the index entries must be exactly the running pods' (-want +got):\n%s", diff)
	}
	// And the running pods are still wired with those addresses.
	for _, k := range keep {
		out, err := exec.Command("ip", "-n", k.sb.netns, "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), " "+k.addr.String()+"/32 ") {
			t.Errorf("pod %s: eth0 should have %s/32: %v: %s", k.sb.pod, k.addr, err, out)
		}
	}
	if len(res.Released) != leaked {
		t.Errorf("GC released %d addresses, but %d were leaked", len(res.Released), leaked)
	}
}
