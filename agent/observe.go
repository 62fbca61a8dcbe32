package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/agent/taps"
)

// observer is a datapath with a fast mode that skips tunl0's device
// passes, and with them tunl0's capture point (the eBPF one).
type observer interface{ SetObserved(bool) error }

// tapPoll is how often the agent looks for packet sockets: a capture on
// tunl0 sees every packet from at most this long after it opens.
const tapPoll = 100 * time.Millisecond

// watchTaps keeps the datapath observable while anything may capture on
// tunl0, and fast otherwise.
func (a *Agent) watchTaps(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(tapPoll)
		defer tick.Stop()
		var set observer // the datapath last switched, and why
		last := ""
		for {
			if obs := a.observer(); obs != nil {
				why := a.observedBecause()
				if obs != set || why != last {
					if err := obs.SetObserved(why != ""); err != nil {
						a.log.Warn("cannot switch the datapath's mode; retrying", "err", err)
					} else {
						logMode(a, why)
						set, last = obs, why
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// observer is the datapath, when it has a fast mode.
func (a *Agent) observer() observer {
	if b := a.dp.Load(); b != nil {
		if obs, ok := b.Datapath.(observer); ok {
			return obs
		}
	}
	return nil
}

func logMode(a *Agent, why string) {
	if why == "" {
		a.log.Info("datapath mode: fast (nothing captures on tunl0)")
		return
	}
	a.log.Info("datapath mode: observable, every packet crosses tunl0", "why", why)
}

// observedBecause says why tunl0's device passes must stay, or "": a
// packet socket that sees tunl0, or a strict rp_filter on the NIC, which
// would drop what the fast decapsulation hands to the NIC (the inner
// source is routed via tunl0, not the NIC). When it cannot tell, it says
// that: the observable mode is the safe one.
func (a *Agent) observedBecause() string {
	tun, err := a.nl.LinkByName(desired.TunnelDevice)
	if err != nil {
		return fmt.Sprintf("looking up %s: %v", desired.TunnelDevice, err)
	}
	var why string
	err = nsexec.Run(a.ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/packet")
		if err != nil {
			return err
		}
		socks, err := taps.Parse(bytes.NewReader(b))
		if err != nil {
			return err
		}
		if s, ok := taps.Seeing(socks, tun.Attrs().Index); ok {
			where := "tunl0"
			if s.Ifindex == 0 {
				where = "every device"
			}
			why = fmt.Sprintf("a packet socket (inode %d) captures on %s", s.Inode, where)
			return nil
		}
		if rp := strictRPFilter(a.underlayName()); rp != "" {
			why = rp
		}
		return nil
	})
	if err != nil {
		return fmt.Sprintf("reading the node's packet sockets: %v", err)
	}
	return why
}

// strictRPFilter says whether rp_filter is strict on nic (the larger of
// "all" and the device's value counts).
func strictRPFilter(nic string) string {
	if nic == "" {
		return ""
	}
	most := "0"
	for _, dev := range []string{"all", nic} {
		b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv4/conf", dev, "rp_filter"))
		if err != nil {
			return fmt.Sprintf("reading rp_filter of %s: %v", dev, err)
		}
		if v := strings.TrimSpace(string(b)); v > most {
			most = v
		}
	}
	if most == "1" {
		return fmt.Sprintf("rp_filter is strict (1) on %s: set it to 2 (loose) or 0 for the fast mode", nic)
	}
	return ""
}
