package agent

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/ipam/socket"
)

// ipamMetrics count the socket's calls: how many pod starts took the fast
// path, and how long the agent spent on each.
type ipamMetrics struct {
	calls    *prometheus.CounterVec   // command, code (0: success)
	duration *prometheus.HistogramVec // command
	reads    *prometheus.CounterVec   // kind, source
}

func newIPAMMetrics(reg prometheus.Registerer) *ipamMetrics {
	m := &ipamMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_ipam_socket_calls_total",
			Help: "CNI IPAM calls answered on the agent's socket, by command and CNI error code (0: success).",
		}, []string{"command", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "calyx_ipam_socket_call_duration_seconds",
			Help:    "Time the agent took to answer a CNI IPAM call, lock wait included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"command"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_ipam_annotation_reads_total",
			Help: "Annotation reads of the IPAM on the agent's socket, by kind (pod, namespace) and source (cache: the agent's informers; api: a read by name).",
		}, []string{"kind", "source"}),
	}
	reg.MustRegister(m.calls, m.duration, m.reads)
	return m
}

func (m *ipamMetrics) read(kind, source string) { m.reads.WithLabelValues(kind, source).Inc() }

func (m *ipamMetrics) observe(req socket.Request, resp socket.Response, took time.Duration) {
	code := "0"
	if resp.Error != nil {
		code = strconv.FormatUint(uint64(resp.Error.Code), 10)
	}
	m.calls.WithLabelValues(req.Command, code).Inc()
	m.duration.WithLabelValues(req.Command).Observe(took.Seconds())
}

// serveIPAM answers the node's CNI IPAM calls on cfg.IPAMSocket until ctx
// ends: the same calyx-ipam code as the binary, on the agent's informer
// caches and one warm connection. A failure here only logs: the plugin
// falls back to running calyx-ipam.
func (a *Agent) serveIPAM(ctx context.Context, wg *sync.WaitGroup) {
	if a.cfg.IPAMSocket == "" {
		return
	}
	log := a.log.With("component", "ipam-socket")
	rc := rest.CopyConfig(a.kube.rc)
	rc.UserAgent = "calyx-agent/ipam"
	// A burst of pod starts is a burst of writes: client-side throttling
	// would queue them behind each other for nothing, the API server has
	// its own fairness.
	rc.QPS, rc.Burst = -1, -1
	cs, err := calyxclient.NewForConfig(rc)
	if err != nil {
		log.Error("not serving IPAM on the socket; pods get addresses through the calyx-ipam binary", "err", err)
		return
	}
	store := ipam.NewCachedStore(ipam.NewKubeStore(cs), a.kube.blocks, a.kube.pools)
	if _, err := a.kube.blockInformer.AddEventHandler(store.BlockEvents()); err != nil {
		log.Error("not serving IPAM on the socket; pods get addresses through the calyx-ipam binary", "err", err)
		return
	}
	// The pod's annotations, with the agent's credential, metadata only:
	// from informers on the node's pods and the namespaces, by name from
	// the API server when those cannot vouch.
	md, err := metadata.NewForConfig(rc)
	if err != nil {
		log.Error("not serving IPAM on the socket; pods get addresses through the calyx-ipam binary", "err", err)
		return
	}
	metrics := newIPAMMetrics(a.metrics.Registry)
	meta := newMetaCache(md, a.cfg.NodeName)
	meta.run(ctx)
	annotations := plugin.CachedAnnotator{Cache: meta, API: plugin.KubeAnnotator{Client: md}, Read: metrics.read}
	srv := &plugin.Server{
		Handler: &plugin.Handler{
			NewAllocator: func(_ *plugin.NetConf, opts ipam.Options) (*ipam.IPAM, error) {
				opts.Logger = log
				opts.NodeLabels = a.nodeLabels // the informer's, not the file it writes
				return ipam.New(store, opts), nil
			},
			NewAnnotator: func(*plugin.NetConf) (plugin.Annotator, error) { return annotations, nil },
		},
		Logger:  log,
		Observe: metrics.observe,
	}
	ln, err := plugin.Listen(a.cfg.IPAMSocket)
	if err != nil {
		log.Error("not serving IPAM on the socket; pods get addresses through the calyx-ipam binary", "err", err)
		return
	}
	log.Info("serving calyx-ipam", "socket", a.cfg.IPAMSocket)
	wg.Add(2)
	go func() {
		defer wg.Done()
		store.RunHandleWriter(ctx, log)
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, ln); err != nil {
			log.Error("the IPAM socket stopped; pods get addresses through the calyx-ipam binary", "err", err)
		}
	}()
}
