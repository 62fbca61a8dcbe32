// Package ipamgc runs the cluster's IPAM garbage collector (ipam.Collector)
// in the agent: every agent campaigns for a Lease, and the one that holds
// it watches pods and nodes and collects every Interval. One collector per
// cluster keeps two from racing over the same leak, and costs the other
// nodes nothing: they do not even watch pods.
package ipamgc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/api/client/clientset/versioned"
	calyxlisters "github.com/calyx-net/calyx/api/client/listers/api/v1alpha1"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// Defaults of Config.
const (
	DefaultGrace          = 15 * time.Minute
	DefaultInterval       = time.Minute
	DefaultLeaseNamespace = "kube-system"
	DefaultLeaseName      = "calyx-ipam-gc"
	DefaultLeaseDuration  = 15 * time.Second
	DefaultRenewDeadline  = 10 * time.Second
	DefaultRetryPeriod    = 2 * time.Second
)

// Config configures the collector; zero fields take the defaults above,
// except Enabled and Grace.
type Config struct {
	Enabled bool
	// Grace is how long a pod address stays without its pod before it is
	// released, taken as given: 0 releases at the first pass (the flag's
	// default is DefaultGrace). Addresses of deleted nodes have none.
	Grace time.Duration
	// Interval is the time between passes.
	Interval time.Duration
	// The Lease the agents elect the collector with.
	LeaseNamespace, LeaseName                 string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Now is the clock the grace period is measured on; default time.Now.
	Now func() time.Time
	// Blocks, when set, is a running informer's cache of the blocks (the
	// agent's own), listed instead of the API server: a List of every
	// block each pass cost the leader ~0.7% of a core and 11 MB at 5,000
	// blocks. Every decision is still confirmed with a fresh Get and a
	// resourceVersion precondition.
	Blocks calyxlisters.IPAMBlockLister
	// Nodes, when set, is a running informer's cache of the nodes, used
	// instead of an informer of the collector's own.
	Nodes corelisters.NodeLister
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Interval, DefaultInterval)
	def(&c.LeaseDuration, DefaultLeaseDuration)
	def(&c.RenewDeadline, DefaultRenewDeadline)
	def(&c.RetryPeriod, DefaultRetryPeriod)
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = DefaultLeaseNamespace
	}
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate says what is wrong with c, if anything.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Grace < 0 {
		errs = append(errs, fmt.Errorf("the GC grace period %s is negative; use 0 to release at once, or the default %s", c.Grace, DefaultGrace))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("the GC interval %s is negative; use a duration such as %s", c.Interval, DefaultInterval))
	}
	// leaderelection's own rules, said in terms of what to change.
	if c.LeaseDuration <= c.RenewDeadline {
		errs = append(errs, fmt.Errorf("the GC lease duration %s must be longer than its renew deadline %s", c.LeaseDuration, c.RenewDeadline))
	}
	if float64(c.RenewDeadline) <= leaderelection.JitterFactor*float64(c.RetryPeriod) {
		errs = append(errs, fmt.Errorf("the GC renew deadline %s must be longer than %.1f × the retry period %s", c.RenewDeadline, leaderelection.JitterFactor, c.RetryPeriod))
	}
	return errors.Join(errs...)
}

// Controller campaigns for the lease and collects while it holds it.
type Controller struct {
	cfg       Config
	identity  string
	kube      kubernetes.Interface
	metrics   *metrics.Metrics
	log       *slog.Logger
	collector *ipam.Collector
	// leading is held by the goroutine that leads, so that a new term
	// starts only after the last one's pass has ended.
	leading sync.Mutex
}

// New returns a controller that campaigns as identity (the node's name).
func New(cfg Config, identity string, kube kubernetes.Interface, calyx versioned.Interface, m *metrics.Metrics, log *slog.Logger) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if identity == "" {
		return nil, errors.New("the IPAM garbage collector needs an identity to campaign with: set the node name")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	return &Controller{
		cfg: cfg, identity: identity, kube: kube, metrics: m, log: log,
		collector: ipam.NewCollector(gcStore(calyx, cfg.Blocks), ipam.CollectorOptions{Grace: cfg.Grace, Now: cfg.Now, Logger: log}),
	}, nil
}

func gcStore(cs versioned.Interface, blocks calyxlisters.IPAMBlockLister) ipam.GCStore {
	s := ipam.NewKubeGCStore(cs)
	if blocks == nil {
		return s
	}
	return &cachedBlocks{KubeGCStore: s, blocks: blocks}
}

// cachedBlocks lists blocks from an informer cache.
type cachedBlocks struct {
	*ipam.KubeGCStore
	blocks calyxlisters.IPAMBlockLister
}

func (s *cachedBlocks) ListBlocks(_ context.Context, sel map[string]string) ([]v1alpha1.IPAMBlock, error) {
	bs, err := s.blocks.List(labels.SelectorFromSet(sel))
	if err != nil {
		return nil, fmt.Errorf("listing the cached blocks: %w", err)
	}
	out := make([]v1alpha1.IPAMBlock, len(bs))
	for i, b := range bs {
		b.DeepCopyInto(&out[i])
	}
	return out, nil
}

// Run campaigns until ctx ends, and collects every Interval while it
// leads. It gives the lease up when ctx ends, so that another agent takes
// over within RetryPeriod rather than LeaseDuration.
func (c *Controller) Run(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.cfg.LeaseNamespace, Name: c.cfg.LeaseName},
		Client:     c.kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			Name:            c.cfg.LeaseName,
			LeaseDuration:   c.cfg.LeaseDuration,
			RenewDeadline:   c.cfg.RenewDeadline,
			RetryPeriod:     c.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: c.lead,
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					if id != c.identity {
						c.log.Info("IPAM garbage collector runs elsewhere", "leader", id)
					}
				},
			},
		})
		if err != nil {
			c.log.Error("cannot campaign for the IPAM garbage collector's lease", "err", err)
			return
		}
		// Returns when ctx ends or the lease is lost; then campaign again.
		le.Run(ctx)
		// The term's collecting goroutine may still be in a pass: wait for
		// it before campaigning again, so that two never overlap.
		c.leading.Lock()
		c.leading.Unlock()
	}
}

// lead collects until ctx (the term) ends.
func (c *Controller) lead(ctx context.Context) {
	c.leading.Lock()
	defer c.leading.Unlock()
	if ctx.Err() != nil {
		return // a term that ended before it began
	}
	c.log.Info("leading the IPAM garbage collector", "lease", c.cfg.LeaseNamespace+"/"+c.cfg.LeaseName,
		"grace", c.cfg.Grace, "interval", c.cfg.Interval)
	c.metrics.GCLeader.Set(1)
	defer func() {
		c.metrics.GCLeader.Set(0)
		c.metrics.GCLeakCandidates.Set(0)
		c.metrics.IPAMBlocks.Reset()
		c.log.Info("no longer leading the IPAM garbage collector")
	}()
	// A new term waits out the whole grace period again: the last one's
	// first-seen times were another process's, or are stale.
	c.collector.Forget()
	cl, stop, err := c.watch(ctx)
	if err != nil {
		return // ctx ended
	}
	defer stop()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		c.pass(ctx, cl)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Controller) pass(ctx context.Context, cl ipam.Cluster) {
	start := time.Now()
	res, err := c.collector.Pass(ctx, cl)
	c.record(res, err)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("IPAM garbage collection pass failed in part; the next pass retries", "err", err)
		}
		return
	}
	c.log.Debug("IPAM garbage collection pass", "took", time.Since(start), "released", len(res.Released),
		"candidates", res.Candidates, "blocksDeleted", len(res.BlocksDeleted))
}

// record counts a pass into the metrics.
func (c *Controller) record(res ipam.PassResult, err error) {
	for _, r := range res.Released {
		c.metrics.GCReleased.WithLabelValues(r.Reason).Inc()
	}
	c.metrics.GCBlocksDeleted.Add(float64(len(res.BlocksDeleted)))
	c.metrics.GCHandlesDeleted.Add(float64(len(res.HandlesDeleted)))
	c.metrics.GCLeakCandidates.Set(float64(res.Candidates))
	if res.BlocksPerNode != nil {
		c.metrics.IPAMBlocks.Reset()
		for node, n := range res.BlocksPerNode {
			c.metrics.IPAMBlocks.WithLabelValues(node).Set(float64(n))
		}
	}
	if err != nil {
		c.metrics.GCPasses.WithLabelValues("error").Inc()
		return
	}
	c.metrics.GCPasses.WithLabelValues("ok").Inc()
}

// CollectOnce runs one pass now, outside any election, and counts it into
// the metrics: for tools and tests that know no other collector runs.
func (c *Controller) CollectOnce(ctx context.Context) (ipam.PassResult, error) {
	cl, stop, err := c.watch(ctx)
	if err != nil {
		return ipam.PassResult{}, fmt.Errorf("watching pods and nodes: %w", err)
	}
	defer stop()
	res, err := c.collector.Pass(ctx, cl)
	c.record(res, err)
	return res, err
}

// cluster is ipam.Cluster on informers, and on the API server for fresh
// answers.
type cluster struct {
	kube  kubernetes.Interface
	pods  corelisters.PodLister
	nodes corelisters.NodeLister
}

var _ ipam.Cluster = (*cluster)(nil)

// watch starts the pod and node informers and waits for their first
// lists.
func (c *Controller) watch(ctx context.Context) (*cluster, func(), error) {
	ictx, cancel := context.WithCancel(ctx)
	f := informers.NewSharedInformerFactoryWithOptions(c.kube, 0,
		// Names and nodes are all the collector reads: keeping nothing
		// else keeps every pod of a large cluster cheap.
		informers.WithTransform(func(obj any) (any, error) {
			switch o := obj.(type) {
			case *corev1.Pod:
				return &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion},
					Spec:       corev1.PodSpec{NodeName: o.Spec.NodeName},
					Status:     corev1.PodStatus{PodIPs: o.Status.PodIPs},
				}, nil
			case *corev1.Node:
				return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion}}, nil
			}
			return obj, nil
		}))
	pods, nodes := f.Core().V1().Pods(), f.Core().V1().Nodes()
	podInf := pods.Informer()
	synced := []cache.InformerSynced{podInf.HasSynced}
	nodeLister := c.cfg.Nodes
	if nodeLister == nil {
		synced = append(synced, nodes.Informer().HasSynced)
		nodeLister = nodes.Lister()
	}
	f.Start(ictx.Done())
	stop := func() {
		cancel()
		f.Shutdown()
	}
	// A missing RBAC grant shows only as a list that never completes.
	slow := time.AfterFunc(30*time.Second, func() {
		c.log.Warn("the IPAM garbage collector still waits for its first list of pods and nodes; may the agent list and watch pods (deploy/parts/20-rbac.yaml)?")
	})
	defer slow.Stop()
	if !cache.WaitForCacheSync(ictx.Done(), synced...) {
		stop()
		return nil, nil, ctx.Err()
	}
	return &cluster{kube: c.kube, pods: pods.Lister(), nodes: nodeLister}, stop, nil
}

func (c *cluster) Pod(ctx context.Context, namespace, name string, fresh bool) (ipam.PodInfo, bool, error) {
	var (
		p   *corev1.Pod
		err error
	)
	if fresh {
		p, err = c.kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	} else {
		p, err = c.pods.Pods(namespace).Get(name)
	}
	if apierrors.IsNotFound(err) {
		return ipam.PodInfo{}, false, nil
	}
	if err != nil {
		return ipam.PodInfo{}, false, err
	}
	info := ipam.PodInfo{Node: p.Spec.NodeName}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			info.IPs = append(info.IPs, a)
		}
	}
	return info, true, nil
}

func (c *cluster) Node(ctx context.Context, name string, fresh bool) (bool, error) {
	var err error
	if fresh {
		_, err = c.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	} else {
		_, err = c.nodes.Get(name)
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}
