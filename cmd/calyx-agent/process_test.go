package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/agent/testnet"
	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

var buildOnce struct {
	sync.Once
	bin string
	err error
	out []byte
}

// agentBinary builds calyx-agent once per test binary.
func agentBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "calyx-agent-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.bin = filepath.Join(dir, "calyx-agent")
		buildOnce.out, buildOnce.err = exec.Command("go", "build", "-o", buildOnce.bin, ".").CombinedOutput()
	})
	if buildOnce.err != nil {
		t.Fatalf("go build: %v\n%s", buildOnce.err, buildOnce.out)
	}
	return buildOnce.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.bin != "" {
		os.RemoveAll(filepath.Dir(buildOnce.bin))
	}
	os.Exit(code)
}

// process is calyx-agent running inside a node's namespace.
type process struct {
	node    *testnet.NS
	cmd     *exec.Cmd
	logs    *syncBuffer
	exited  chan struct{}
	waitErr error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// nodeKubeconfig is cp's kubeconfig with the API server at
// 127.0.0.1:6443 as seen from inside node, where a relay to cp listens.
func nodeKubeconfig(t testing.TB, cp *controlplane.ControlPlane, node *testnet.NS) string {
	t.Helper()
	u, err := url.Parse(cp.URL)
	if err != nil {
		t.Fatal(err)
	}
	node.Forward(t, "127.0.0.1:6443", u.Host)
	cfg, err := clientcmd.LoadFromFile(cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://127.0.0.1:6443"
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func startProcess(t testing.TB, node *testnet.NS, name, kubeconfig, stateDir string, extra ...string) *process {
	t.Helper()
	p := &process{node: node, logs: &syncBuffer{}, exited: make(chan struct{})}
	args := append([]string{"netns", "exec", node.Name, agentBinary(t),
		"--underlay=interface=^ens160$", "--ipip-datapath=auto",
		"--state-dir=" + stateDir, "--rt-protos-dir=" + filepath.Join(stateDir, "protos"), "--ipam-socket=" + filepath.Join(stateDir, "ipam.sock"),
		"--health-address=127.0.0.1:9099", "--metrics-address=127.0.0.1:9099"}, extra...)
	p.cmd = exec.Command("ip", args...)
	p.cmd.Env = append(os.Environ(), "NODENAME="+name, "KUBECONFIG="+kubeconfig)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
	})
	return p
}

func (p *process) waitReady(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body := get(t, p.node, "127.0.0.1:9099", "/readyz")
		if code == http.StatusOK {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("calyx-agent exited: %v\n%s", p.waitErr, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %s: %d %s\nlog:\n%s", within, code, body, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSIGKILLWhileTrafficFlows is the restart scenario with the real
// binary and datapath: pods on two nodes exchange a steady UDP stream; both
// agents are killed with SIGKILL and the stream goes on; new agents adopt
// the nodes without changing a route, an address or a rule.
func TestSIGKILLWhileTrafficFlows(t *testing.T) {
	cp := cptest.Start(t)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	calyx := calyxclient.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	if _, err := calyx.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
		ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec:       v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ul := testnet.NewUnderlay(t)
	names := []string{"learn-k8s-2", "learn-k8s-3"}
	ips := map[string]string{"learn-k8s-2": "10.10.100.208", "learn-k8s-3": "10.10.100.209"}
	nodes, kubeconfigs, dirs, procs := map[string]*testnet.NS{}, map[string]string{}, map[string]string{}, map[string]*process{}
	for _, n := range names {
		if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		nodes[n] = ul.AddNode(t, "cx-"+n[len(n)-1:], ips[n]+"/24")
		nodes[n].IP(t, "route", "add", "default", "via", "10.10.100.1") // for proxy ARP; nothing is sent there
		kubeconfigs[n] = nodeKubeconfig(t, cp, nodes[n])
		dirs[n] = t.TempDir()
		procs[n] = startProcess(t, nodes[n], n, kubeconfigs[n], dirs[n])
	}
	for _, n := range names {
		procs[n].waitReady(t, 30*time.Second)
	}

	alloc, err := ipam.NewForConfig(cp.Config, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(node, name string) *testnet.Pod {
		a, err := alloc.AutoAssign(ctx, node, "k8s-pod-network."+name, ipam.Attrs{Namespace: "default", Pod: name, ContainerID: name})
		if err != nil {
			t.Fatal(err)
		}
		return testnet.AddPod(t, nodes[node], a.Addr.String())
	}
	server, client := pod("learn-k8s-2", "server"), pod("learn-k8s-3", "client")
	stream := startStream(t, client, server)
	stream.waitFlowing(t, 5*time.Second)

	// Whatever the new agents change shows up here.
	var changes atomic.Int64
	for _, n := range names {
		ch := make(chan netlink.RouteUpdate, 1024)
		done := make(chan struct{})
		h := nodes[n].Handle
		if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { close(done) })
		go func() {
			for u := range ch {
				if u.Protocol == routes.Protocol {
					changes.Add(1)
					t.Logf("route change on %s: %v", n, u.Route)
				}
			}
		}()
	}

	for _, n := range names {
		procs[n].cmd.Process.Kill()
		<-procs[n].exited
	}
	before := stream.received()
	time.Sleep(time.Second)
	during := stream.received() - before
	t.Logf("with both agents killed: %d replies in 1s", during)
	if during < 100 {
		t.Fatalf("the stream stalled without the agents: %d replies in 1s", during)
	}

	for _, n := range names {
		procs[n] = startProcess(t, nodes[n], n, kubeconfigs[n], dirs[n])
	}
	for _, n := range names {
		procs[n].waitReady(t, 30*time.Second)
	}
	time.Sleep(300 * time.Millisecond)
	if c := changes.Load(); c != 0 {
		t.Errorf("the restarted agents made %d route changes, want none", c)
	}
	for _, n := range names {
		_, metrics := get(t, nodes[n], "127.0.0.1:9099", "/metrics")
		for _, op := range []string{"add", "replace", "delete"} {
			if m := fmt.Sprintf("calyx_agent_route_changes_total{op=%q} 0\n", op); !strings.Contains(metrics, m) {
				t.Errorf("%s: metrics lack %s", n, m)
			}
		}
		// The agent logs "synced" only for a sync that changed routes or
		// the nftables table.
		if logs := procs[n].logs.String(); strings.Contains(logs, "msg=synced") {
			t.Errorf("%s: the restarted agent changed the node:\n%s", n, logs)
		}
	}
	sent, got := stream.stop()
	lost := max(0, sent-got)
	t.Logf("stream: %d sent, %d lost across the kill and the restart", sent, lost)
	if lost > sent/100 {
		t.Errorf("%d of %d lost", lost, sent)
	}
}

// stream is a UDP echo exchange between two pods, one datagram every 2ms.
type stream struct {
	sent, got atomic.Int64
	quit      chan struct{}
	wg        sync.WaitGroup
	closers   func()
}

func startStream(t *testing.T, client, server *testnet.Pod) *stream {
	s := &stream{quit: make(chan struct{})}
	var srv, cli *net.UDPConn
	server.NS.Do(t, func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(server.IP), Port: 6969})
		return err
	})
	client.NS.Do(t, func() (err error) {
		cli, err = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(client.IP)}, &net.UDPAddr{IP: net.ParseIP(server.IP), Port: 6969})
		return err
	})
	s.wg.Add(3)
	go func() { // echo
		defer s.wg.Done()
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			srv.WriteToUDP(buf[:n], from)
		}
	}()
	go func() { // replies
		defer s.wg.Done()
		buf := make([]byte, 64)
		for {
			if _, err := cli.Read(buf); err != nil {
				return
			}
			s.got.Add(1)
		}
	}()
	go func() { // sender
		defer s.wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var seq uint64
		for {
			select {
			case <-s.quit:
				return
			case <-tick.C:
				seq++
				cli.Write(binary.BigEndian.AppendUint64(nil, seq))
				s.sent.Add(1)
			}
		}
	}()
	t.Cleanup(func() { srv.Close(); cli.Close() })
	s.closers = func() { srv.Close(); cli.Close() }
	return s
}

func (s *stream) received() int64 { return s.got.Load() }

func (s *stream) waitFlowing(t *testing.T, within time.Duration) {
	deadline := time.Now().Add(within)
	for s.got.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no reply within %s", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Count from a clean start: the first datagrams waited for ARP.
	s.sent.Store(0)
	s.got.Store(0)
}

func (s *stream) stop() (sent, got int64) {
	close(s.quit)
	time.Sleep(100 * time.Millisecond) // the last replies
	sent, got = s.sent.Load(), s.got.Load()
	s.closers()
	s.wg.Wait()
	return sent, got
}

// BenchmarkProcess is the calyx-agent binary against a real API server that
// holds n remote blocks, in a node namespace: the time from start to every
// route programmed, and the process's peak RSS.
//
//	go test -run '^$' -bench Process -benchtime 3x ./cmd/calyx-agent/
func BenchmarkProcess(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("blocks=%d", n), func(b *testing.B) {
			cp := cptest.Start(b)
			kube := kubernetes.NewForConfigOrDie(cp.Config)
			calyx := calyxclient.NewForConfigOrDie(cp.Config)
			ctx := context.Background()
			if _, err := calyx.CalyxV1alpha1().IPPools().Create(ctx, &v1alpha1.IPPool{
				ObjectMeta: metav1.ObjectMeta{Name: "default"},
				Spec:       v1alpha1.IPPoolSpec{CIDR: "10.128.0.0/9", BlockSize: 26},
			}, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			for i := 0; i <= 100; i++ {
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", i)}}
				if i > 0 {
					node.Annotations = map[string]string{"calyx.dev/ipv4-address": fmt.Sprintf("10.10.%d.%d/16", i/250, i%250+1)}
				}
				if _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			work := make(chan int)
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						cidr := fmt.Sprintf("10.%d.%d.%d/26", 128+i>>10, byte(i>>2), (i&3)<<6)
						blk := &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: strings.NewReplacer(".", "-", "/", "-").Replace(cidr)},
							Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr, Node: fmt.Sprintf("node-%d", 1+i%100), Pool: "default"}}
						if _, err := calyx.CalyxV1alpha1().IPAMBlocks().Create(ctx, blk, metav1.CreateOptions{}); err != nil {
							b.Error(err)
						}
					}
				}()
			}
			for i := range n {
				work <- i
			}
			close(work)
			wg.Wait()

			ul := testnet.NewUnderlay(b)
			node := ul.AddNode(b, "cx-bp", "10.10.0.1/16")
			kubeconfig := nodeKubeconfig(b, cp, node)
			h, err := netlink.NewHandleAt(node.Handle)
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			agentBinary(b) // built before the clock runs
			var peakKB int
			for b.Loop() {
				b.StopTimer()
				if _, err := routes.New(h).Reconcile(nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				p := startProcess(b, node, "node-0", kubeconfig, b.TempDir(), "--ipip-datapath=ebpf")
				for {
					rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routes.Protocol}, netlink.RT_FILTER_PROTOCOL)
					if len(rs) >= n+1 { // n remote blocks and our own blackhole
						break
					}
					select {
					case <-p.exited:
						b.Fatalf("calyx-agent exited: %v\n%s", p.waitErr, p.logs)
					case <-time.After(time.Millisecond):
					}
				}
				b.StopTimer()
				peakKB = max(peakKB, vmHWM(p.cmd.Process.Pid))
				if os.Getenv("CALYX_BENCH_LOG") != "" {
					os.WriteFile(os.Getenv("CALYX_BENCH_LOG"), []byte(p.logs.String()), 0o644)
				}
				p.cmd.Process.Signal(syscall.SIGTERM)
				<-p.exited
				b.StartTimer()
			}
			b.ReportMetric(float64(peakKB)/1024, "MB-peak-rss")
		})
	}
}

// vmHWM is a process's peak resident set, in KiB.
func vmHWM(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			v, _ := strconv.Atoi(f[1])
			return v
		}
	}
	return 0
}
