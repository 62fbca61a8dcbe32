package agent

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/routes"
)

// watchKernel subscribes to the node's routes, addresses, links and
// nftables changes: when someone else changes what the agent owns, a sync
// puts it back at once instead of at the next resync. A subscription that
// breaks (a full socket buffer drops events) triggers a sync, which
// covers whatever was lost, and is made again.
func (a *Agent) watchKernel(ctx context.Context, wg *sync.WaitGroup) {
	a.subscribe(ctx, wg, "routes", a.watchRoutes)
	a.subscribe(ctx, wg, "addresses", a.watchAddresses)
	a.subscribe(ctx, wg, "links", a.watchLinks)
	a.subscribe(ctx, wg, "nftables", a.watchNftables)
}

// subscription starts one kernel subscription that ends when done is
// closed, and reports on errc (through report) when it breaks.
type subscription func(done <-chan struct{}, errc chan<- error) error

// subscribe keeps the subscription made until ctx ends: each time it
// fails or breaks, a sync covers what may have been missed, and after a
// pause it is made again.
func (a *Agent) subscribe(ctx context.Context, wg *sync.WaitGroup, name string, run subscription) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			done := make(chan struct{})
			errc := make(chan error, 1)
			if err := run(done, errc); err != nil {
				a.log.Warn("kernel subscription failed; relying on resync meanwhile", "what", name, "err", err)
			} else {
				select {
				case <-ctx.Done():
				case err := <-errc:
					a.log.Debug("kernel subscription broke; resubscribing", "what", name, "err", err)
				}
			}
			close(done)
			a.kernelChanged()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

// report passes a subscription's first error on, and drops the rest.
func report(errc chan<- error) func(error) {
	return func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
}

// watchRoutes: a change to a route of the agent's protocol that the
// routes writer did not make itself.
func (a *Agent) watchRoutes(done <-chan struct{}, errc chan<- error) error {
	ns := a.ns
	ch := make(chan netlink.RouteUpdate, 1024)
	err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: report(errc), ReceiveBufferSize: 4 << 20,
	})
	if err == nil {
		go relay(ch, func(u netlink.RouteUpdate) bool {
			return u.Protocol == routes.Protocol && !a.routes.Expected(u)
		}, a.kernelChanged, report(errc))
	}
	return err
}

// watchAddresses: a change to an IPv4 address. Pods' veths have no
// host-side IPv4 address; their IPv6 link-local ones, which come with
// every pod, are not the agent's.
func (a *Agent) watchAddresses(done <-chan struct{}, errc chan<- error) error {
	ns := a.ns
	ch := make(chan netlink.AddrUpdate, 256)
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
		Namespace: &ns, ErrorCallback: report(errc), ReceiveBufferSize: 1 << 20,
	})
	if err == nil {
		go relay(ch, func(u netlink.AddrUpdate) bool { return u.LinkAddress.IP.To4() != nil }, a.kernelChanged, report(errc))
	}
	return err
}

// watchLinks: a change to tunl0, the eBPF datapath's tunl0-encap, or the
// underlay NIC.
func (a *Agent) watchLinks(done <-chan struct{}, errc chan<- error) error {
	ns := a.ns
	ch := make(chan netlink.LinkUpdate, 256)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ErrorCallback: report(errc), ReceiveBufferSize: 1 << 20,
	})
	if err == nil {
		go relay(ch, func(u netlink.LinkUpdate) bool {
			name := u.Attrs().Name
			return strings.HasPrefix(name, desired.TunnelDevice) || name == a.underlayName()
		}, a.kernelChanged, report(errc))
	}
	return err
}

// watchNftables: a change to the agent's table that the agent did not
// commit itself, or an event the monitor could not decode.
func (a *Agent) watchNftables(done <-chan struct{}, errc chan<- error) error {
	c, err := a.firewall.WatchConn()
	if err != nil {
		return err
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(256))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return err
	}
	go func() {
		<-done
		mon.Close()
	}()
	go relay(events, a.nftChangeConcerns, a.kernelChanged, report(errc))
	return nil
}

// nftChangeConcerns: one commit's changes (a generation) concern the
// agent when they touch its table and another process made them.
func (a *Agent) nftChangeConcerns(evs *nftables.MonitorEvents) bool {
	gen := evs.GeneratedBy
	if gen == nil || gen.Error != nil {
		return true
	}
	if gen.Type == nftables.MonitorEventType(unix.NFT_MSG_NEWGEN) && a.firewall.Committed(gen.Header) {
		return false
	}
	for _, ev := range evs.Changes {
		if ev.Error != nil || ours(ev.Data) {
			return true
		}
	}
	return false
}

// relay calls changed for every update on ch that concerns the agent,
// until the subscription closes ch, and then says it broke.
func relay[T any](ch <-chan T, concerns func(T) bool, changed func(), broke func(error)) {
	for u := range ch {
		if concerns(u) {
			changed()
		}
	}
	broke(errClosed)
}

// kernelChanged asks for a sync that reconciles the kernel even if the
// cluster did not change.
func (a *Agent) kernelChanged() {
	a.kernelDirty.Store(true)
	a.trigger()
}

type closedError struct{}

func (closedError) Error() string { return "subscription closed" }

var errClosed = closedError{}

// ours reports whether an nftables event concerns the agent's table.
func ours(data any) bool {
	var t *nftables.Table
	switch d := data.(type) {
	case *nftables.Table:
		t = d
	case *nftables.Chain:
		t = d.Table
	case *nftables.Rule:
		t = d.Table
	case *nftables.Set:
		t = d.Table
	default:
		return true // elements carry no table: look anyway
	}
	return t == nil || t.Name == firewall.TableName
}
