package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/testnet"
)

// What a user checks with ping, nc and tcpdump, done from Go so the tests
// need no binaries: ICMP echo, TCP, UDP, raw IPIP, and AF_PACKET captures.

// ipv4Packet is the part of a captured IPv4 header the tests look at.
type ipv4Packet struct {
	Src, Dst netip.Addr
	Proto    uint8
	TTL      uint8
	DF       bool
	TOS      uint8
	CsumOK   bool
	Inner    *ipv4Packet // for protocol 4
}

func (p ipv4Packet) String() string {
	s := fmt.Sprintf("%v > %v proto %d ttl %d df %v", p.Src, p.Dst, p.Proto, p.TTL, p.DF)
	if p.Inner != nil {
		s += " [" + p.Inner.String() + "]"
	}
	return s
}

func parseIPv4(b []byte) (ipv4Packet, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return ipv4Packet{}, false
	}
	ihl := int(b[0]&0xf) * 4
	if ihl < 20 || len(b) < ihl {
		return ipv4Packet{}, false
	}
	p := ipv4Packet{
		Src:    netip.AddrFrom4([4]byte(b[12:16])),
		Dst:    netip.AddrFrom4([4]byte(b[16:20])),
		Proto:  b[9],
		TTL:    b[8],
		TOS:    b[1],
		DF:     binary.BigEndian.Uint16(b[6:8])&0x4000 != 0,
		CsumOK: onesSum(b[:ihl]) == 0xffff,
	}
	if p.Proto == 4 {
		if in, ok := parseIPv4(b[ihl:]); ok {
			p.Inner = &in
		}
	}
	return p, true
}

func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = (sum & 0xffff) + sum>>16
	}
	return uint16(sum)
}

// frame is one captured Ethernet frame carrying IPv4.
type frame struct {
	Outgoing bool
	Len      int // on the wire, Ethernet header included
	IP       ipv4Packet
}

// capture is an AF_PACKET socket on one device, like tcpdump -i dev.
type capture struct {
	fd      int
	stopped atomic.Bool
	mu      sync.Mutex
	frames  []frame
	done    chan struct{}
}

func startCapture(tb testing.TB, ns *testnet.NS, dev string) *capture {
	tb.Helper()
	c := &capture{done: make(chan struct{}), fd: ns.PacketSocket(tb, dev)}
	// Reads wake up to see whether the capture was stopped.
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(c.fd)
		tb.Fatalf("capture on %s: %v", dev, err)
	}
	go c.loop(c.fd)
	tb.Cleanup(func() { c.stop() })
	return c
}

func (c *capture) loop(fd int) {
	defer close(c.done)
	buf := make([]byte, 256) // headers are enough; the rest is truncated
	for !c.stopped.Load() {
		n, from, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || n < 14 || binary.BigEndian.Uint16(buf[12:14]) != unix.ETH_P_IP {
			continue
		}
		wire := n
		n = min(n, len(buf))
		p, ok := parseIPv4(buf[14:n])
		if !ok {
			continue
		}
		c.mu.Lock()
		c.frames = append(c.frames, frame{Outgoing: ll.Pkttype == unix.PACKET_OUTGOING, Len: wire, IP: p})
		c.mu.Unlock()
	}
}

// stop ends the capture and returns what it saw.
func (c *capture) stop() []frame {
	if !c.stopped.Swap(true) {
		<-c.done
		unix.Close(c.fd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]frame(nil), c.frames...)
}

func (c *capture) snapshot() []frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]frame(nil), c.frames...)
}

// listenTCP opens a listener in ns; each connection gets its peer's address
// written back, then everything it sends is counted and the count returned.
func listenTCP(tb testing.TB, ns *testnet.NS, addr netip.AddrPort) net.Listener {
	tb.Helper()
	var ln net.Listener
	ns.Do(tb, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				fmt.Fprintf(conn, "%s\n", conn.RemoteAddr().(*net.TCPAddr).IP)
				n, _ := io.Copy(io.Discard, conn)
				fmt.Fprintf(conn, "%d\n", n)
			}()
		}
	}()
	return ln
}

// dialTCP connects from ns; the socket stays in ns afterwards.
func dialTCP(tb testing.TB, ns *testnet.NS, addr netip.AddrPort) *net.TCPConn {
	tb.Helper()
	var conn net.Conn
	ns.Do(tb, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", addr.String(), 5*time.Second)
		return err
	})
	tb.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

func listenUDP(tb testing.TB, ns *testnet.NS, addr netip.AddrPort) *net.UDPConn {
	tb.Helper()
	var conn *net.UDPConn
	ns.Do(tb, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// udpPacket builds an IPv4/UDP packet by hand, for IPIP that the sender's
// kernel does not encapsulate itself. tos is the inner TOS byte.
func udpPacket(src, dst netip.AddrPort, tos byte, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0] = 0x45
	b[1] = tos
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[6:], 0x4000)
	b[8] = 64
	b[9] = unix.IPPROTO_UDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^onesSum(b[:20]))
	binary.BigEndian.PutUint16(b[20:], src.Port())
	binary.BigEndian.PutUint16(b[22:], dst.Port())
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload))) // checksum 0: none, valid for IPv4
	copy(b[28:], payload)
	return b
}

// outerHeader is what the sender's kernel puts around a raw IPIP payload.
type outerHeader struct {
	TOS byte
	// Fragment lets the kernel fragment an outer packet larger than the
	// MTU instead of refusing it.
	Fragment bool
}

// sendIPIP sends inner to dst from ns as IP protocol 4: ns's kernel adds
// the outer header with ns's own address as the source.
func sendIPIP(tb testing.TB, ns *testnet.NS, dst netip.Addr, outer outerHeader, inner []byte, count int) {
	tb.Helper()
	ns.Do(tb, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_IPIP)
		if err != nil {
			return fmt.Errorf("raw IPIP socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TOS, int(outer.TOS)); err != nil {
			return err
		}
		if outer.Fragment {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT); err != nil {
				return err
			}
		}
		for range count {
			if err := unix.Sendto(fd, inner, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
				return fmt.Errorf("sending IPIP to %v: %w", dst, err)
			}
		}
		return nil
	})
}

// readUDPWithTOS reads one datagram and the TOS byte it arrived with.
func readUDPWithTOS(conn *net.UDPConn, timeout time.Duration) (payload []byte, from netip.AddrPort, tos byte, err error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, from, 0, err
	}
	raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1) })
	if err != nil {
		return nil, from, 0, err
	}
	conn.SetReadDeadline(time.Now().Add(timeout))
	buf, oob := make([]byte, 4096), make([]byte, 128)
	n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		return nil, from, 0, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, from, 0, err
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			tos = m.Data[0]
		}
	}
	return buf[:n], from, tos, nil
}
