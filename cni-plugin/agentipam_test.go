package cniplugin_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	calyxinformers "github.com/calyx-net/calyx/api/client/informers/externalversions"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/ipam/socket"
)

// ipamServer is the node agent's IPAM socket, run in the test process as
// the agent runs it: the ipam/plugin handler on a cached store fed by
// informers.
type ipamServer struct {
	path  string
	stop  func()
	mu    sync.Mutex
	calls map[string]int // command → answered calls
	took  map[string][]time.Duration
}

// withAgentIPAM gives the node the agent's IPAM socket and names it in the
// conflist.
func withAgentIPAM(t testing.TB, e *env) (nodeOpt, *ipamServer) {
	t.Helper()
	s := &ipamServer{path: filepath.Join(t.TempDir(), "ipam.sock"), calls: map[string]int{}, took: map[string][]time.Duration{}}
	ctx, cancel := context.WithCancel(context.Background())
	f := calyxinformers.NewSharedInformerFactory(e.client, 0)
	blocks, pools := f.Calyx().V1alpha1().IPAMBlocks(), f.Calyx().V1alpha1().IPPools()
	store := ipam.NewCachedStore(ipam.NewKubeStore(e.client), blocks.Lister(), pools.Lister())
	if _, err := blocks.Informer().AddEventHandler(store.BlockEvents()); err != nil {
		t.Fatal(err)
	}
	pools.Informer()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); store.RunHandleWriter(ctx, slog.Default()) }()
	srv := &plugin.Server{
		Handler: &plugin.Handler{NewAllocator: func(_ *plugin.NetConf, opts ipam.Options) (*ipam.IPAM, error) {
			return ipam.New(store, opts), nil
		}},
		Logger: slog.New(slog.DiscardHandler),
		Observe: func(req socket.Request, _ socket.Response, took time.Duration) {
			s.mu.Lock()
			s.calls[req.Command]++
			s.took[req.Command] = append(s.took[req.Command], took)
			s.mu.Unlock()
		},
	}
	ln, err := plugin.Listen(s.path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	var once sync.Once
	s.stop = func() { once.Do(func() { cancel(); <-done; <-writerDone; f.Shutdown() }) }
	t.Cleanup(s.stop)
	return withIPAM(map[string]any{"agent_socket": s.path}), s
}

func (s *ipamServer) answered(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[cmd]
}

// TestAgentIPAMSocket: with ipam.agent_socket, ADD, CHECK and DEL go to
// the agent and never start calyx-ipam; when the agent is gone, the same
// conflist falls back to the binary, which sees the agent's allocations.
func TestAgentIPAMSocket(t *testing.T) {
	e := newEnv(t, ipamCalyx)
	opt, srv := withAgentIPAM(t, e)
	n := newNode(t, e, opt)
	list := n.conflist("", nil)

	p1 := newPod(t, "default", "socket-1")
	r1, err := n.add(list, p1.rt())
	if err != nil {
		t.Fatalf("ADD through the agent socket: %v", err)
	}
	if err := n.check(list, p1.rt()); err != nil {
		t.Fatalf("CHECK through the agent socket: %v", err)
	}
	if got := []int{srv.answered("ADD"), srv.answered("CHECK")}; got[0] != 1 || got[1] != 1 {
		t.Fatalf("the agent answered ADD %d and CHECK %d times, want 1 and 1: the plugin did not use the socket", got[0], got[1])
	}
	ip1 := resultIP(t, r1)

	// The agent stops (a crash or an upgrade): pods still start, through
	// calyx-ipam, and get another address than the agent's pod.
	srv.stop()
	p2 := newPod(t, "default", "socket-2")
	r2, err := n.add(list, p2.rt())
	if err != nil {
		t.Fatalf("ADD with the agent gone (fallback to calyx-ipam): %v", err)
	}
	if ip2 := resultIP(t, r2); ip2 == ip1 {
		t.Fatalf("the fallback gave %s again, the address the agent gave pod 1", ip2)
	}
	// The binary releases what the agent allocated.
	for _, p := range []*pod{p1, p2} {
		if err := n.del(list, p.rt()); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	if srv.answered("ADD") != 1 {
		t.Fatalf("a stopped agent answered")
	}
	n.assertClean(t)
}

// BenchmarkAgentIPAM is one setup of BenchmarkPodLatency alone: ADDs
// through the agent socket, for profiling it.
func BenchmarkAgentIPAM(b *testing.B) {
	e := newEnv(b, ipamCalyx)
	opt, srv := withAgentIPAM(b, e)
	n := newNode(b, e, opt)
	list := n.conflist("", nil)
	var pods []*pod
	for i := range b.N {
		pods = append(pods, newPod(b, "bench", fmt.Sprintf("pod-%d", i)))
	}
	b.ResetTimer()
	for _, p := range pods {
		if _, err := n.add(list, p.rt()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for _, p := range pods {
		if err := n.del(list, p.rt()); err != nil {
			b.Fatal(err)
		}
	}
	n.assertClean(b)
	srv.mu.Lock()
	defer srv.mu.Unlock()
	b.ReportMetric(ms(pct(srv.took["ADD"], 50)), "agent-ADD-p50-ms")
	b.ReportMetric(ms(pct(srv.took["DEL"], 50)), "agent-DEL-p50-ms")
}

func resultIP(t testing.TB, r types.Result) string {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD result %v has no address (%v)", r, err)
	}
	return res.IPs[0].Address.IP.String()
}
