package lab

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// UDPPacket is an IPv4/UDP packet from src to dst, port to port, with
// checksums and lengths filled in: what a hostile test puts inside an
// outer header, or sends with a source that is not its own.
func UDPPacket(src, dst netip.Addr, port uint16, payload []byte) ([]byte, error) {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(port), DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, udp, gopacket.Payload(payload)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// SendRaw sends payload count times, 10 ms apart, from a raw socket of
// protocol proto in the namespace netnsName (a name or a path):
// IPPROTO_IPIP makes the kernel put an outer IPv4 header (protocol 4) from
// this namespace to dst in front of the inner packet; IPPROTO_RAW sends
// the packet as it is, source included.
func SendRaw(netnsName string, proto int, dst netip.Addr, payload []byte, count int) error {
	var fd int
	err := inNetNS(netnsName, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	if err != nil {
		return fmt.Errorf("opening a raw socket (protocol %d) in %s: %w", proto, netnsName, err)
	}
	defer unix.Close(fd)
	for range count {
		if err := unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("sending from %s to %s: %w", netnsName, dst, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
