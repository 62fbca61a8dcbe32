package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Capture records every packet on one interface of one namespace through an
// AF_PACKET socket, as tcpdump would, with no tcpdump needed.
type Capture struct {
	NetNS, Iface string
	linkType     layers.LinkType

	fd      int
	stop    atomic.Bool
	mu      sync.Mutex
	packets []CapturedPacket
	done    chan struct{}
}

// CapturedPacket is one frame as captured.
type CapturedPacket struct {
	Info gopacket.CaptureInfo
	Data []byte
}

// StartCapture opens the socket inside the namespace and starts reading.
func StartCapture(netnsName, iface string) (*Capture, error) {
	c := &Capture{NetNS: netnsName, Iface: iface, done: make(chan struct{})}
	err := inNetNS(netnsName, func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		// Ethernet devices hand over frames; tunnels like the kernel's
		// ipip hand over bare IP packets.
		c.linkType = layers.LinkTypeEthernet
		if l.Attrs().EncapType != "ether" {
			c.linkType = layers.LinkTypeRaw
		}
		c.fd, err = openPacketSocket(l.Attrs().Index)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("capturing on %s in %s: %w", iface, netnsName, err)
	}
	go c.read()
	if iface == "tunl0" && strings.HasPrefix(netnsName, "learn-k8s-") {
		if err := WaitFastMode(netnsName, false, 5*time.Second); err != nil {
			c.Stop()
			return nil, fmt.Errorf("capturing on tunl0 of %s: %w", netnsName, err)
		}
	}
	return c, nil
}

// WaitFastMode waits until the agent on node reports its datapath in the
// fast mode (fast) or in the observable one, where every packet crosses
// tunl0. The agent looks for packet sockets on tunl0 every 250 ms and is
// observable while there is one: a capture on tunl0 must wait for it, or
// miss what the fast mode carries past tunl0. The kernel's ipip datapath
// has no fast mode: it is always observable.
func WaitFastMode(node string, fast bool, within time.Duration) error {
	want := map[bool]string{true: "fast", false: "observable"}[fast]
	return waitGauge(node, "calyx_datapath_fast_mode", fast, want+" mode", within)
}

// WaitFastReceive waits until the agent on node reports arriving packets
// skipping tunl0 too (fast), or crossing it: in the fast mode, a strict
// rp_filter on the NIC keeps them on tunl0.
func WaitFastReceive(node string, fast bool, within time.Duration) error {
	want := map[bool]string{true: "fast mode both ways", false: "observable mode for arriving packets"}[fast]
	return waitGauge(node, "calyx_datapath_fast_receive", fast, want, within)
}

// waitGauge waits until the agent on node reports gauge at 1 (on) or not.
func waitGauge(node, gauge string, on bool, want string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	last := "no answer"
	for {
		m, err := AgentMetrics(ctx, node)
		switch {
		case err != nil:
			last = err.Error()
		case !strings.Contains(m, "calyx_datapath_info"):
			last = "no datapath yet"
		case slices.Contains(strings.Split(m, "\n"), gauge+" 1") == on:
			return nil
		default:
			last = "another mode"
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent did not put the datapath in the %s within %s (%s): is calyx-node running on %s?", want, within, last, node)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// openPacketSocket opens an AF_PACKET socket that sees every frame of the
// interface, both directions, as tcpdump's does. A receive timeout lets the
// reader notice Stop: closing a socket does not wake a blocked recvfrom.
func openPacketSocket(ifindex int) (int, error) {
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("opening an AF_PACKET socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for !c.stop.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		data := append([]byte(nil), buf[:n]...)
		ci := gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: n, Length: n}
		c.mu.Lock()
		c.packets = append(c.packets, CapturedPacket{Info: ci, Data: data})
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns what it saw.
func (c *Capture) Stop() []CapturedPacket {
	c.stop.Store(true)
	<-c.done
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.packets
}

// LinkType is the capture's pcap link type.
func (c *Capture) LinkType() layers.LinkType { return c.linkType }

// WritePcap writes packets as a classic pcap file that tcpdump and
// Wireshark read.
func WritePcap(path string, lt layers.LinkType, packets []CapturedPacket) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65536, lt); err != nil {
		f.Close()
		return err
	}
	for _, p := range packets {
		ci := p.Info
		ci.CaptureLength = len(p.Data)
		if err := w.WritePacket(ci, p.Data); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// Dissected is what a person reads off a packet: its protocol stack as
// Wireshark names it (eth:ip:ip:udp:tftp), the outer and inner addresses,
// and the TFTP operation.
type Dissected struct {
	Stack        string
	OuterSrc     string // set when IP-in-IP
	OuterDst     string
	Src, Dst     string // the innermost IP header
	SrcPort      int
	DstPort      int
	UDP          bool
	TFTP         string // RRQ file, DATA n (len), ACK n, ERROR …
	OuterProto   int
	InnerPayload []byte
	// Outer and Inner are the header fields a tunnel sets or copies, of
	// the outer (when IP-in-IP) and the innermost IP header.
	Outer, Inner IPFields
}

// IPFields are what an IP-in-IP encapsulation decides for the outer
// header: the TTL, Don't Fragment, and the TOS byte (DSCP and ECN).
type IPFields struct {
	TTL uint8
	DF  bool
	TOS uint8
}

func ipFields(ip *layers.IPv4) IPFields {
	return IPFields{TTL: ip.TTL, DF: ip.Flags&layers.IPv4DontFragment != 0, TOS: ip.TOS}
}

// Dissect decodes a captured packet.
func Dissect(lt layers.LinkType, data []byte) Dissected {
	var first gopacket.Decoder = layers.LayerTypeEthernet
	if lt == layers.LinkTypeRaw {
		first = layers.LayerTypeIPv4
	}
	pkt := gopacket.NewPacket(data, first, gopacket.Default)
	var d Dissected
	var stack []string
	var ips []*layers.IPv4
	for _, l := range pkt.Layers() {
		switch v := l.(type) {
		case *layers.Ethernet:
			stack = append(stack, "eth")
		case *layers.IPv4:
			stack = append(stack, "ip")
			ips = append(ips, v)
		case *layers.UDP:
			stack = append(stack, "udp")
			d.UDP = true
			d.SrcPort, d.DstPort = int(v.SrcPort), int(v.DstPort)
			d.InnerPayload = v.Payload
		case *layers.TCP:
			stack = append(stack, "tcp")
		case *layers.ICMPv4:
			stack = append(stack, "icmp")
		}
	}
	if len(ips) > 0 {
		inner := ips[len(ips)-1]
		d.Src, d.Dst = inner.SrcIP.String(), inner.DstIP.String()
		d.Inner = ipFields(inner)
		if len(ips) > 1 {
			d.OuterSrc, d.OuterDst = ips[0].SrcIP.String(), ips[0].DstIP.String()
			d.OuterProto = int(ips[0].Protocol)
			d.Outer = ipFields(ips[0])
		}
	}
	if d.UDP {
		if op := tftpOp(d.InnerPayload); op != "" {
			stack = append(stack, "tftp")
			d.TFTP = op
		}
	}
	d.Stack = strings.Join(stack, ":")
	return d
}

// tftpOp names a TFTP message (RFC 1350), or "" when the payload is not one.
func tftpOp(b []byte) string {
	if len(b) < 4 {
		return ""
	}
	op := int(b[0])<<8 | int(b[1])
	block := int(b[2])<<8 | int(b[3])
	switch op {
	case 1, 2:
		name, _, _ := strings.Cut(string(b[2:]), "\x00")
		if name == "" {
			return ""
		}
		return map[int]string{1: "RRQ", 2: "WRQ"}[op] + " " + name
	case 3:
		return fmt.Sprintf("DATA block %d (%d bytes)", block, len(b)-4)
	case 4:
		if len(b) != 4 {
			return ""
		}
		return fmt.Sprintf("ACK block %d", block)
	case 5:
		return fmt.Sprintf("ERROR %d", block)
	case 6:
		return "OACK"
	}
	return ""
}

// ReadPcap reads a pcap file (a guest's capture) into its link type and
// packets.
func ReadPcap(b []byte) (layers.LinkType, []CapturedPacket, error) {
	r, err := pcapgo.NewReader(bytes.NewReader(b))
	if err != nil {
		return 0, nil, fmt.Errorf("reading a pcap: %w", err)
	}
	var out []CapturedPacket
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return r.LinkType(), out, nil
		}
		if err != nil {
			return 0, nil, fmt.Errorf("reading a pcap: %w", err)
		}
		out = append(out, CapturedPacket{Info: ci, Data: data})
	}
}
