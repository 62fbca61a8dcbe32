package tunnel

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// BenchmarkPrograms measures what calyx's tc programs cost a packet inside
// the kernel (BPF_PROG_TEST_RUN: the kernel times the run alone, without
// the syscall around it), on a node with 1,000 remote blocks and 250 peer
// nodes, beside the floor every tc program pays: calyx_decap handed a
// packet that is not IPIP, which returns after one check. The work the
// kernel does after a program returns (the redirect's route and neighbour
// lookups, the NIC's transmit) is not in these figures; the datapath
// part of `make bench` measures it end to end.
//
//	go test -run '^$' -bench Programs -count 5 ./agent/tunnel/
//
// prog-ns/op is the figure to compare; ns/op includes the syscall and the
// kernel's building of a test skb. It needs root.
func BenchmarkPrograms(b *testing.B) {
	objs := loadBenchPrograms(b)
	local, peer := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.62")
	pod, remotePod := netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("192.168.62.66")

	cases := []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
		want uint32
	}{
		{"floor/not-ipip", objs.CalyxDecap, ipv4Frame(pod, remotePod, unix.IPPROTO_UDP, 64), TCActOK},
		{"encap/udp-64", objs.CalyxEncapFast, ipv4Frame(pod, remotePod, unix.IPPROTO_UDP, 64), TCActRedirect},
		{"encap/tcp-1480", objs.CalyxEncapFast, ipv4Frame(pod, remotePod, unix.IPPROTO_TCP, 1480), TCActRedirect},
		{"decap/udp-64", objs.CalyxDecap, ipipFrame(peer, local, ipv4Frame(remotePod, pod, unix.IPPROTO_UDP, 64)), TCActOK},
		{"decap/tcp-1480", objs.CalyxDecap, ipipFrame(peer, local, ipv4Frame(remotePod, pod, unix.IPPROTO_TCP, 1480)), TCActOK},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var inProg time.Duration
			for b.Loop() {
				// One run per call: the kernel reuses the skb between
				// repeats, and a second encapsulation is not the first.
				ret, d, err := c.prog.Benchmark(c.pkt, 1, nil)
				if err != nil {
					b.Fatalf("BPF_PROG_TEST_RUN: %v", err)
				}
				if ret != c.want {
					b.Fatalf("%s returned %d, want %d: the packet took another path than the one measured", c.name, ret, c.want)
				}
				inProg += d
			}
			b.ReportMetric(float64(inProg.Nanoseconds())/float64(b.N), "prog-ns/op")
		})
	}
}

// tc verdicts (linux/pkt_cls.h).
const (
	TCActOK       = 0
	TCActRedirect = 7
)

// loadBenchPrograms loads calyx's programs with maps sized as a node of a
// 250-node cluster fills them: 1,000 remote blocks, 250 node addresses.
func loadBenchPrograms(b *testing.B) *calyxObjects {
	b.Helper()
	spec, err := loadCalyx()
	if err != nil {
		b.Fatal(err)
	}
	var objs calyxObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		b.Fatalf("loading calyx's programs: %v (run as root)", err)
	}
	b.Cleanup(func() { objs.Close() })

	cfg := calyxConfig{UnderlayIp: be32(netip.MustParseAddr("10.0.0.1")), NicIfindex: 1, Tunl0Ifindex: 1, Fast: 1}
	if err := objs.CalyxConfig.Put(uint32(0), cfg); err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		node := netip.AddrFrom4([4]byte{10, 0, byte((i / 4) >> 8), byte(i / 4)})
		block := netip.AddrFrom4([4]byte{192, 168, byte(i >> 2), byte(i&3) << 6})
		if err := objs.RemoteBlocks.Put(calyxLpmKey{Prefixlen: 26, Addr: be32(block)}, be32(node)); err != nil {
			b.Fatal(err)
		}
		if err := objs.NodeIps.Put(be32(node), uint32(1)); err != nil {
			b.Fatal(err)
		}
	}
	return &objs
}

// ipv4Frame is an Ethernet frame carrying an IPv4 packet of size bytes
// (headers included) from src to dst.
func ipv4Frame(src, dst netip.Addr, proto uint8, size int) []byte {
	f := make([]byte, 14+size)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(size))
	binary.BigEndian.PutUint16(ip[6:], 0x4000)
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip[:20]))
	return f
}

// ipipFrame wraps inner's IPv4 packet in an outer header from src to dst.
func ipipFrame(src, dst netip.Addr, inner []byte) []byte {
	f := ipv4Frame(src, dst, unix.IPPROTO_IPIP, len(inner)-14+20)
	copy(f[14+20:], inner[14:])
	return f
}
