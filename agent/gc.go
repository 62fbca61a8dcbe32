package agent

import (
	"context"
	"sync"

	"github.com/calyx-net/calyx/agent/ipamgc"
)

// startGC campaigns for the cluster's IPAM garbage collector next to the
// sync loop, when enabled. Its failures never stop the agent: routes
// matter more than reclaiming addresses.
func (a *Agent) startGC(ctx context.Context, wg *sync.WaitGroup) {
	if !a.cfg.GC.Enabled {
		return
	}
	cfg := a.cfg.GC
	cfg.Blocks, cfg.Nodes = a.kube.blocks, a.kube.nodes
	c, err := ipamgc.New(cfg, a.cfg.NodeName, a.kube.kube, a.kube.calyx, a.metrics, a.log.With("component", "ipam-gc"))
	if err != nil {
		a.log.Error("IPAM garbage collection is off", "err", err)
		return
	}
	wg.Go(func() { c.Run(ctx) })
}
