// Package metrics is the agent's Prometheus metrics: what it programmed,
// how long a sync takes, what failed, and the datapath's and firewall's
// packet counters, read from the kernel when scraped.
package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/tunnel"
)

// Sources are where scrape-time counters come from; any may be nil until
// the agent has it.
type Sources struct {
	Datapath func() tunnel.Datapath
	Firewall func() (map[string]firewall.Counter, error)
}

// Metrics are the agent's metrics in a registry of their own.
type Metrics struct {
	Registry *prometheus.Registry

	RoutesProgrammed prometheus.Gauge
	RouteChanges     *prometheus.CounterVec // op: add, replace, delete
	SyncDuration     prometheus.Histogram
	Syncs            *prometheus.CounterVec // result: ok, error
	Errors           *prometheus.CounterVec // stage: underlay, apiserver, …
	Ready            prometheus.Gauge
	PeerBlocks       prometheus.Gauge

	// The IPAM garbage collector's, set by the agent that leads it.
	GCLeader         prometheus.Gauge
	GCLeakCandidates prometheus.Gauge
	GCReleased       *prometheus.CounterVec // reason: pod-gone, node-gone, sandbox-gone
	GCBlocksDeleted  prometheus.Counter
	GCHandlesDeleted prometheus.Counter
	GCPasses         *prometheus.CounterVec // result: ok, error
	IPAMBlocks       *prometheus.GaugeVec   // node
}

// New registers the metrics.
func New(src Sources) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		RoutesProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "calyx_agent_routes_programmed",
			Help: "Routes with protocol calyx in the main table after the last sync.",
		}),
		RouteChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_agent_route_changes_total",
			Help: "Routes added, replaced and deleted by the agent.",
		}, []string{"op"}),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "calyx_agent_sync_duration_seconds",
			Help:    "Time to compute and apply the desired state: tunnel, routes, nftables.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		Syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_agent_syncs_total",
			Help: "Syncs by result: ok, error, or unchanged (the desired state and the kernel had not changed: nothing reconciled).",
		}, []string{"result"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_agent_errors_total",
			Help: "Errors by the stage that failed.",
		}, []string{"stage"}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "calyx_agent_ready",
			Help: "1 when every readiness check passes.",
		}),
		PeerBlocks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "calyx_agent_tunnel_peers",
			Help: "Remote blocks and borrowed addresses reached through tunl0.",
		}),
		GCLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "calyx_ipam_gc_leader",
			Help: "1 while this agent is the cluster's IPAM garbage collector (it holds the lease).",
		}),
		GCLeakCandidates: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "calyx_ipam_gc_leak_candidates",
			Help: "Pod addresses whose pod is gone, waiting out the grace period before release.",
		}),
		GCReleased: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_ipam_gc_released_total",
			Help: "Addresses released by the IPAM garbage collector, by reason: pod-gone, node-gone, sandbox-gone (an earlier sandbox of a pod that has another address now).",
		}, []string{"reason"}),
		GCBlocksDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "calyx_ipam_gc_blocks_deleted_total",
			Help: "Empty blocks of deleted nodes deleted by the IPAM garbage collector.",
		}),
		GCHandlesDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "calyx_ipam_gc_handles_deleted_total",
			Help: "IPAMHandles that pointed at no address, deleted by the IPAM garbage collector.",
		}),
		GCPasses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "calyx_ipam_gc_passes_total",
			Help: "IPAM garbage collection passes, by result.",
		}, []string{"result"}),
		IPAMBlocks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "calyx_ipam_blocks",
			Help: "IPAM blocks affine to each node, as the garbage collector last counted them.",
		}, []string{"node"}),
	}
	for _, op := range []string{"add", "replace", "delete"} {
		m.RouteChanges.WithLabelValues(op)
	}
	for _, r := range []string{"ok", "error"} {
		m.Syncs.WithLabelValues(r)
		m.GCPasses.WithLabelValues(r)
	}
	m.Syncs.WithLabelValues("unchanged")
	for _, r := range []string{"pod-gone", "node-gone", "sandbox-gone"} {
		m.GCReleased.WithLabelValues(r)
	}
	m.Registry.MustRegister(m.RoutesProgrammed, m.RouteChanges, m.SyncDuration, m.Syncs, m.Errors, m.Ready, m.PeerBlocks,
		m.GCLeader, m.GCLeakCandidates, m.GCReleased, m.GCBlocksDeleted, m.GCHandlesDeleted, m.GCPasses, m.IPAMBlocks,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&kernelCounters{src: src})
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

var (
	dpInfo    = prometheus.NewDesc("calyx_datapath_info", "The datapath behind tunl0.", []string{"mode"}, nil)
	dpPackets = prometheus.NewDesc("calyx_datapath_packets_total", "Packets encapsulated (tx) and decapsulated (rx) by the datapath.", []string{"direction"}, nil)
	dpBytes   = prometheus.NewDesc("calyx_datapath_bytes_total", "Bytes encapsulated (tx) and decapsulated (rx) by the datapath.", []string{"direction"}, nil)
	dpDrops   = prometheus.NewDesc("calyx_datapath_drops_total", "Packets dropped: tx without a peer or failed encapsulation, rx IPIP from an address that is not a node.", []string{"direction"}, nil)
	dpRxErrs  = prometheus.NewDesc("calyx_datapath_rx_errors_total", "IPIP packets from a node that could not be delivered (outer fragments, a bad outer header).", nil, nil)
	dpFast    = prometheus.NewDesc("calyx_datapath_fast_mode", "Whether the eBPF datapath skips tunl0's device passes because nothing captures on tunl0 (1), or makes every packet cross tunl0 (0).", nil, nil)
	dpFastIn  = prometheus.NewDesc("calyx_datapath_fast_receive", "Whether arriving packets skip tunl0's device pass too (1), or cross it (0): in the fast mode, a strict rp_filter on the NIC keeps them on tunl0.", nil, nil)
	dpErrors  = prometheus.NewDesc("calyx_datapath_stats_errors_total", "Scrapes that could not read the datapath counters.", nil, nil)
	fwPackets = prometheus.NewDesc("calyx_firewall_rule_packets_total", "Packets matched by each rule of the nftables table ip calyx.", []string{"rule"}, nil)
	fwBytes   = prometheus.NewDesc("calyx_firewall_rule_bytes_total", "Bytes matched by each rule of the nftables table ip calyx.", []string{"rule"}, nil)
)

// kernelCounters reads counters kept by the kernel at scrape time.
type kernelCounters struct {
	src      Sources
	dpFailed atomic.Uint64
}

func (k *kernelCounters) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dpInfo, dpPackets, dpBytes, dpDrops, dpRxErrs, dpFast, dpFastIn, dpErrors, fwPackets, fwBytes} {
		ch <- d
	}
}

func (k *kernelCounters) Collect(ch chan<- prometheus.Metric) {
	if k.src.Datapath != nil {
		if dp := k.src.Datapath(); dp != nil {
			ch <- prometheus.MustNewConstMetric(dpInfo, prometheus.GaugeValue, 1, string(dp.Mode()))
			if s, err := dp.Stats(); err == nil {
				for _, v := range []struct {
					d   *prometheus.Desc
					dir string
					n   uint64
				}{
					{dpPackets, "tx", s.TxPackets}, {dpPackets, "rx", s.RxPackets},
					{dpBytes, "tx", s.TxBytes}, {dpBytes, "rx", s.RxBytes},
					{dpDrops, "tx", s.TxDrops}, {dpDrops, "rx", s.RxDrops},
				} {
					ch <- prometheus.MustNewConstMetric(v.d, prometheus.CounterValue, float64(v.n), v.dir)
				}
				ch <- prometheus.MustNewConstMetric(dpRxErrs, prometheus.CounterValue, float64(s.RxErrors))
				if dp.Mode() == tunnel.ModeEBPF {
					ch <- prometheus.MustNewConstMetric(dpFast, prometheus.GaugeValue, gauge(s.Path != tunnel.PathObservable))
					ch <- prometheus.MustNewConstMetric(dpFastIn, prometheus.GaugeValue, gauge(s.Path == tunnel.PathFast))
				}
			} else {
				k.dpFailed.Add(1)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(dpErrors, prometheus.CounterValue, float64(k.dpFailed.Load()))
	if k.src.Firewall != nil {
		if cs, err := k.src.Firewall(); err == nil {
			for rule, c := range cs {
				ch <- prometheus.MustNewConstMetric(fwPackets, prometheus.CounterValue, float64(c.Packets), rule)
				ch <- prometheus.MustNewConstMetric(fwBytes, prometheus.CounterValue, float64(c.Bytes), rule)
			}
		}
	}
}

func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
