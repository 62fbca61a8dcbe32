package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// capturePoint is an interface the demo captures on.
type capturePoint struct {
	netns, iface, label string
	// nic says the packets there are IP-in-IP between the nodes.
	nic bool
}

// capturesOf is what a capture point recorded, with its TFTP packets
// between the two pods dissected.
type capturesOf struct {
	point capturePoint
	cap   *Capture
	raw   []CapturedPacket
	tftp  []Dissected
}

// points are the article's capture points, from the client pod to the
// server pod: each pod's eth0, each node's cali… veth, tunl0 and NIC.
func (d *demo) points() []capturePoint {
	cl, sv := "client node "+DemoClientNode+" ", "server node "+DemoServerNode+" "
	return []capturePoint{
		{d.client.NetNS, "eth0", "client pod " + DemoClientPod + " eth0", false},
		{DemoClientNode, d.client.HostIface, cl + d.client.HostIface, false},
		{DemoClientNode, "tunl0", cl + "tunl0", false},
		{DemoClientNode, NICName, cl + NICName, true},
		{DemoServerNode, NICName, sv + NICName, true},
		{DemoServerNode, "tunl0", sv + "tunl0", false},
		{DemoServerNode, d.server.HostIface, sv + d.server.HostIface, false},
		{d.server.NetNS, "eth0", "server pod " + DemoServerPod + " eth0", false},
	}
}

// download runs the client's download with `kubectl exec` while capturing
// on every point, and checks the file, every hop's packets and the
// server's log.
func (d *demo) download(ctx context.Context) ([]*capturesOf, error) {
	var caps []*capturesOf
	for _, p := range d.points() {
		cp, err := StartCapture(p.netns, p.iface)
		if err != nil {
			for _, c := range caps {
				c.cap.Stop()
			}
			return nil, err
		}
		caps = append(caps, &capturesOf{point: p, cap: cp})
	}
	var got string
	argv := []string{"tftp", "-g", "-r", DemoFile, "-l", "-", d.server.IP}
	err := d.l.step(fmt.Sprintf("kubectl exec tftp-client -- %s   (captured on %d interfaces)", strings.Join(argv, " "), len(caps)), func() error {
		var err error
		got, err = d.c.Exec(ctx, DemoClientPod, argv...)
		return err
	})
	// The last ACK is on the wire after the client returns.
	time.Sleep(200 * time.Millisecond)
	for _, c := range caps {
		c.raw, c.tftp = tftpBetween(c.cap, c.cap.Stop(), d.client.IP, d.server.IP)
	}
	if err != nil {
		return nil, err
	}
	if !bytes.Equal([]byte(got), DemoContent()) {
		d.problem("the downloaded file differs from the served one (%d bytes, want %d)", len(got), DemoFileSize)
	} else {
		fmt.Fprintf(d.out, "\nthe client received all %d bytes, identical to the server's file\n", len(got))
	}
	for _, c := range caps {
		d.checkPoint(c)
	}
	return caps, d.checkServerLog(ctx)
}

// tftpBetween keeps the TFTP packets between the two pods.
func tftpBetween(c *Capture, packets []CapturedPacket, a, b string) ([]CapturedPacket, []Dissected) {
	var raw []CapturedPacket
	var ds []Dissected
	for _, p := range packets {
		d := Dissect(c.LinkType(), p.Data)
		if d.TFTP == "" || !((d.Src == a && d.Dst == b) || (d.Src == b && d.Dst == a)) {
			continue
		}
		raw = append(raw, p)
		ds = append(ds, d)
	}
	return raw, ds
}

// checkPoint prints one capture point's packets and checks them: nine,
// IP-in-IP between the nodes on the NICs, the pods' own packets elsewhere.
func (d *demo) checkPoint(c *capturesOf) {
	p := c.point
	fmt.Fprintf(d.out, "\n%s: %d packets\n", p.label, len(c.tftp))
	for j, t := range c.tftp {
		outer := ""
		if t.OuterSrc != "" {
			outer = fmt.Sprintf("outer %s → %s proto %d, ", t.OuterSrc, t.OuterDst, t.OuterProto)
		}
		fmt.Fprintf(d.out, "  %2d  %-20s %sinner %s:%d → %s:%d  %s\n", j+1, t.Stack, outer, t.Src, t.SrcPort, t.Dst, t.DstPort, t.TFTP)
	}
	if len(c.tftp) != demoPackets {
		d.problem("%s: %d TFTP packets, want %d (1 RRQ + 4 DATA + 4 ACK)", p.label, len(c.tftp), demoPackets)
	}
	clientNodeIP, serverNodeIP := d.l.nodeIP(DemoClientNode), d.l.nodeIP(DemoServerNode)
	for _, t := range c.tftp {
		switch {
		case p.nic && t.Stack != "eth:ip:ip:udp:tftp":
			d.problem("%s: a packet is %s, want eth:ip:ip:udp:tftp", p.label, t.Stack)
		case p.nic && t.Src == d.client.IP && (t.OuterSrc != clientNodeIP || t.OuterDst != serverNodeIP):
			d.problem("%s: outer %s → %s, want %s → %s", p.label, t.OuterSrc, t.OuterDst, clientNodeIP, serverNodeIP)
		case !p.nic && t.OuterSrc != "":
			d.problem("%s: an encapsulated packet (%s) where the inner packets travel", p.label, t.Stack)
		}
	}
}

// checkServerLog reads the server's log with `kubectl logs`: tftpd-hpa
// names the address the request came from, which must be the client pod's.
func (d *demo) checkServerLog(ctx context.Context) error {
	logs, err := d.c.Kubectl(ctx, nil, "logs", "deployment/tftp-server")
	if err != nil {
		return err
	}
	want := "RRQ from " + d.client.IP + " filename " + DemoFile
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, want) {
			fmt.Fprintf(d.out, "\n$ kubectl logs deployment/tftp-server\n%s\nthe server saw the request come from %s: the client pod's own IP, not its node's\n", strings.TrimSpace(line), d.client.IP)
			return nil
		}
	}
	d.problem("the server's log (kubectl logs deployment/tftp-server) has no %q:\n%s", want, logs)
	return nil
}

// writePcaps writes what the client's and the server's NICs saw.
func (d *demo) writePcaps(caps []*capturesOf, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Fprintln(d.out)
	for _, c := range caps {
		if !c.point.nic {
			continue
		}
		name := "serverNode.pcap"
		if strings.HasPrefix(c.point.label, "client") {
			name = "clientNode.pcap"
		}
		path := filepath.Join(dir, name)
		if err := WritePcap(path, c.cap.LinkType(), c.raw); err != nil {
			return err
		}
		fmt.Fprintf(d.out, "wrote %s (%s): tcpdump -nr %s\n", path, c.point.label, path)
	}
	return nil
}

// nodeIP is the node's underlay address.
func (l *Lab) nodeIP(node string) string {
	for i, n := range l.opts.nodeNames() {
		if n == node {
			return nodeIP(i).String()
		}
	}
	return ""
}
