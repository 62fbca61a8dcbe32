// Package agent is calyx's node agent: it registers the node (underlay
// address, tunnel address), then keeps tunl0, the calyx routes and the
// nftables table equal to the desired state computed from the cluster's
// pools, blocks and nodes. Informers drive it, netlink and nftables
// notifications repair drift, and a periodic resync catches the rest.
//
// Nothing is torn down when the agent stops: traffic keeps flowing, and
// the next agent adopts what it finds.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/health"
	"github.com/calyx-net/calyx/agent/ipamgc"
	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/agent/statedir"
	"github.com/calyx-net/calyx/agent/tunnel"
	"github.com/calyx-net/calyx/agent/underlay"
	"github.com/calyx-net/calyx/ipam"
)

// DatapathOptions is what a datapath constructor needs besides the mode.
type DatapathOptions struct {
	// NetNS is the node's network namespace: tunl0 and the programs go
	// there.
	NetNS  netns.NsHandle
	Logger *slog.Logger
}

// DatapathFactory makes the datapath for mode (auto, kernel, ebpf) and
// says why it chose the one it returns.
type DatapathFactory func(mode string, opts DatapathOptions) (dp tunnel.Datapath, reason string, err error)

// RealDatapath is tunl0 as agent/tunnel makes it: the kernel's ipip
// device, or tc BPF programs where the kernel has no ipip module.
func RealDatapath(mode string, opts DatapathOptions) (tunnel.Datapath, string, error) {
	return tunnel.New(mode, tunnel.Options{NetNS: opts.NetNS, Logger: opts.Logger})
}

// AllocatorFactory makes the IPAM client that assigns the tunnel address;
// opts carry the node, the logger and how to read the node's labels.
type AllocatorFactory func(cfg *rest.Config, opts ipam.Options) (ipam.Allocator, error)

// Config is the agent's configuration; cmd/calyx-agent fills it from flags
// and the environment.
type Config struct {
	// NodeName is the Node object this agent registers; default the host
	// name, as the kubelet's.
	NodeName string
	// RESTConfig reaches the API server; when nil, Kubeconfig is loaded,
	// and when that is empty too, the in-cluster configuration.
	RESTConfig *rest.Config
	Kubeconfig string
	// Underlay says how to find the NIC: first-found, interface=REGEX,
	// can-reach=IP.
	Underlay string
	// Datapath is auto, kernel or ebpf.
	Datapath string
	// StateDir receives the nodename and mtu files the CNI plugin reads.
	StateDir string
	// ProtocolNamesDir is an iproute2 rt_protos.d directory to name route
	// protocol 202 in; empty skips it.
	ProtocolNamesDir string
	// HealthAddr serves /readyz and /livez; MetricsAddr serves /metrics
	// (empty or equal to HealthAddr: the same server).
	HealthAddr  string
	MetricsAddr string
	// ResyncPeriod is the interval of full syncs when nothing happens.
	ResyncPeriod time.Duration
	// Debounce gathers a burst of events into one sync.
	Debounce time.Duration
	// NetNS is the node's network namespace; nil is the agent's own. Tests
	// run several agents in one process, each with its node's namespace.
	NetNS *netns.NsHandle
	// IPAMSocket is where the agent serves calyx-ipam to the CNI plugin on
	// this node; empty serves nothing, and the plugin runs calyx-ipam.
	IPAMSocket string
	// EnableForwarding sets net.ipv4.ip_forward=1 in the node's namespace,
	// as nodes that route pod traffic need.
	EnableForwarding bool
	// GC is the cluster's IPAM garbage collector, which one agent runs
	// (agent/ipamgc); zero: off.
	GC ipamgc.Config

	// NewDatapath makes tunl0's datapath; default RealDatapath. Tests of
	// the routes alone pass a stand-in.
	NewDatapath DatapathFactory
	// NewAllocator makes the IPAM client; default ipam.NewForConfig.
	NewAllocator AllocatorFactory
	Logger       *slog.Logger
}

// Health checks, in the order /readyz lists them.
const (
	CheckUnderlay  = "underlay"
	CheckAPIServer = "apiserver"
	CheckDatapath  = "datapath"
	CheckNode      = "node"
	CheckPool      = "ippool"
	CheckTunnel    = "tunnel-address"
	CheckSync      = "sync"
)

// Agent is one node's agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	health  *health.Health
	metrics *metrics.Metrics
	servers []*http.Server
	lns     []net.Listener // served by servers, in order
	// healthLn and metricsLn serve /readyz and /metrics (the same one
	// when the addresses are).
	healthLn, metricsLn net.Listener

	ns       netns.NsHandle
	ownNS    bool
	nl       *netlink.Handle
	method   underlay.Method
	routes   *routes.Table
	firewall *firewall.Firewall
	// fwReady publishes firewall to the metrics scraper.
	fwReady atomic.Pointer[firewall.Firewall]
	dp      atomic.Pointer[datapathBox]
	kube    *clients
	alloc   ipam.Allocator

	kick chan struct{}
	// kernelDirty says the kernel changed under something the agent owns
	// since the last reconcile.
	kernelDirty atomic.Bool
	// ulIface is the underlay NIC's name, for the link subscription.
	ulIface atomic.Pointer[string]

	// Owned by the sync loop.
	ul         underlay.Underlay
	tunnelAddr netip.Addr
	// labels are the node's, as last observed, for the CNI plugin's file.
	labels     map[string]string
	protoNamed bool
	last       desired.State
	// lastOK says last was applied without error.
	lastOK bool
}

type datapathBox struct{ tunnel.Datapath }

// New checks the configuration that cannot get better by waiting and binds
// the health and metrics listeners; Run does the rest.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("no node name given and no host name: %w; set NODENAME", err)
		}
		cfg.NodeName = h
	}
	if cfg.Underlay == "" {
		cfg.Underlay = "first-found"
	}
	if cfg.Datapath == "" {
		cfg.Datapath = "auto"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = statedir.Default
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = 30 * time.Second
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 5 * time.Millisecond
	}
	if cfg.NewDatapath == nil {
		cfg.NewDatapath = RealDatapath
	}
	if cfg.NewAllocator == nil {
		cfg.NewAllocator = func(rc *rest.Config, opts ipam.Options) (ipam.Allocator, error) {
			return ipam.NewForConfig(rc, opts)
		}
	}
	a := &Agent{
		cfg:  cfg,
		log:  cfg.Logger.With("node", cfg.NodeName),
		kick: make(chan struct{}, 1),
		health: health.New(3*cfg.ResyncPeriod+time.Minute,
			CheckUnderlay, CheckAPIServer, CheckDatapath, CheckNode, CheckPool, CheckTunnel, CheckSync),
	}
	a.metrics = metrics.New(metrics.Sources{
		Datapath: func() tunnel.Datapath {
			if b := a.dp.Load(); b != nil {
				return b.Datapath
			}
			return nil
		},
		Firewall: func() (map[string]firewall.Counter, error) {
			fw := a.fwReady.Load()
			if fw == nil {
				return nil, errors.New("no firewall yet")
			}
			return fw.Counters()
		},
	})
	if err := a.listen(); err != nil {
		a.closeListeners()
		return nil, err
	}
	return a, nil
}

func (a *Agent) listen() error {
	healthMux, metricsMux := http.NewServeMux(), http.NewServeMux()
	a.health.Register(healthMux)
	sameServer := a.cfg.MetricsAddr == "" || a.cfg.MetricsAddr == a.cfg.HealthAddr
	if sameServer {
		healthMux.Handle("/metrics", a.metrics.Handler())
	} else {
		metricsMux.Handle("/metrics", a.metrics.Handler())
	}
	serve := func(addr string, mux *http.ServeMux) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s for health and metrics: %w; choose a free address with --health-address / --metrics-address", addr, err)
		}
		a.lns = append(a.lns, ln)
		a.servers = append(a.servers, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second})
		return ln, nil
	}
	var err error
	if a.cfg.HealthAddr != "" {
		if a.healthLn, err = serve(a.cfg.HealthAddr, healthMux); err != nil {
			return err
		}
		if sameServer {
			a.metricsLn = a.healthLn
		}
	}
	if !sameServer {
		if a.metricsLn, err = serve(a.cfg.MetricsAddr, metricsMux); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) closeListeners() {
	for _, ln := range a.lns {
		ln.Close()
	}
}

// HealthURL is the base URL of /readyz and /livez ("" when not served).
func (a *Agent) HealthURL() string {
	if a.healthLn == nil {
		return ""
	}
	return "http://" + a.healthLn.Addr().String()
}

// MetricsURL is the URL of /metrics ("" when not served).
func (a *Agent) MetricsURL() string {
	if a.metricsLn == nil {
		return ""
	}
	return "http://" + a.metricsLn.Addr().String() + "/metrics"
}

// Health is the agent's readiness, for tests and embedding.
func (a *Agent) Health() *health.Health { return a.health }

// Run works until ctx ends. It returns nil then, leaving tunl0, routes and
// the nftables table in place. Bad configuration and an unreachable API
// server do not end it: they make /readyz fail with the reason, and Run
// retries.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, srv := range a.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(a.lns[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("health/metrics server failed", "address", a.lns[i].Addr().String(), "err", err)
			}
		}()
	}
	defer func() {
		for _, srv := range a.servers {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			srv.Shutdown(sctx)
			cancel()
		}
	}()
	defer a.close()
	defer a.log.Info("calyx-agent stopped; tunl0, routes and nftables stay in place")
	a.log.Info("calyx-agent starting", "underlay", a.cfg.Underlay, "datapath", a.cfg.Datapath,
		"stateDir", a.cfg.StateDir, "health", a.HealthURL(), "metrics", a.MetricsURL())

	if err := a.openNetNS(); err != nil {
		// The namespace is the agent's world; without it nothing can work
		// and waiting will not help.
		return err
	}
	if err := a.setup(ctx); err != nil {
		return nil // ctx ended
	}
	informersDone, err := a.startInformers(ctx)
	if err != nil {
		return nil // ctx ended
	}
	defer informersDone()
	a.serveIPAM(ctx, &wg)
	a.startGC(ctx, &wg)
	a.watchKernel(ctx, &wg)
	a.watchTaps(ctx, &wg)
	a.loop(ctx)
	return nil
}

func (a *Agent) openNetNS() error {
	if a.cfg.NetNS != nil {
		a.ns = *a.cfg.NetNS
	} else {
		ns, err := netns.Get()
		if err != nil {
			return fmt.Errorf("opening the agent's network namespace: %w", err)
		}
		a.ns, a.ownNS = ns, true
	}
	// Only rtnetlink: asking for every family also opens XFRM and netfilter
	// sockets, which fail on kernels built without xfrm_user or nfnetlink.
	h, err := netlink.NewHandleAt(a.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening netlink in the node's namespace: %w", err)
	}
	a.nl = h
	a.routes = routes.New(h)
	a.firewall = firewall.New(int(a.ns))
	a.fwReady.Store(a.firewall)
	return nil
}

func (a *Agent) close() {
	if b := a.dp.Load(); b != nil {
		if err := b.Close(); err != nil {
			a.log.Warn("closing the datapath", "err", err)
		}
	}
	if a.firewall != nil {
		a.firewall.Close()
	}
	if a.nl != nil {
		a.nl.Close()
	}
	if a.ownNS {
		a.ns.Close()
	}
	// The listeners close with their servers' Shutdown.
}

// check records a check's outcome, logging when it changes.
func (a *Agent) check(name string, err error) error {
	if a.health.Set(name, err) {
		if err != nil {
			a.log.Error("not ready", "check", name, "reason", err.Error())
			a.metrics.Errors.WithLabelValues(name).Inc()
		} else {
			a.log.Info("check passes", "check", name)
		}
	}
	ok, _ := a.health.Ready()
	if ok {
		a.metrics.Ready.Set(1)
	} else {
		a.metrics.Ready.Set(0)
	}
	return err
}

// setup gets what the sync loop needs: the underlay, the API server and
// the datapath. It retries with backoff until all are there or ctx ends.
func (a *Agent) setup(ctx context.Context) error {
	b := backoff{min: 200 * time.Millisecond, max: 10 * time.Second}
	for {
		err := a.trySetup(ctx)
		if err == nil {
			return nil
		}
		a.health.Beat()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(b.next()):
		}
	}
}

func (a *Agent) trySetup(ctx context.Context) error {
	var errs []error
	if a.method.String() == "" {
		m, err := underlay.ParseMethod(a.cfg.Underlay)
		if a.check(CheckUnderlay, err) != nil {
			errs = append(errs, err)
		} else {
			a.method = m
		}
	}
	if a.method.String() != "" && a.ul.Iface == "" {
		ul, err := underlay.Detect(a.nl, a.method)
		if a.check(CheckUnderlay, err) != nil {
			errs = append(errs, err)
		} else {
			a.ul = ul
			a.ulIface.Store(&ul.Iface)
			a.log.Info("underlay found", "interface", ul.Iface, "address", ul.Addr, "mtu", ul.MTU, "method", a.method.String())
		}
	}
	if a.kube == nil {
		c, err := a.connect(ctx)
		if a.check(CheckAPIServer, err) != nil {
			errs = append(errs, err)
		} else {
			a.kube = c
		}
	}
	if a.dp.Load() == nil && a.ul.Iface != "" {
		dp, reason, err := a.cfg.NewDatapath(a.cfg.Datapath, DatapathOptions{NetNS: a.ns, Logger: a.log})
		if err != nil {
			err = fmt.Errorf("starting the %s datapath: %w", a.cfg.Datapath, err)
		}
		if a.check(CheckDatapath, err) != nil {
			errs = append(errs, err)
		} else {
			a.dp.Store(&datapathBox{dp})
			a.log.Info("datapath chosen", "requested", a.cfg.Datapath, "mode", string(dp.Mode()), "why", reason)
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) connect(ctx context.Context) (*clients, error) {
	rc := a.cfg.RESTConfig
	if rc == nil {
		var err error
		if a.cfg.Kubeconfig != "" {
			rc, err = clientcmd.BuildConfigFromFlags("", a.cfg.Kubeconfig)
		} else {
			rc, err = rest.InClusterConfig()
		}
		if err != nil {
			return nil, fmt.Errorf("loading the API server configuration: %w; set KUBECONFIG or run in a pod", err)
		}
	}
	c, err := newClients(rc)
	if err != nil {
		return nil, err
	}
	if err := c.probe(ctx); err != nil {
		return nil, err
	}
	alloc, err := a.cfg.NewAllocator(rc, ipam.Options{Node: a.cfg.NodeName, Logger: a.log, NodeLabels: a.nodeLabels})
	if err != nil {
		return nil, fmt.Errorf("creating the IPAM client: %w", err)
	}
	a.alloc = alloc
	return c, nil
}

// trigger asks for a sync soon; bursts coalesce.
func (a *Agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) loop(ctx context.Context) {
	resync := time.NewTicker(a.cfg.ResyncPeriod)
	defer resync.Stop()
	retry := backoff{min: 100 * time.Millisecond, max: a.cfg.ResyncPeriod}
	var retryC <-chan time.Time
	a.trigger()
	full := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
			// Gather the rest of a burst (a block and its allocations,
			// the kernel's notifications of our own changes).
			select {
			case <-ctx.Done():
				return
			case <-time.After(a.cfg.Debounce):
			}
			select {
			case <-a.kick:
			default:
			}
			full = false
		case <-resync.C:
			full = true
		case <-retryC:
			full = true
		}
		if err := a.sync(ctx, full); err != nil {
			d := retry.next()
			retryC = time.After(d)
			a.log.Debug("sync failed; retrying", "in", d, "err", err)
		} else {
			retry.reset()
			retryC = nil
		}
	}
}

type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }
