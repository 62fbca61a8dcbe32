package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DemoOptions configure the reference scenario.
type DemoOptions struct {
	Lab Options
	// Keep leaves the lab up afterwards.
	Keep bool
	// OutDir receives clientNode.pcap and serverNode.pcap.
	OutDir string
	Out    io.Writer
}

// The reference scenario's names.
const (
	DemoServerPod  = "default/tftp-server"
	DemoClientPod  = "default/tftp-client"
	DemoServerNode = "learn-k8s-2"
	DemoClientNode = "learn-k8s-3"
	DemoFile       = "test.bin"
	DemoFileSize   = 2016 // 3 full 512-byte blocks and one of 480: 4 DATA, 4 ACK
	demoPackets    = 9    // 1 RRQ + 4 DATA + 4 ACK
)

// DemoContent is the file the server serves: bytes that show their offset,
// so a corrupted transfer is easy to spot.
func DemoContent() []byte {
	b := make([]byte, DemoFileSize)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// Demo plays the reference scenario: a TFTP server pod on learn-k8s-2, a
// client pod on learn-k8s-3, the routes of both nodes, and the download
// captured on every hop. It returns an error when anything differs from
// what the architecture promises.
func Demo(ctx context.Context, opts DemoOptions) (err error) {
	out := opts.Out
	if out == nil {
		out = os.Stdout
	}
	opts.Lab.Progress = out
	if opts.OutDir == "" {
		opts.OutDir = "."
	}
	begin := time.Now()
	l, err := Up(ctx, opts.Lab)
	if err != nil {
		return err
	}
	defer func() {
		if opts.Keep && err == nil {
			fmt.Fprintf(out, "\nthe lab stays up (--keep): kubectl --kubeconfig %s get pods -o wide; calyx-lab down when done\n", l.Kubeconfig())
			return
		}
		l.Down()
	}()
	c := l.Client()
	var server, client *PodState
	root := filepath.Join(l.Dir(), "tftp-root")
	err = l.step(fmt.Sprintf("pod %s on %s serving %s (%d bytes) over TFTP", DemoServerPod, DemoServerNode, DemoFile, DemoFileSize), func() error {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, DemoFile), DemoContent(), 0o644); err != nil {
			return err
		}
		server, err = c.AddPod(ctx, PodSpec{Namespace: "default", Name: "tftp-server", Node: DemoServerNode,
			Labels:  map[string]string{"app": "tftp-server"},
			Command: []string{filepath.Join(l.opts.BinDir, "calyx-lab"), "tftp-server", "--root", root, "--listen", ":69"}})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  %s: %s, host side %s\n", DemoServerPod, server.IP, server.HostIface)
		return waitForLog(ctx, server.Log, "serving", 10*time.Second)
	})
	if err != nil {
		return err
	}
	err = l.step(fmt.Sprintf("pod %s on %s", DemoClientPod, DemoClientNode), func() error {
		client, err = c.AddPod(ctx, PodSpec{Namespace: "default", Name: "tftp-client", Node: DemoClientNode, Labels: map[string]string{"app": "tftp-client"}})
		if err == nil {
			fmt.Fprintf(out, "  %s: %s, host side %s\n", DemoClientPod, client.IP, client.HostIface)
		}
		return err
	})
	if err != nil {
		return err
	}

	for _, n := range []struct{ node, role string }{{DemoClientNode, "client"}, {DemoServerNode, "server"}} {
		routes, err := c.Output(ctx, n.node, "ip", "route")
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "\n$ ip route   # on %s, the %s's node\n%s", n.node, n.role, routes)
	}

	// Capture on every hop: the client's veth, tunl0 and NIC on its node,
	// and the same three on the server's node.
	points := []struct{ node, iface, label string }{
		{DemoClientNode, client.HostIface, "client node " + DemoClientNode + " " + client.HostIface},
		{DemoClientNode, "tunl0", "client node " + DemoClientNode + " tunl0"},
		{DemoClientNode, NICName, "client node " + DemoClientNode + " " + NICName},
		{DemoServerNode, NICName, "server node " + DemoServerNode + " " + NICName},
		{DemoServerNode, "tunl0", "server node " + DemoServerNode + " tunl0"},
		{DemoServerNode, server.HostIface, "server node " + DemoServerNode + " " + server.HostIface},
	}
	var caps []*Capture
	for _, p := range points {
		cp, err := StartCapture(p.node, p.iface)
		if err != nil {
			for _, c := range caps {
				c.Stop()
			}
			return err
		}
		caps = append(caps, cp)
	}
	got := filepath.Join(l.Dir(), "downloaded.bin")
	err = l.step(fmt.Sprintf("%s downloads %s from %s:69, captured on %d interfaces", DemoClientPod, DemoFile, server.IP, len(caps)), func() error {
		_, err := c.Output(ctx, DemoClientPod, filepath.Join(l.opts.BinDir, "calyx-lab"), "tftp-get", "--server", server.IP, "--file", DemoFile, "--out", got)
		return err
	})
	// The last ACK is on the wire after the client returns.
	time.Sleep(200 * time.Millisecond)
	captured := make([][]CapturedPacket, len(caps))
	for i, cp := range caps {
		captured[i] = cp.Stop()
	}
	if err != nil {
		return err
	}

	var problems []string
	data, err := os.ReadFile(got)
	if err != nil {
		return err
	}
	if !bytes.Equal(data, DemoContent()) {
		problems = append(problems, fmt.Sprintf("the downloaded file differs from the served one (%d bytes, want %d)", len(data), DemoFileSize))
	} else {
		fmt.Fprintf(out, "\nthe client received all %d bytes, identical to the server's file\n", len(data))
	}

	tftpOnly := func(i int) ([]CapturedPacket, []Dissected) {
		var raw []CapturedPacket
		var ds []Dissected
		for _, p := range captured[i] {
			d := Dissect(caps[i].LinkType(), p.Data)
			if d.TFTP == "" || !((d.Src == client.IP && d.Dst == server.IP) || (d.Src == server.IP && d.Dst == client.IP)) {
				continue
			}
			raw = append(raw, p)
			ds = append(ds, d)
		}
		return raw, ds
	}
	clientNodeIP, serverNodeIP := nodeIPOf(l, DemoClientNode), nodeIPOf(l, DemoServerNode)
	for i, p := range points {
		_, ds := tftpOnly(i)
		fmt.Fprintf(out, "\n%s: %d packets\n", p.label, len(ds))
		for j, d := range ds {
			outer := ""
			if d.OuterSrc != "" {
				outer = fmt.Sprintf("outer %s → %s proto %d, ", d.OuterSrc, d.OuterDst, d.OuterProto)
			}
			fmt.Fprintf(out, "  %2d  %-20s %sinner %s:%d → %s:%d  %s\n", j+1, d.Stack, outer, d.Src, d.SrcPort, d.Dst, d.DstPort, d.TFTP)
		}
		if len(ds) != demoPackets {
			problems = append(problems, fmt.Sprintf("%s: %d TFTP packets, want %d (1 RRQ + 4 DATA + 4 ACK)", p.label, len(ds), demoPackets))
		}
		onNIC := p.iface == NICName
		for _, d := range ds {
			switch {
			case onNIC && d.Stack != "eth:ip:ip:udp:tftp":
				problems = append(problems, fmt.Sprintf("%s: a packet is %s, want eth:ip:ip:udp:tftp", p.label, d.Stack))
			case onNIC && d.Src == client.IP && (d.OuterSrc != clientNodeIP || d.OuterDst != serverNodeIP):
				problems = append(problems, fmt.Sprintf("%s: outer %s → %s, want %s → %s", p.label, d.OuterSrc, d.OuterDst, clientNodeIP, serverNodeIP))
			case !onNIC && d.OuterSrc != "":
				problems = append(problems, fmt.Sprintf("%s: an encapsulated packet (%s) where the inner packets travel", p.label, d.Stack))
			}
		}
	}

	logText, _ := os.ReadFile(server.Log)
	if strings.Contains(string(logText), "RRQ "+DemoFile+" from "+client.IP+":") {
		fmt.Fprintf(out, "\nthe server saw the request come from %s: the client pod's own IP, not its node's\n", client.IP)
	} else {
		problems = append(problems, fmt.Sprintf("the server's log does not show a request from the client pod %s:\n%s", client.IP, logText))
	}

	svcProblems, err := demoService(ctx, l, out, server, client)
	if err != nil {
		return err
	}
	problems = append(problems, svcProblems...)

	for _, w := range []struct {
		file string
		idx  int
	}{{"clientNode.pcap", 2}, {"serverNode.pcap", 3}} {
		raw, _ := tftpOnly(w.idx)
		path := filepath.Join(opts.OutDir, w.file)
		if err := WritePcap(path, caps[w.idx].LinkType(), raw); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s (%s): tcpdump -nr %s\n", path, points[w.idx].label, path)
	}
	if len(problems) > 0 {
		return errors.New("the demo did not go as the architecture says:\n  " + strings.Join(problems, "\n  "))
	}
	fmt.Fprintf(out, "\ndemo complete in %s: every hop as ARCHITECTURE.md describes\n", time.Since(begin).Round(100*time.Millisecond))
	return nil
}

func nodeIPOf(l *Lab, node string) string {
	s, err := ReadState(l.Dir())
	if err != nil {
		return ""
	}
	if n, ok := s.Node(node); ok {
		return n.IP
	}
	return ""
}

// waitForLog waits until the file contains text.
func waitForLog(ctx context.Context, path, text string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(text)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%q did not appear in %s within %s:\n%s", text, path, timeout, b)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
