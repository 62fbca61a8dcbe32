package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// ReleaseStale frees the pod addresses of node held under network whose
// container is not in valid: the CNI GC verb, where the runtime names the
// attachments that still exist. Tunnel addresses and other networks' handles
// are never touched.
func (m *IPAM) ReleaseStale(ctx context.Context, node, network string, valid map[string]bool) ([]netip.Addr, error) {
	prefix := network + "."
	stale := map[string]bool{}
	consider := func(handle string, typ v1alpha1.AllocationType) {
		if typ != "" && typ != v1alpha1.AllocationPod {
			return
		}
		if id, ok := strings.CutPrefix(handle, prefix); ok && !valid[id] {
			stale[handle] = true
		}
	}
	// Handles of the node (borrowed addresses included) and, for addresses
	// whose handle was never indexed, the node's own blocks.
	handles, err := m.store.ListHandles(ctx, map[string]string{v1alpha1.LabelNode: node})
	if err != nil {
		return nil, fmt.Errorf("listing the handles of node %s: %w", node, err)
	}
	for _, h := range handles {
		consider(h.Spec.Handle, "")
	}
	blocks, err := m.store.ListBlocks(ctx, map[string]string{v1alpha1.LabelNode: node})
	if err != nil {
		return nil, fmt.Errorf("listing the blocks of node %s: %w", node, err)
	}
	for _, b := range blocks {
		for _, a := range b.Spec.Allocations {
			if a.Node == "" || a.Node == node {
				consider(a.Handle, a.Type)
			}
		}
	}
	names := make([]string, 0, len(stale))
	for h := range stale {
		names = append(names, h)
	}
	sort.Strings(names)
	var released []netip.Addr
	for _, h := range names {
		r, err := m.ReleaseByHandle(ctx, h)
		if err != nil {
			return released, err
		}
		released = append(released, r...)
	}
	return released, nil
}
