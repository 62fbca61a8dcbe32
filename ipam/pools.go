package ipam

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Which pools an allocation may take addresses from: the ones asked for
// (by name or CIDR, in the order given) or every pool not kept for those
// who ask (assignmentMode Manual), less those that are disabled, are not for the address's use (allowedUses), or do not
// select the node (nodeSelector). Borrowing and claiming go through the
// same choice, so an address never comes from a pool that refuses it.

// PoolSelects says whether the pool's nodeSelector selects a node with
// these labels: an empty or absent selector selects every node. An
// invalid selector selects none, with the reason.
func PoolSelects(p *v1alpha1.IPPool, nodeLabels map[string]string) (bool, error) {
	if selectsAll(p) {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.NodeSelector)
	if err != nil {
		return false, fmt.Errorf("pool %s has an invalid nodeSelector: %w", p.Name, err)
	}
	return sel.Matches(labels.Set(nodeLabels)), nil
}

func selectsAll(p *v1alpha1.IPPool) bool {
	s := p.Spec.NodeSelector
	return s == nil || len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

// SelectorString is the pool's nodeSelector as kubectl's -l takes it, or
// "<all>" when it selects every node.
func SelectorString(p *v1alpha1.IPPool) string {
	if selectsAll(p) {
		return "<all>"
	}
	return metav1.FormatLabelSelector(p.Spec.NodeSelector)
}

// Refuses says why p may not give node, with these labels, an address for
// use that names no pool (a node's tunl0 address), or "" when it may: the
// rule every allocation follows.
func Refuses(p *v1alpha1.IPPool, node string, use v1alpha1.IPPoolUse, nodeLabels map[string]string) string {
	c := &poolChoice{node: node, use: use, read: true, labels: nodeLabels}
	why, _ := c.refuses(context.Background(), p)
	return why
}

// useOf is the pool use an allocation needs.
func useOf(t v1alpha1.AllocationType) v1alpha1.IPPoolUse {
	if t == v1alpha1.AllocationTunnel {
		return v1alpha1.IPPoolUseTunnel
	}
	return v1alpha1.IPPoolUseWorkload
}

// unusable says why p cannot give node an address for use, or "" when it
// can. nodeLabels is only called for pools with a selector.
func unusable(p *v1alpha1.IPPool, node string, use v1alpha1.IPPoolUse, nodeLabels func() (map[string]string, error)) (string, error) {
	switch {
	case p.Spec.Disabled:
		return "disabled", nil
	case !p.Spec.Allows(use):
		return fmt.Sprintf("allowedUses %v has no %s", p.Spec.AllowedUses, use), nil
	case selectsAll(p):
		return "", nil
	}
	l, err := nodeLabels()
	if err != nil {
		return "", err
	}
	ok, err := PoolSelects(p, l)
	switch {
	case err != nil:
		return err.Error(), nil
	case !ok:
		return fmt.Sprintf("its nodeSelector %s does not select node %s", SelectorString(p), node), nil
	}
	return "", nil
}

// resolvePools finds the requested pools (names or CIDRs) in all, in the
// order asked, without duplicates. A pool that does not exist or is
// disabled is an error that names it: asking for it is a mistake to fix,
// not a preference to skip.
func resolvePools(all []v1alpha1.IPPool, requested []string) ([]v1alpha1.IPPool, error) {
	var out []v1alpha1.IPPool
	for _, want := range requested {
		i := slices.IndexFunc(all, func(p v1alpha1.IPPool) bool { return p.Name == want || p.Spec.CIDR == want })
		if i < 0 {
			return nil, fmt.Errorf("%w %q: no IPPool has that name or CIDR (kubectl get ippools)", ErrUnknownPool, want)
		}
		p := all[i]
		if p.Spec.Disabled {
			return nil, fmt.Errorf("%w: %s (%s) is disabled; ask for an enabled pool", ErrPoolDisabled, p.Name, p.Spec.CIDR)
		}
		if !slices.ContainsFunc(out, func(q v1alpha1.IPPool) bool { return q.Name == p.Name }) {
			out = append(out, p)
		}
	}
	return out, nil
}

// poolChoice is one allocation's choice of pools. It reads what it needs
// lazily: the fast path, from the node's own blocks, asks about their
// pools by name; only the slow path lists every pool.
type poolChoice struct {
	m    *IPAM
	node string
	use  v1alpha1.IPPoolUse
	// order ranks the requested pools by name; nil when none were asked
	// for, and every usable pool ranks 0.
	order map[string]int
	// requested are the requested pools, resolved, in order.
	requested []v1alpha1.IPPool
	labels    map[string]string
	labelsErr error
	read      bool
	ranks     map[string]int // by pool name; -1: not usable
}

// CheckPools refuses pools that Assign would refuse by name: requested
// (else the IPAM's default pools) must each name an enabled IPPool, by
// name or CIDR. It writes nothing, so a caller can learn that a request
// is sound before the write that allocates.
func (m *IPAM) CheckPools(ctx context.Context, requested []string) error {
	if len(requested) == 0 {
		requested = m.opts.Pools
	}
	_, err := m.choosePools(ctx, m.opts.Node, v1alpha1.IPPoolUseWorkload, requested)
	return err
}

// choosePools starts the choice for an allocation of use on node from the
// requested pools (none: every pool).
func (m *IPAM) choosePools(ctx context.Context, node string, use v1alpha1.IPPoolUse, requested []string) (*poolChoice, error) {
	c := &poolChoice{m: m, node: node, use: use, ranks: map[string]int{}}
	if len(requested) == 0 {
		return c, nil
	}
	all, err := m.store.ListPools(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing IP pools: %w", err)
	}
	// A pool created a moment ago may not be in a cached list yet. Only a
	// name can be read by name: a CIDR ("10.0.0.0/16") would be a path.
	for _, want := range requested {
		if len(validation.IsDNS1123Subdomain(want)) > 0 ||
			slices.ContainsFunc(all, func(p v1alpha1.IPPool) bool { return p.Name == want || p.Spec.CIDR == want }) {
			continue
		}
		if p, err := m.store.GetPool(ctx, want); err == nil {
			all = append(all, *p)
		} else if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading pool %s: %w", want, err)
		}
	}
	if c.requested, err = resolvePools(all, requested); err != nil {
		return nil, err
	}
	c.order = map[string]int{}
	for i, p := range c.requested {
		c.order[p.Name] = i
	}
	return c, nil
}

func (c *poolChoice) nodeLabels(ctx context.Context) func() (map[string]string, error) {
	return func() (map[string]string, error) {
		if !c.read {
			c.read = true
			if f := c.m.opts.NodeLabels; f != nil {
				c.labels, c.labelsErr = f(ctx, c.node)
			}
			if c.labelsErr != nil {
				c.labelsErr = fmt.Errorf("reading the labels of node %s for the pools' nodeSelectors: %w", c.node, c.labelsErr)
			}
		}
		return c.labels, c.labelsErr
	}
}

// rank orders p among the usable pools (lower first); ok is false when p
// may not give this allocation an address.
func (c *poolChoice) rank(ctx context.Context, p *v1alpha1.IPPool) (rank int, ok bool, err error) {
	if c.order != nil {
		if rank, ok = c.order[p.Name]; !ok {
			return 0, false, nil
		}
	}
	why, err := c.refuses(ctx, p)
	if err != nil || why != "" {
		return 0, false, err
	}
	return rank, true, nil
}

// refuses says why p cannot serve this allocation, or "" when it can: a
// pool kept for those who ask (assignmentMode Manual) serves only a choice
// that names it; then the rule every allocation follows.
func (c *poolChoice) refuses(ctx context.Context, p *v1alpha1.IPPool) (string, error) {
	if c.order == nil && p.Spec.Manual() {
		return "assignmentMode Manual: only for pods and namespaces that ask for it (calyx.dev/ipv4pools)", nil
	}
	return unusable(p, c.node, c.use, c.nodeLabels(ctx))
}

// rankByName is rank for the pool of that name, read once per choice; a
// pool that no longer exists is not usable.
func (c *poolChoice) rankByName(ctx context.Context, name string) (int, bool, error) {
	if r, seen := c.ranks[name]; seen {
		return r, r >= 0, nil
	}
	p, err := c.m.store.GetPool(ctx, name)
	if apierrors.IsNotFound(err) {
		c.ranks[name] = -1
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading pool %s: %w", name, err)
	}
	r, ok, err := c.rank(ctx, p)
	if err != nil {
		return 0, false, err
	}
	if !ok {
		r = -1
	}
	c.ranks[name] = r
	return r, ok, nil
}

// pools lists the usable pools in the order to try them: the requested
// order, else by name. None is ErrNoPool, saying why of each pool.
func (c *poolChoice) pools(ctx context.Context) ([]v1alpha1.IPPool, error) {
	all := c.requested
	if c.order == nil {
		var err error
		if all, err = c.m.store.ListPools(ctx); err != nil {
			return nil, fmt.Errorf("listing IP pools: %w", err)
		}
		slices.SortFunc(all, func(a, b v1alpha1.IPPool) int { return cmp.Compare(a.Name, b.Name) })
	}
	var out []v1alpha1.IPPool
	var why []string
	for i := range all {
		p := &all[i]
		reason, err := c.refuses(ctx, p)
		if err != nil {
			return nil, err
		}
		if reason != "" {
			why = append(why, fmt.Sprintf("%s (%s): %s", p.Name, p.Spec.CIDR, reason))
			continue
		}
		out = append(out, *p)
	}
	if len(out) > 0 {
		return out, nil
	}
	what := "a pod address"
	if c.use == v1alpha1.IPPoolUseTunnel {
		what = "its tunl0 address"
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("%w: create an enabled IPPool (kubectl apply -f deploy/calyx.yaml has the default 192.168.0.0/16)", ErrNoPool)
	}
	return nil, fmt.Errorf("%w: none can give node %s %s: %s", ErrNoPool, c.node, what, strings.Join(why, "; "))
}

// poolFor is the pool that holds addr: the most specific one, when pools
// overlap.
func poolFor(all []v1alpha1.IPPool, addr netip.Addr) (*v1alpha1.IPPool, netip.Prefix, bool) {
	var best *v1alpha1.IPPool
	var bestCIDR netip.Prefix
	for i := range all {
		cidr, err := netip.ParsePrefix(all[i].Spec.CIDR)
		if err != nil || !cidr.Contains(addr) {
			continue
		}
		if best == nil || cidr.Bits() > bestCIDR.Bits() {
			best, bestCIDR = &all[i], cidr
		}
	}
	return best, bestCIDR, best != nil
}
