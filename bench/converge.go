package bench

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
	"github.com/calyx-net/calyx/lab"
)

const convergeBlocks = 100

// seenRoute is a route that appeared on a node, and when.
type seenRoute struct {
	node string
	dst  netip.Prefix
	at   time.Time
}

// watchRoutes reports every new route in the named namespaces, timed as
// netlink delivers it, until ctx ends.
func watchRoutes(ctx context.Context, nodes []string) (<-chan seenRoute, error) {
	out := make(chan seenRoute, 4096)
	for _, n := range nodes {
		_, nsh, err := netlinkIn(n)
		if err != nil {
			return nil, err
		}
		ch := make(chan netlink.RouteUpdate, 4096)
		done := make(chan struct{})
		err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
			Namespace: &nsh, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
		})
		nsh.Close()
		if err != nil {
			return nil, fmt.Errorf("subscribing to routes in %s: %w", n, err)
		}
		go func() {
			<-ctx.Done()
			close(done)
		}()
		go func() {
			for u := range ch {
				if u.Type != unix.RTM_NEWROUTE || u.Dst == nil {
					continue
				}
				at := time.Now()
				a, _ := netip.AddrFromSlice(u.Dst.IP.To4())
				ones, _ := u.Dst.Mask.Size()
				select {
				case out <- seenRoute{node: n, dst: netip.PrefixFrom(a, ones), at: at}:
				default:
				}
			}
		}()
	}
	return out, nil
}

// runConverge claims blocks for one node, one at a time, by creating their
// IPAMBlock objects as calyx-ipam does, and times until the block's route
// is on every other node, watched with netlink subscriptions there.
func runConverge(ctx context.Context, e *Env) ([]Row, error) {
	owner := e.Lab.Workers()[0]
	others := e.Lab.Others(owner)
	blocks := e.Lab.Calyx.CalyxV1alpha1().IPAMBlocks()
	existing, err := blocks.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	taken := map[string]bool{}
	for _, b := range existing.Items {
		taken[b.Name] = true
	}
	// Free /26 blocks of the pool, from its top down.
	var free []netip.Prefix
	for a := netip.MustParseAddr("192.168.255.192"); len(free) < convergeBlocks*e.Opts.Runs; {
		p := netip.PrefixFrom(a, 26)
		if !taken[ipam.BlockName(p)] {
			free = append(free, p)
		}
		b := a.As4()
		v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
		v -= 64
		a = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if !netip.MustParsePrefix(lab.DefaultPoolCIDR).Contains(a) {
			return nil, fmt.Errorf("not enough free blocks in %s", lab.DefaultPoolCIDR)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	seen, err := watchRoutes(wctx, others)
	if err != nil {
		return nil, err
	}
	var p50, p99 []float64
	var created []string
	defer func() {
		for _, n := range created {
			blocks.Delete(context.WithoutCancel(ctx), n, metav1.DeleteOptions{})
		}
	}()
	for run := range e.Opts.Runs {
		var lat []time.Duration
		for i := range convergeBlocks {
			cidr := free[run*convergeBlocks+i]
			b := &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: ipam.BlockName(cidr)},
				Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr.String(), Node: owner, Pool: lab.DefaultPool}}
			begin := time.Now()
			if _, err := blocks.Create(ctx, b, metav1.CreateOptions{}); err != nil {
				return nil, fmt.Errorf("creating IPAMBlock %s: %w", b.Name, err)
			}
			created = append(created, b.Name)
			got := map[string]time.Time{}
			timeout := time.After(10 * time.Second)
			for len(got) < len(others) {
				select {
				case s := <-seen:
					if s.dst == cidr {
						got[s.node] = s.at
					}
				case <-timeout:
					return nil, fmt.Errorf("the route to block %s did not reach %v within 10 s (seen on %v); look at the agents' logs", cidr, others, got)
				}
			}
			var worst time.Duration
			for _, at := range got {
				worst = max(worst, at.Sub(begin))
			}
			lat = append(lat, worst)
		}
		p50 = append(p50, ms(percentile(lat, 50)))
		p99 = append(p99, ms(percentile(lat, 99)))
		e.Logf("converge: run %d/%d: p50 %.1f ms, p99 %.1f ms, max %.1f ms", run+1, e.Opts.Runs, p50[run], p99[run], ms(percentile(lat, 100)))
	}
	e.Note("converge: %d IPAMBlocks per run created one at a time for %s (a block claim, as calyx-ipam makes it); the time runs from the Create call until netlink reports the route on the last of %v.", convergeBlocks, owner, others)
	return []Row{
		{Part: "converge", Metric: fmt.Sprintf("block claimed → route on every other node, p50 over %d blocks", convergeBlocks), Unit: "ms", Calyx: Of(p50...)},
		{Part: "converge", Metric: fmt.Sprintf("… p99 over %d blocks", convergeBlocks), Unit: "ms", Calyx: Of(p99...), Goal: AtMost(100, "ms")},
	}, nil
}
