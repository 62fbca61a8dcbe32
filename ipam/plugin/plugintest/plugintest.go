// Package plugintest runs the node agent's IPAM socket inside a test
// process, as the agent runs it: the ipam/plugin handler on a store cached
// by informers, the handle index written behind. Tests of the calyx plugin
// point ipam.agent_socket at it.
package plugintest

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	calyxinformers "github.com/calyx-net/calyx/api/client/informers/externalversions"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/ipam/socket"
)

// Server is a running IPAM socket.
type Server struct {
	Path  string
	stop  func()
	mu    sync.Mutex
	calls map[string]int // command → answered calls
	took  map[string][]time.Duration
}

// Start serves calyx-ipam for the API server of cfg on a socket in a
// temporary directory until the test ends or Stop. Like the agent, it
// keeps its connections warm: one client for the blocks and pools, one
// for the pods' annotations (metadata only), without client-side
// throttling.
func Start(t testing.TB, cfg *rest.Config) *Server {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = -1, -1
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Path: filepath.Join(t.TempDir(), "ipam.sock"), calls: map[string]int{}, took: map[string][]time.Duration{}}
	ctx, cancel := context.WithCancel(context.Background())
	f := calyxinformers.NewSharedInformerFactory(client, 0)
	blocks, pools := f.Calyx().V1alpha1().IPAMBlocks(), f.Calyx().V1alpha1().IPPools()
	store := ipam.NewCachedStore(ipam.NewKubeStore(client), blocks.Lister(), pools.Lister())
	if _, err := blocks.Informer().AddEventHandler(store.BlockEvents()); err != nil {
		t.Fatal(err)
	}
	pools.Informer()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); store.RunHandleWriter(ctx, slog.Default()) }()
	srv := &plugin.Server{
		Handler: &plugin.Handler{
			NewAllocator: func(_ *plugin.NetConf, opts ipam.Options) (*ipam.IPAM, error) {
				return ipam.New(store, opts), nil
			},
			NewAnnotator: func(*plugin.NetConf) (plugin.Annotator, error) {
				return plugin.KubeAnnotator{Client: md}, nil
			},
		},
		Logger: slog.New(slog.DiscardHandler),
		Observe: func(req socket.Request, _ socket.Response, took time.Duration) {
			s.mu.Lock()
			s.calls[req.Command]++
			s.took[req.Command] = append(s.took[req.Command], took)
			s.mu.Unlock()
		},
	}
	ln, err := plugin.Listen(s.Path)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	var once sync.Once
	s.stop = func() { once.Do(func() { cancel(); <-done; <-writerDone; f.Shutdown() }) }
	t.Cleanup(s.stop)
	return s
}

// Stop closes the socket, as a stopped agent does, and waits for the
// calls in flight.
func (s *Server) Stop() { s.stop() }

// Answered is how many calls of command the server has answered.
func (s *Server) Answered(command string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[command]
}

// Took is how long each answered call of command took, in order.
func (s *Server) Took(command string) []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.took[command]...)
}
