package agent

import (
	"context"
	"fmt"
	"net/netip"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// tunnelMove says why tunl0's address addr must move to another pool, or
// "" to keep it: its pool was disabled, deleted, or no longer allows
// Tunnel, and another pool may give this node one. Until then the address
// keeps the pool's block from emptying, and a migration off the pool
// (Calico's "migrate from one IP pool to another") from finishing. A
// pool that no longer selects the node keeps its addresses, as a node
// keeps its blocks when its labels change.
func tunnelMove(addr netip.Addr, node string, nodeLabels map[string]string, pools []*v1alpha1.IPPool) string {
	var own *v1alpha1.IPPool
	bits := -1
	for _, p := range pools {
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err == nil && cidr.Contains(addr) && cidr.Bits() > bits {
			own, bits = p, cidr.Bits()
		}
	}
	var why string
	switch {
	case own == nil:
		why = "no IPPool holds it any more"
	case own.Spec.Disabled:
		why = fmt.Sprintf("its pool %s is disabled", own.Name)
	case !own.Spec.Allows(v1alpha1.IPPoolUseTunnel):
		why = fmt.Sprintf("its pool %s no longer allows Tunnel", own.Name)
	case own.Spec.Manual():
		why = fmt.Sprintf("its pool %s is kept for those who ask (assignmentMode Manual)", own.Name)
	default:
		return ""
	}
	for _, p := range pools {
		if ipam.Refuses(p, node, v1alpha1.IPPoolUseTunnel, nodeLabels) == "" {
			return why
		}
	}
	return "" // nowhere to go: keeping it beats having none
}

// nodeLabels are the node's labels for the pools' nodeSelectors: from the
// informer, else from the API server.
func (a *Agent) nodeLabels(ctx context.Context, node string) (map[string]string, error) {
	if a.kube.nodes != nil {
		if n, err := a.kube.nodes.Get(node); err == nil {
			return n.Labels, nil
		}
	}
	n, err := a.kube.kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("node %s is not in the API: is NODENAME right?", node)
	}
	if err != nil {
		return nil, err
	}
	return n.Labels, nil
}
