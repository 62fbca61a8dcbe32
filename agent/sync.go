package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/metrics"
	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/agent/statedir"
	"github.com/calyx-net/calyx/agent/underlay"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// sync makes the node match the desired state once: observe what it
// depends on, compute it, prepare the node's files and sysctls, and apply
// it to the kernel. Unless full, it leaves the kernel alone when the
// desired state is the one last applied and the kernel reported no change
// since: every pod start anywhere in the cluster updates a block, and at
// 5,000 blocks a reconcile that finds nothing to do still costs ~40 ms of
// dumps on every node.
func (a *Agent) sync(ctx context.Context, full bool) error {
	start := time.Now()
	a.health.Beat()
	fails := &syncFailures{metrics: a.metrics}

	st := a.desiredState(a.observe(ctx, fails))
	a.prepareNode(fails)

	if !full && a.lastOK && len(fails.errs) == 0 && !a.kernelDirty.Swap(false) && reflect.DeepEqual(st, a.last) {
		a.metrics.Syncs.WithLabelValues("unchanged").Inc()
		a.check(CheckSync, nil)
		return nil
	}
	res, fwRes := a.apply(st, fails)
	return a.record(start, st, res, fwRes, fails)
}

// syncFailures gathers one sync's errors, each counted by its stage.
type syncFailures struct {
	metrics *metrics.Metrics
	errs    []error
}

func (f *syncFailures) add(stage string, err error) {
	f.errs = append(f.errs, err)
	f.metrics.Errors.WithLabelValues(stage).Inc()
}

// observe reads what the desired state depends on: the API server's
// health, the underlay as it is now, the informers' objects, and this
// node, registered and with the annotations the agent announces.
func (a *Agent) observe(ctx context.Context, fails *syncFailures) desired.Input {
	// A broken watch marked the API server down; the informers recover by
	// themselves, this says when.
	if ok := a.health.Checks()[CheckAPIServer] == ""; !ok {
		if err := a.check(CheckAPIServer, a.kube.probe(ctx)); err != nil {
			fails.add("apiserver", err)
		}
	}

	// The NIC's address or MTU may have changed since start-up.
	if ul, err := underlay.Detect(a.nl, a.method); a.check(CheckUnderlay, err) != nil {
		fails.add("underlay", err)
	} else if ul != a.ul {
		a.log.Info("underlay changed", "interface", ul.Iface, "address", ul.Addr, "mtu", ul.MTU)
		a.ul = ul
		a.ulIface.Store(&ul.Iface)
	}

	pools, _ := a.kube.pools.List(labels.Everything())
	blocks, _ := a.kube.blocks.List(labels.Everything())
	nodes, _ := a.kube.nodes.List(labels.Everything())
	services, _ := a.kube.services.List(labels.Everything())
	a.check(CheckPool, poolProblem(pools))

	self := slices.IndexFunc(nodes, func(n *corev1.Node) bool { return n.Name == a.cfg.NodeName })
	if self < 0 {
		err := fmt.Errorf("node %s is not in the API: is NODENAME right? (the kubelet registers the Node)", a.cfg.NodeName)
		a.check(CheckNode, err)
		fails.add("node", err)
	} else {
		a.labels = nodes[self].Labels
		if a.labels == nil {
			a.labels = map[string]string{} // known: none
		}
		if err := a.register(ctx, nodes[self], pools); err != nil {
			fails.add("register", err)
		}
		// This node as the agent knows it, whether or not the annotations
		// are written yet or the informer has brought them back.
		n := nodes[self].DeepCopy()
		n.Annotations = mergeAnnotations(n.Annotations, a.annotations())
		nodes = slices.Clone(nodes)
		nodes[self] = n
	}
	return desired.Input{
		Pools: pools, Blocks: blocks, Nodes: nodes, Services: services, Node: a.cfg.NodeName,
		Local: desired.Local{Iface: a.ul.Iface, MTU: a.ul.MTU},
	}
}

// desiredState computes the state for in, with the underlay address the
// agent found when the Node does not announce one yet, and logs the
// objects it newly leaves out.
func (a *Agent) desiredState(in desired.Input) desired.State {
	st := desired.Compute(in)
	if !st.Tunnel.UnderlayIP.IsValid() {
		st.Tunnel.UnderlayIP = a.ul.Addr.Addr() // a local fact, Node or not
	}
	for _, n := range newNotes(a.last.Notes, st.Notes) {
		a.log.Info("left out of the desired state", "why", n)
	}
	return st
}

// newNotes are the notes of cur that were not in last.
func newNotes(last, cur []string) []string {
	var out []string
	for _, n := range cur {
		if !slices.Contains(last, n) {
			out = append(out, n)
		}
	}
	return out
}

// prepareNode writes what the CNI plugin reads (node name, MTU, labels),
// names the route protocol for ip route once, and enables forwarding if
// asked.
func (a *Agent) prepareNode(fails *syncFailures) {
	if err := statedir.Write(a.cfg.StateDir, a.cfg.NodeName, a.ul.MTU-desired.EncapOverhead); err != nil {
		fails.add("statedir", err)
	}
	if a.labels != nil {
		if err := statedir.WriteLabels(a.cfg.StateDir, a.labels); err != nil {
			fails.add("statedir", err)
		}
	}
	if a.cfg.ProtocolNamesDir != "" && !a.protoNamed {
		if err := routes.InstallProtocolName(a.cfg.ProtocolNamesDir); err != nil {
			a.log.Warn("cannot name route protocol 202 for ip route; routes work regardless", "err", err)
		}
		a.protoNamed = true // best effort: said once
	}
	if a.cfg.EnableForwarding {
		if err := a.enableForwarding(); err != nil {
			fails.add("forwarding", err)
		}
	}
}

// apply makes the kernel match st: tunl0 and its datapath, the routes and
// the nftables table, each whatever became of the others.
func (a *Agent) apply(st desired.State, fails *syncFailures) (routes.Result, firewall.Result) {
	a.kernelDirty.Store(false)
	dp := a.dp.Load()
	if err := dp.Set(st.Tunnel); a.check(CheckDatapath, err) != nil {
		fails.add("datapath", fmt.Errorf("setting up %s: %w", "tunl0", err))
	}
	res, err := a.routes.Reconcile(st.Routes)
	if err != nil {
		fails.add("routes", err)
	}
	a.metrics.RoutesProgrammed.Set(float64(res.Programmed))
	a.metrics.RouteChanges.WithLabelValues("add").Add(float64(res.Added))
	a.metrics.RouteChanges.WithLabelValues("replace").Add(float64(res.Replaced))
	a.metrics.RouteChanges.WithLabelValues("delete").Add(float64(res.Deleted))
	a.metrics.PeerBlocks.Set(float64(len(st.Tunnel.Peers)))
	for _, c := range res.Conflicts {
		a.log.Warn("route not programmed", "why", c)
	}
	fwRes, err := a.firewall.Reconcile(st.Firewall)
	if err != nil {
		fails.add("firewall", err)
	}
	return res, fwRes
}

// record reports the sync in metrics, the sync check and the log, and
// remembers st as the state last applied.
func (a *Agent) record(start time.Time, st desired.State, res routes.Result, fwRes firewall.Result, fails *syncFailures) error {
	took := time.Since(start)
	a.metrics.SyncDuration.Observe(took.Seconds())
	err := errors.Join(fails.errs...)
	if err != nil {
		a.metrics.Syncs.WithLabelValues("error").Inc()
	} else {
		a.metrics.Syncs.WithLabelValues("ok").Inc()
	}
	a.check(CheckSync, syncProblem(err))
	if res.Changed() || fwRes.Changed() {
		a.log.Info("synced", "took", took.Round(time.Microsecond), "routes", res.Programmed,
			"added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted,
			"nftables", fwSummary(fwRes), "peers", len(st.Tunnel.Peers))
	} else {
		a.log.Debug("in sync", "took", took.Round(time.Microsecond), "routes", res.Programmed)
	}
	a.last, a.lastOK = st, err == nil
	return err
}

func syncProblem(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("last sync failed: %w", err)
}

func fwSummary(r interface{ Changed() bool }) string {
	if !r.Changed() {
		return "unchanged"
	}
	return fmt.Sprintf("%+v", r)
}

// poolProblem says why the pools cannot give this node addresses, if so.
func poolProblem(pools []*v1alpha1.IPPool) error {
	if len(pools) == 0 {
		return errors.New("no IPPool exists: create one (apiVersion calyx.dev/v1alpha1, kind IPPool, spec.cidr such as 192.168.0.0/16) so that nodes can claim blocks")
	}
	for _, p := range pools {
		if !p.Spec.Disabled {
			return nil
		}
	}
	return errors.New("every IPPool is disabled: enable one or create a new one")
}

// annotations are what this agent announces on its Node.
func (a *Agent) annotations() map[string]string {
	ann := map[string]string{v1alpha1.AnnotationIPv4Address: a.ul.Addr.String()}
	if a.tunnelAddr.IsValid() {
		ann[v1alpha1.AnnotationTunnelAddress] = a.tunnelAddr.String()
	}
	return ann
}

func mergeAnnotations(have, ours map[string]string) map[string]string {
	out := make(map[string]string, len(have)+len(ours))
	for k, v := range have {
		out[k] = v
	}
	for k, v := range ours {
		out[k] = v
	}
	return out
}

// register announces the node's underlay address and gets its tunnel
// address from IPAM, once per agent or when it must move to another pool;
// the node's annotations then say both.
func (a *Agent) register(ctx context.Context, node *corev1.Node, pools []*v1alpha1.IPPool) error {
	a.check(CheckNode, nil)
	var errs []error
	if err := a.moveTunnelAddress(ctx, node, pools); err != nil {
		errs = append(errs, err)
	}
	if !a.tunnelAddr.IsValid() {
		if err := poolProblem(pools); err != nil {
			// Not a failure to retry: the pool's creation triggers a sync,
			// and /readyz already says what is missing.
			a.check(CheckTunnel, fmt.Errorf("waiting for an IPPool to take tunl0's address from"))
		} else {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			asg, err := a.alloc.AssignTunnelAddress(actx, a.cfg.NodeName)
			cancel()
			if err != nil {
				if errors.Is(err, ipam.ErrNoPool) || errors.Is(err, ipam.ErrExhausted) {
					err = fmt.Errorf("assigning tunl0's address: %w; add or enlarge an IPPool", err)
				} else {
					err = fmt.Errorf("assigning tunl0's address: %w", err)
				}
				a.check(CheckTunnel, err)
				errs = append(errs, err)
			} else {
				a.check(CheckTunnel, nil)
				a.tunnelAddr = asg.Addr
				a.log.Info("tunnel address assigned", "address", asg.Addr, "block", asg.Block, "borrowed", asg.Borrowed)
			}
		}
	}
	want := a.annotations()
	differs := false
	for k, v := range want {
		if node.Annotations[k] != v {
			differs = true
		}
	}
	if differs {
		if err := a.kube.annotate(ctx, a.cfg.NodeName, want); err != nil {
			a.check(CheckNode, err)
			errs = append(errs, err)
		} else {
			a.log.Info("node annotated", "annotations", want)
		}
	}
	return errors.Join(errs...)
}

// moveTunnelAddress releases tunl0's address when its pool may no longer
// hold it and another may; register then assigns a new one at once.
func (a *Agent) moveTunnelAddress(ctx context.Context, node *corev1.Node, pools []*v1alpha1.IPPool) error {
	if !a.tunnelAddr.IsValid() {
		return nil
	}
	why := tunnelMove(a.tunnelAddr, a.cfg.NodeName, node.Labels, pools)
	if why == "" {
		return nil
	}
	a.log.Info("moving tunl0's address to another pool", "address", a.tunnelAddr, "why", why)
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := a.alloc.ReleaseByHandle(actx, ipam.TunnelHandle(a.cfg.NodeName)); err != nil {
		return fmt.Errorf("releasing tunl0's address %s (%s): %w", a.tunnelAddr, why, err)
	}
	a.tunnelAddr = netip.Addr{}
	return nil
}

// enableForwarding sets net.ipv4.ip_forward in the node's namespace. A
// sysctl under /proc/sys/net belongs to the namespace of the thread that
// opens it, so the write happens on a thread switched into the namespace
// and back.
func (a *Agent) enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	set := func() error {
		b, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		return os.WriteFile(path, []byte("1\n"), 0o644)
	}
	var err error
	if a.ownNS {
		// Already there: switching would need CAP_SYS_ADMIN for nothing.
		err = set()
	} else {
		err = nsexec.Run(a.ns, set)
	}
	if err != nil {
		return fmt.Errorf("enabling IPv4 forwarding (%s): %w", path, err)
	}
	return nil
}

func (a *Agent) underlayName() string {
	if p := a.ulIface.Load(); p != nil {
		return *p
	}
	return ""
}
