package calyxctl

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// IPAMShow writes the pools' usage and the nodes each selects, and (with
// blocks) the blocks' usage. JSON and YAML always carry both.
func IPAMShow(ctx context.Context, c *Clients, w io.Writer, format string, blocks bool) error {
	m, err := ipam.NewForConfig(c.Config, ipam.Options{})
	if err != nil {
		return fmt.Errorf("connecting to the API server: %w", err)
	}
	u, err := m.Usage(ctx)
	if err != nil {
		return fmt.Errorf("reading IPAM usage: %w (are calyx's CRDs installed? kubectl get crd | grep calyx.dev)", err)
	}
	pools, err := c.Calyx.CalyxV1alpha1().IPPools().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing IPPools: %w", err)
	}
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Nodes: %w (calyxctl needs get/list on nodes)", err)
	}
	selectNodes(u.Pools, pools.Items, nodes.Items)
	// By address, not by object name (192-168-183-… before 192-168-28-…).
	slices.SortFunc(u.Blocks, func(a, b ipam.BlockUsage) int {
		pa, ea := netip.ParsePrefix(a.CIDR)
		pb, eb := netip.ParsePrefix(b.CIDR)
		if ea != nil || eb != nil {
			return strings.Compare(a.CIDR, b.CIDR)
		}
		return desired.ComparePrefix(pa, pb)
	})
	return render(w, format, u, func(w io.Writer) { usageTable(w, u, blocks) })
}

// selectNodes fills each pool's Nodes: the nodes its nodeSelector
// selects, by name.
func selectNodes(u []ipam.PoolUsage, pools []v1alpha1.IPPool, nodes []corev1.Node) {
	for i := range u {
		j := slices.IndexFunc(pools, func(p v1alpha1.IPPool) bool { return p.Name == u[i].Name })
		if j < 0 {
			continue
		}
		u[i].Nodes = []string{}
		for _, n := range nodes {
			if ok, _ := ipam.PoolSelects(&pools[j], n.Labels); ok {
				u[i].Nodes = append(u[i].Nodes, n.Name)
			}
		}
		slices.Sort(u[i].Nodes)
	}
}

func usageTable(w io.Writer, u ipam.Usage, blocks bool) {
	fmt.Fprintln(w, "POOL\tCIDR\tSIZE\tUSED\tFREE\tBLOCKS\tSELECTOR\tNODES")
	for _, p := range u.Pools {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", p.Name, p.CIDR, p.Size, p.Used, p.Free, p.Blocks, p.NodeSelector, orNone(strings.Join(p.Nodes, ",")))
	}
	if !blocks {
		return
	}
	fmt.Fprintln(w) // a line without cells: the blocks get their own columns
	fmt.Fprintln(w, "BLOCK\tNODE\tPOOL\tUSED\tFREE\tBORROWED")
	for _, b := range u.Blocks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", b.CIDR, orNone(b.Node), orNone(b.Pool), b.Used, b.Free, orNone(strings.Join(b.Borrowed, ",")))
	}
}

// Problem kinds ipam check reports: the findings of a dry run of the
// cluster's IPAM garbage collector (ipam.DryRun), whose rules are the only
// ones; calyxctl keeps no copy of them.
const (
	// StalePod is a pod address whose Pod no longer exists, or runs on
	// another node.
	StalePod = ipam.ReasonPodGone
	// StaleTunnel is an address (a tunnel's, or a pod's) on a Node that no
	// longer exists.
	StaleTunnel = ipam.ReasonNodeGone
	// StaleSandbox is an address of an earlier sandbox of a pod that
	// reports another address of the same network.
	StaleSandbox = ipam.ReasonSandboxGone
	// OrphanBlock is a block affine to a Node that no longer exists, empty
	// once its leaks are released.
	OrphanBlock = ipam.ReasonBlockOfDeletedNode
	// OrphanAffinity is the block index of a Node that no longer exists.
	OrphanAffinity = ipam.ReasonAffinityOfDeletedNode
	// DuplicateHandle is a handle holding more than one address: a pod or
	// a tunnel has exactly one. The collector reports it and leaves it.
	DuplicateHandle = ipam.ReasonDuplicateHandle
	// DanglingHandle is an IPAMHandle index entry whose allocation is gone.
	DanglingHandle = ipam.ReasonDanglingHandle
	// Unchecked is an object the collector could not judge (an invalid
	// block), with its error.
	Unchecked = "unchecked"
)

// Problem is one finding of ipam check.
type Problem struct {
	Kind    string `json:"kind"`
	Block   string `json:"block,omitempty"`
	Address string `json:"address,omitempty"`
	Handle  string `json:"handle,omitempty"`
	Detail  string `json:"detail"`
}

// CheckIPAM is what the garbage collector would release and delete in s,
// and the handles it would leave duplicated. Problems are sorted by kind,
// block and address.
func CheckIPAM(s *Snapshot) []Problem {
	findings, err := ipam.DryRun(context.Background(), s.gcObjects(), snapshotCluster{s})
	var out []Problem
	for _, f := range findings {
		out = append(out, problemOf(f))
	}
	for _, e := range unjoin(err) {
		out = append(out, Problem{Kind: Unchecked, Detail: e.Error()})
	}
	slices.SortFunc(out, func(a, b Problem) int {
		return strings.Compare(a.Kind+"\x00"+a.Block+"\x00"+a.Address+"\x00"+a.Handle, b.Kind+"\x00"+b.Block+"\x00"+b.Address+"\x00"+b.Handle)
	})
	return out
}

// problemOf is a finding as ipam check prints it: the block by its CIDR,
// the addresses joined, an index entry's ordinals as #N.
func problemOf(f ipam.Finding) Problem {
	p := Problem{Kind: f.Reason, Block: cmp.Or(f.CIDR, f.Block), Handle: f.Handle, Detail: f.Detail}
	var where []string
	for _, a := range f.Addrs {
		where = append(where, a.String())
	}
	for _, o := range f.Ordinals {
		where = append(where, "#"+strconv.Itoa(o))
	}
	p.Address = strings.Join(where, ",")
	return p
}

// unjoin lists the errors errors.Join made one.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

// gcObjects are the snapshot's IPAM objects, for the collector's dry run.
func (s *Snapshot) gcObjects() ipam.GCObjects {
	var o ipam.GCObjects
	for _, p := range s.Pools {
		o.Pools = append(o.Pools, *p)
	}
	for _, b := range s.Blocks {
		o.Blocks = append(o.Blocks, *b)
	}
	for _, h := range s.Handles {
		o.Handles = append(o.Handles, *h)
	}
	for _, a := range s.Affinities {
		o.Affinities = append(o.Affinities, *a)
	}
	return o
}

// snapshotCluster answers the collector's questions about pods and nodes
// from the snapshot: fresh or not, the answer is the one read.
type snapshotCluster struct{ s *Snapshot }

func (c snapshotCluster) Pod(_ context.Context, namespace, name string, _ bool) (ipam.PodInfo, bool, error) {
	for _, p := range c.s.Pods {
		if p.Namespace != namespace || p.Name != name {
			continue
		}
		info := ipam.PodInfo{Node: p.Spec.NodeName}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				info.IPs = append(info.IPs, a)
			}
		}
		return info, true, nil
	}
	return ipam.PodInfo{}, false, nil
}

func (c snapshotCluster) Node(_ context.Context, name string, _ bool) (bool, error) {
	return slices.ContainsFunc(c.s.Nodes, func(n *corev1.Node) bool { return n.Name == name }), nil
}

// IPAMCheck writes CheckIPAM's problems and reports how many there are.
func IPAMCheck(ctx context.Context, c *Clients, w io.Writer, format string) (int, error) {
	s, err := c.Read(ctx, true)
	if err != nil {
		return 0, err
	}
	ps := CheckIPAM(s)
	if ps == nil {
		ps = []Problem{}
	}
	return len(ps), render(w, format, ps, func(w io.Writer) {
		if len(ps) == 0 {
			fmt.Fprintln(w, "no problems: every allocation has its pod or node, every block its node, every handle one address")
			return
		}
		fmt.Fprintln(w, "KIND\tBLOCK\tADDRESS\tHANDLE\tDETAIL")
		for _, p := range ps {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Kind, orNone(p.Block), orNone(p.Address), orNone(p.Handle), p.Detail)
		}
	})
}
