package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/agent/taps"
	"github.com/calyx-net/calyx/agent/tunnel"
)

// observer is a datapath with a fast mode that skips tunl0's device
// passes, and with them tunl0's capture point (the eBPF one).
type observer interface{ SetPath(tunnel.Path) error }

// tapPoll is how often the agent looks for packet sockets: a capture on
// tunl0 sees every packet from at most this long after it opens. Each look
// costs the agent ~40 µs of CPU (calyx-bench's scale part: 100 ms polls
// took 0.4-0.5% of a core from an idle agent).
const tapPoll = 250 * time.Millisecond

// watchTaps keeps the datapath observable while anything may capture on
// tunl0, fast on the way out only while rp_filter is strict on the NIC,
// and fast otherwise.
func (a *Agent) watchTaps(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(tapPoll)
		defer tick.Stop()
		var files nodeFiles
		defer files.close()
		var set observer // the datapath last switched, and why
		last := ""
		for {
			if obs := a.observer(); obs != nil {
				path, why := a.pathFor(&files)
				if obs != set || why != last {
					if err := obs.SetPath(path); err != nil {
						a.log.Warn("cannot switch the datapath's mode; retrying", "err", err)
					} else {
						logMode(a, path, why)
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

func logMode(a *Agent, path tunnel.Path, why string) {
	switch path {
	case tunnel.PathFast:
		a.log.Info("datapath mode: fast (nothing captures on tunl0)")
	case tunnel.PathFastOut:
		a.log.Info("datapath mode: fast out only, arriving packets cross tunl0", "why", why)
	default:
		a.log.Info("datapath mode: observable, every packet crosses tunl0", "why", why)
	}
}

// nodeFiles are the /proc files the watcher reads, opened once inside
// the node's namespace: a file of /proc/net or /proc/sys/net answers for
// the namespace it was opened in, and reading it again from offset 0
// regenerates it. (Switching the thread into the namespace on every look
// cost an idle agent 1.3% of a core.)
type nodeFiles struct {
	packet *os.File
	nic    string
	rp     []*os.File // rp_filter of "all" and of nic
}

func (f *nodeFiles) close() {
	for _, file := range append([]*os.File{f.packet}, f.rp...) {
		if file != nil {
			file.Close()
		}
	}
	*f = nodeFiles{}
}

// open opens what is not open yet, in ns; the NIC's rp_filter again when
// the NIC changed.
func (f *nodeFiles) open(ns netns.NsHandle, nic string) error {
	if f.packet != nil && f.nic == nic {
		return nil
	}
	f.close()
	return nsexec.Run(ns, func() error {
		var err error
		if f.packet, err = os.Open("/proc/thread-self/net/packet"); err != nil {
			return err
		}
		f.nic = nic
		if nic == "" {
			return nil
		}
		for _, dev := range []string{"all", nic} {
			rp, err := os.Open(filepath.Join("/proc/sys/net/ipv4/conf", dev, "rp_filter"))
			if err != nil {
				return err
			}
			f.rp = append(f.rp, rp)
		}
		return nil
	})
}

func reread(f *os.File) ([]byte, error) {
	return io.ReadAll(io.NewSectionReader(f, 0, 1<<24))
}

// pathFor says which of tunl0's device passes must stay, and why: every
// one while a packet socket sees tunl0, the arriving packets' while
// rp_filter is strict on the NIC (it would drop what the fast
// decapsulation hands to the NIC: the inner source is routed via tunl0),
// none otherwise. When it cannot tell, it says that: the observable mode is
// the safe one.
func (a *Agent) pathFor(f *nodeFiles) (tunnel.Path, string) {
	nic := a.underlayName()
	if err := f.open(a.ns, nic); err != nil {
		f.close()
		return tunnel.PathObservable, fmt.Sprintf("opening the node's /proc/net/packet and rp_filter: %v", err)
	}
	if why := a.captureOnTunnel(f); why != "" {
		return tunnel.PathObservable, why
	}
	why, err := strictRPFilter(f, nic)
	switch {
	case err != nil:
		return tunnel.PathObservable, err.Error()
	case why != "":
		return tunnel.PathFastOut, why
	}
	return tunnel.PathFast, ""
}

// captureOnTunnel says which packet socket sees tunl0, or "".
func (a *Agent) captureOnTunnel(f *nodeFiles) string {
	b, err := reread(f.packet)
	if err != nil {
		f.close() // opened again at the next look
		return fmt.Sprintf("reading the node's packet sockets: %v", err)
	}
	socks, err := taps.Parse(bytes.NewReader(b))
	if err != nil {
		return err.Error()
	}
	if !slices.ContainsFunc(socks, func(s taps.Socket) bool { return s.Running }) {
		return ""
	}
	tun, err := a.nl.LinkByName(desired.TunnelDevice)
	if err != nil {
		return fmt.Sprintf("looking up %s: %v", desired.TunnelDevice, err)
	}
	if s, ok := taps.Seeing(socks, tun.Attrs().Index); ok {
		where := "tunl0"
		if s.Ifindex == 0 {
			where = "every device"
		}
		return fmt.Sprintf("a packet socket (inode %d) captures on %s", s.Inode, where)
	}
	return ""
}

// strictRPFilter says whether rp_filter is strict on nic (the larger of
// "all" and the device's value counts).
func strictRPFilter(f *nodeFiles, nic string) (string, error) {
	most := "0"
	for _, rp := range f.rp {
		b, err := reread(rp)
		if err != nil {
			f.close() // the NIC went away and came back: opened again at the next look
			return "", fmt.Errorf("reading rp_filter: %w", err)
		}
		if v := strings.TrimSpace(string(b)); v > most {
			most = v
		}
	}
	if most == "1" {
		return fmt.Sprintf("rp_filter is strict (1) on %s: set it to 2 (loose) or 0 for the fast mode both ways", nic), nil
	}
	return "", nil
}
