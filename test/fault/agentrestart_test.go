package fault

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/tunnel"
	"github.com/calyx-net/calyx/lab"
)

// TestAgentRestartKeepsStream kills each node's agent (SIGKILL, as the OOM
// killer or a crash would; the kubelet restarts the container) while a pod
// streams to a pod on the other node. The datapath lives in the kernel (tc BPF programs,
// their maps, routes, nftables) and must carry the stream on its own: the
// stream completes, in order, and the longest pause in what the receiver
// gets while an agent is gone is measured and reported.
func TestAgentRestartKeepsStream(t *testing.T) {
	const (
		recordSize = 4096 // bytes, one every millisecond: 4 MB/s
		port       = "5201"
		// A lost segment costs at least TCP's minimum retransmission
		// timeout (200 ms); pauses shorter than this are scheduling noise
		// on a busy machine, not lost packets.
		maxPause = 500 * time.Millisecond
	)
	l := sharedLab(t)
	ctx := context.Background()
	src := addPod(t, l, "stream", "sender", node2)
	dst := addPod(t, l, "stream", "receiver", node3)

	var ln net.Listener
	err := lab.InNetNS(dst.NetNS, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(dst.IP, port))
		return err
	})
	if err != nil {
		t.Fatalf("listening in %s: %v", dst.Key(), err)
	}
	defer ln.Close()
	var conn net.Conn
	err = lab.InNetNS(src.NetNS, func() (err error) {
		conn, err = net.DialTimeout("tcp4", net.JoinHostPort(dst.IP, port), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connecting from %s (%s) to %s (%s): %v", src.Key(), src.IP, dst.Key(), dst.IP, err)
	}
	defer conn.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	// The receiver timestamps every record and checks the sequence.
	var arrivals []time.Time
	recvDone := make(chan error, 1)
	go func() {
		rec := make([]byte, recordSize)
		for next := uint64(0); ; next++ {
			if _, err := io.ReadFull(server, rec); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				recvDone <- err
				return
			}
			if seq := binary.BigEndian.Uint64(rec); seq != next {
				recvDone <- fmt.Errorf("record %d arrived where %d was expected", seq, next)
				return
			}
			arrivals = append(arrivals, time.Now())
		}
	}()
	stop := make(chan struct{})
	var sent int
	sendDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		rec := make([]byte, recordSize)
		for seq := uint64(0); ; seq++ {
			select {
			case <-stop:
				sendDone <- conn.(*net.TCPConn).CloseWrite()
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(rec, seq)
			conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(rec); err != nil {
				sendDone <- fmt.Errorf("sending record %d: %w", seq, err)
				return
			}
			sent++
		}
	}()

	// Retransmissions say whether the network lost anything, whatever
	// the pauses; the datapath's own drop counters say whether it did.
	retrans := func() uint32 {
		var info *unix.TCPInfo
		raw, err := conn.(*net.TCPConn).SyscallConn()
		if err == nil {
			raw.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO) })
		}
		if err != nil {
			t.Fatalf("reading the sender's TCP_INFO: %v", err)
		}
		return info.Total_retrans
	}
	drops := func() float64 {
		var sum float64
		for _, node := range []string{node2, node3} {
			for _, dir := range []string{"tx", "rx"} {
				sum += metric(t, node, "calyx_datapath_drops_total", `direction="`+dir+`"`)
			}
			sum += metric(t, node, "calyx_datapath_rx_errors_total")
		}
		return sum
	}
	dropsBefore := drops()

	type window struct {
		name       string
		begin, end time.Time
		absent     time.Duration
		retrans    uint32
	}
	streamStart := time.Now()
	r0 := retrans()
	time.Sleep(time.Second)
	windows := []window{{name: "baseline, every agent up", begin: streamStart.Add(200 * time.Millisecond), end: time.Now(), retrans: retrans() - r0}}
	for _, node := range []string{node2, node3} {
		datapathBefore := datapathText(t, l, node)
		r0 := retrans()
		killed := time.Now()
		absent, err := l.Client().KillAgent(ctx, node)
		if err != nil {
			close(stop)
			t.Fatalf("killing the agent on %s: %v", node, err)
		}
		// The new agent adopts what the old one left: the same programs
		// (their IDs), the same routes.
		if diff := cmp.Diff(datapathBefore, datapathText(t, l, node)); diff != "" {
			t.Errorf("the restarted agent on %s changed the datapath (-before +after):\n%s", node, diff)
		} else {
			t.Logf("%s: the restarted agent kept the tc programs (same IDs) and routes:\n%s", node, datapathBefore["tc filter show dev "+lab.NICName+" ingress"])
		}
		time.Sleep(time.Second)
		windows = append(windows, window{name: "agent on " + node + " killed, restarted by the kubelet, ready, +1 s", begin: killed, end: time.Now(), absent: absent, retrans: retrans() - r0})
	}
	close(stop)
	if err := <-sendDone; err != nil {
		t.Fatalf("the sender in %s: %v", src.Key(), err)
	}
	select {
	case err := <-recvDone:
		if err != nil {
			t.Fatalf("the receiver in %s: %v", dst.Key(), err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the stream did not complete: %d of %d records received after 30 s", len(arrivals), sent)
	}
	if len(arrivals) != sent {
		t.Fatalf("the receiver got %d records, the sender sent %d", len(arrivals), sent)
	}
	t.Logf("stream %s (%s) → %s (%s) on the other node: %d records of %d bytes (%.1f MB) in %s, complete and in order",
		src.Key(), src.IP, dst.Key(), dst.IP, sent, recordSize, float64(sent*recordSize)/1e6, time.Since(streamStart).Round(time.Millisecond))

	if d := drops() - dropsBefore; d != 0 {
		t.Errorf("the datapath counted %.0f drops or errors on the two nodes during the restarts, want none", d)
	}
	for i, w := range windows {
		gap := longestGap(arrivals, w.begin, w.end)
		if w.absent > 0 {
			t.Logf("%s: agent absent for %s; longest pause in received data %s; TCP retransmissions %d", w.name, w.absent.Round(time.Millisecond), gap.Round(100*time.Microsecond), w.retrans)
		} else {
			t.Logf("%s: longest pause in received data %s; TCP retransmissions %d", w.name, gap.Round(100*time.Microsecond), w.retrans)
		}
		if i > 0 && gap > maxPause {
			t.Errorf("%s: the stream paused for %s (longer than %s: packets were lost or held while the agent was away)", w.name, gap.Round(time.Millisecond), maxPause)
		}
	}
}

// longestGap is the longest time between consecutive arrivals, among those
// whose second falls in [begin, end]; a window with no arrival at all is a
// pause as long as the window.
func longestGap(arrivals []time.Time, begin, end time.Time) time.Duration {
	var longest time.Duration
	any := false
	for i := 1; i < len(arrivals); i++ {
		if arrivals[i].Before(begin) || arrivals[i].After(end) {
			continue
		}
		any = true
		if g := arrivals[i].Sub(arrivals[i-1]); g > longest {
			longest = g
		}
	}
	if !any {
		return end.Sub(begin)
	}
	return longest
}

// datapathText is the node's datapath as `tc filter show` and `ip route`
// print it: tc BPF programs with their IDs on both hooks, and calyx's routes.
func datapathText(t *testing.T, l *lab.Lab, node string) map[string]string {
	t.Helper()
	c := l.Client()
	out := map[string]string{}
	for _, argv := range [][]string{
		{"tc", "filter", "show", "dev", lab.NICName, "ingress"},
		{"tc", "filter", "show", "dev", tunnel.EncapDeviceName, "ingress"},
		{"ip", "route", "show", "proto", "calyx"},
	} {
		text, err := c.Output(context.Background(), node, argv...)
		if err != nil && argv[0] == "ip" {
			t.Fatal(err)
		}
		out[strings.Join(argv, " ")] = text // tc fails where the kernel datapath has no tunl0-encap
	}
	return out
}
