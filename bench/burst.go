package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/nsexec"
)

const (
	burstPods = 100
	// routeProtoCalyx is the route protocol the agent owns its routes by.
	routeProtoCalyx = 202
)

// runBurst adds 100 pods at once on one node and times until every pod
// has its address, its route on its node, and its block's route on every
// other node; the reference does the same burst with ptp + host-local,
// which has no other nodes to tell.
func runBurst(ctx context.Context, e *Env) ([]Row, error) {
	node := e.Lab.Workers()[0]
	cx, err := calyxSetup(e, node)
	if err != nil {
		return nil, err
	}
	ref, err := refSetup(e, node)
	if err != nil {
		return nil, err
	}
	var tc, tr []float64
	for run := range e.Opts.Runs {
		for _, s := range []*cniSetup{cx, ref} {
			others := e.Lab.Others(node)
			if s != cx {
				others = nil
			}
			d, err := burst(ctx, e, s, fmt.Sprintf("b%s%d", s.name[:1], run), others)
			if err != nil {
				return nil, err
			}
			if s == cx {
				tc = append(tc, d.Seconds())
			} else {
				tr = append(tr, d.Seconds())
			}
			e.Logf("burst: run %d/%d: %s: %d pods ready everywhere in %s", run+1, e.Opts.Runs, s.name, burstPods, d.Round(time.Millisecond))
		}
	}
	e.Note("burst: %d concurrent CNI ADDs on %s through libcni; the time runs until every pod has its address, its /32 route on %s and (calyx) a route covering it on every other node.", burstPods, node, node)
	return []Row{{Part: "burst", Metric: fmt.Sprintf("%d pods at once → all addressed and routed", burstPods), Unit: "s",
		Calyx: Of(tc...), RefName: "ptp+host-local (local routes only)", Ref: Of(tr...), Goal: AtMost(10, "s")}}, nil
}

func burst(ctx context.Context, e *Env, s *cniSetup, prefix string, others []string) (time.Duration, error) {
	pods := make([]*benchPod, burstPods)
	defer func() {
		// The burst's pods go at once too: one by one would take longer
		// than the burst.
		var wg sync.WaitGroup
		for _, p := range pods {
			if p != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.del(context.WithoutCancel(ctx), p)
					nsexec.DeleteNamed(p.netns)
				}()
			}
		}
		wg.Wait()
	}()
	for i := range pods {
		p, err := newBenchPod(fmt.Sprintf("%s-%d", prefix, i))
		if err != nil {
			return 0, err
		}
		pods[i] = p
	}
	begin := time.Now()
	errs := make([]error, burstPods)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.add(ctx, p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	ips := make([]net.IP, len(pods))
	for i, p := range pods {
		ips[i] = net.ParseIP(p.ip)
	}
	deadline := begin.Add(60 * time.Second)
	for {
		missing, err := missingRoutes(s.node, others, ips)
		if err != nil {
			return 0, err
		}
		if missing == "" {
			return time.Since(begin), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: after 60 s, still missing: %s; look at the agents' logs", s.name, missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// missingRoutes says which pod has no /32 on its node or no covering route
// on another node; empty when all are there.
func missingRoutes(node string, others []string, ips []net.IP) (string, error) {
	h, nsh, err := netlinkIn(node)
	if err != nil {
		return "", err
	}
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	h.Close()
	nsh.Close()
	if err != nil {
		return "", err
	}
	local := map[string]bool{}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones == 32 {
				local[r.Dst.IP.String()] = true
			}
		}
	}
	for _, ip := range ips {
		if !local[ip.String()] {
			return fmt.Sprintf("route to %s on %s", ip, node), nil
		}
	}
	for _, o := range others {
		h, nsh, err := netlinkIn(o)
		if err != nil {
			return "", err
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtoCalyx}, netlink.RT_FILTER_PROTOCOL)
		h.Close()
		nsh.Close()
		if err != nil {
			return "", err
		}
		for _, ip := range ips {
			covered := false
			for _, r := range routes {
				if r.Dst != nil && r.Type != 6 /* RTN_BLACKHOLE */ && r.Dst.Contains(ip) {
					covered = true
					break
				}
			}
			if !covered {
				return fmt.Sprintf("route covering %s on %s", ip, o), nil
			}
		}
	}
	return "", nil
}
