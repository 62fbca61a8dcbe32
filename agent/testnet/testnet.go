// Package testnet builds the agent tests' networks: named network
// namespaces standing for nodes, joined by a bridge that lives in a
// namespace of its own, so nothing touches the host's network; pods wired
// to their nodes as the CNI plugin wires them. Everything is removed when
// the test ends. It is the one underlay builder of agent/'s tests (the
// agent's, the firewall's, the routes', the tunnel datapath's), and it
// switches threads into namespaces only through agent/nsexec.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// NS is a named network namespace.
type NS struct {
	Name   string
	Handle netns.NsHandle
}

func suffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a namespace named prefix-<random> with lo up; it is deleted
// when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	name := prefix + "-" + suffix()
	run(t, "ip", "netns", "add", name)
	h, err := netns.GetFromName(name)
	if err != nil {
		run(t, "ip", "netns", "del", name)
		t.Fatalf("opening netns %s: %v", name, err)
	}
	n := &NS{Name: name, Handle: h}
	t.Cleanup(func() {
		h.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", name, err, out)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// IP runs `ip -n <ns> args...` and returns its output; it fails the test
// when ip fails.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a command inside the namespace.
func (n *NS) Exec(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Command is a command that runs inside the namespace, for the caller to
// start and wait for (a server in the background).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Netlink is a netlink handle in the namespace, closed when the test ends.
func (n *NS) Netlink(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(n.Handle)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Routes is the lines of `ip route` with "proto calyx" in the namespace,
// printed by the real ip with protosDir (where the agent wrote calyx.conf)
// mounted over /etc/iproute2/rt_protos.d in a private mount namespace: ip
// names the protocol, and the test writes nothing to the host's /etc.
func (n *NS) Routes(t testing.TB, protosDir string) []string {
	t.Helper()
	script := fmt.Sprintf("mount --bind %q /etc/iproute2/rt_protos.d && exec ip -n %q route show table main", protosDir, n.Name)
	out := run(t, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	var calyx []string
	for _, l := range Lines(out) {
		if strings.Contains(l, " proto calyx") {
			calyx = append(calyx, l)
		}
	}
	return calyx
}

// Lines splits command output into trimmed, non-empty lines.
func Lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Underlay is the nodes' L2 network: a bridge in a namespace of its own.
type Underlay struct {
	NS *NS
	n  int
}

// AddGateway gives the bridge the address cidr (10.10.100.1/24), so that
// the bridge's namespace answers as the underlay's router: real nodes have
// a default route, and proxy ARP for a pod's 169.254.1.1 needs one.
func (u *Underlay) AddGateway(t testing.TB, cidr string) {
	t.Helper()
	u.NS.IP(t, "addr", "add", cidr, "dev", "br0")
}

// NewUnderlay creates the bridge namespace.
func NewUnderlay(t testing.TB) *Underlay {
	t.Helper()
	u := &Underlay{NS: New(t, "cx-ul")}
	u.NS.IP(t, "link", "add", "br0", "type", "bridge")
	u.NS.IP(t, "link", "set", "br0", "up")
	return u
}

// AddNode creates a node namespace whose NIC ens160, with address cidr
// (10.10.100.208/24), is plugged into the bridge.
func (u *Underlay) AddNode(t testing.TB, prefix, cidr string) *NS {
	t.Helper()
	node := New(t, prefix)
	u.n++
	port := fmt.Sprintf("p%d-%s", u.n, suffix())
	u.NS.IP(t, "link", "add", port, "type", "veth", "peer", "name", "ens160", "netns", node.Name)
	u.NS.IP(t, "link", "set", port, "master", "br0", "up")
	node.IP(t, "addr", "add", cidr, "dev", "ens160")
	node.IP(t, "link", "set", "ens160", "up")
	return node
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Sysctl sets a sysctl inside the namespace (key in /proc/sys path form,
// net/ipv4/ip_forward). A sysctl under /proc/sys/net belongs to the
// namespace of the thread that opens it.
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	n.Do(t, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value+"\n"), 0o644)
	})
}

// Do runs f on a thread inside the namespace. Sockets f opens stay in the
// namespace and may be used from anywhere afterwards.
func (n *NS) Do(t testing.TB, f func() error) {
	t.Helper()
	if err := InNS(n.Handle, f); err != nil {
		t.Fatalf("in netns %s: %v", n.Name, err)
	}
}

// InNS runs f on an OS thread switched into ns and back (nsexec.Run).
func InNS(ns netns.NsHandle, f func() error) error { return nsexec.Run(ns, f) }

// Pod is a pod namespace wired to its node the way the CNI plugin does it.
type Pod struct {
	NS   *NS
	IP   string
	Host string // the host-side cali interface
}

// PodOption changes how AddPod wires a pod.
type PodOption func(*podOptions)

type podOptions struct{ mtu int }

// WithMTU gives both ends of the pod's veth the MTU mtu, as the CNI plugin
// does with the tunnel's MTU (the underlay's minus 20).
func WithMTU(mtu int) PodOption { return func(o *podOptions) { o.mtu = mtu } }

// AddPod wires a pod namespace to node as the CNI plugin does: veth eth0
// with ip/32 and a default route via 169.254.1.1, answered by proxy ARP on
// the host side caliXXXX, which gets the /32 route to the pod.
func AddPod(t testing.TB, node *NS, ip string, opts ...PodOption) *Pod {
	t.Helper()
	var o podOptions
	for _, opt := range opts {
		opt(&o)
	}
	pod := New(t, "cx-pod")
	host := "cali" + suffix() + "0"
	veth := []string{"link", "add", host}
	if o.mtu > 0 {
		veth = append(veth, "mtu", strconv.Itoa(o.mtu))
	}
	veth = append(veth, "type", "veth", "peer", "name", "eth0")
	if o.mtu > 0 {
		veth = append(veth, "mtu", strconv.Itoa(o.mtu))
	}
	node.IP(t, append(veth, "netns", pod.Name)...)
	node.Sysctl(t, "net/ipv4/conf/"+host+"/proxy_arp", "1")
	node.Sysctl(t, "net/ipv4/neigh/"+host+"/proxy_delay", "0")
	node.Sysctl(t, "net/ipv4/conf/"+host+"/forwarding", "1")
	node.IP(t, "link", "set", host, "address", "ee:ee:ee:ee:ee:ee", "up")
	node.IP(t, "route", "add", ip+"/32", "dev", host, "scope", "link")
	pod.IP(t, "addr", "add", ip+"/32", "dev", "eth0")
	pod.IP(t, "link", "set", "eth0", "up")
	pod.IP(t, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
	pod.IP(t, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
	return &Pod{NS: pod, IP: ip, Host: host}
}

// Ping sends count ICMP echo requests from the namespace to dst, one at a
// time, each answered within a second or lost, and returns how many were
// answered: ping, without the binary.
func (n *NS) Ping(t testing.TB, dst netip.Addr, count int) int {
	t.Helper()
	replies := 0
	n.Do(t, func() error {
		conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return fmt.Errorf("ICMP socket: %w", err)
		}
		defer conn.Close()
		id := os.Getpid() & 0xffff
		buf := make([]byte, 1500)
		for seq := 1; seq <= count; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("calyx")}}
			b, err := msg.Marshal(nil)
			if err != nil {
				return err
			}
			if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
				return fmt.Errorf("sending echo %d: %w", seq, err)
			}
			conn.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, from, err := conn.ReadFrom(buf)
				if err != nil {
					break // lost
				}
				m, err := icmp.ParseMessage(1, buf[:n])
				if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
					continue
				}
				if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && from.String() == dst.String() {
					replies++
					break
				}
			}
		}
		return nil
	})
	return replies
}

// Capture is a packet capture on one device, as tcpdump -i would take it:
// an AF_PACKET socket in the device's namespace, opened at once so that
// nothing sent afterwards is missed.
type Capture struct {
	fd int
}

// Listen starts capturing on dev in the namespace; the capture is closed
// when the test ends.
func (n *NS) Listen(t testing.TB, dev string) *Capture {
	t.Helper()
	c := &Capture{fd: n.PacketSocket(t, dev)}
	t.Cleanup(c.Close)
	return c
}

// Close ends the capture, as tcpdump exiting does; again is a no-op.
func (c *Capture) Close() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// PacketSocket is an AF_PACKET socket bound to dev in the namespace, as
// tcpdump -i opens one: every frame dev sends or receives, from now on.
// The caller closes it.
func (n *NS) PacketSocket(t testing.TB, dev string) int {
	t.Helper()
	var fd int
	n.Do(t, func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding the packet socket to %s: %w", dev, err)
		}
		return nil
	})
	return fd
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Next is the IPv4 header and payload of the next IPv4 packet in the
// capture for which keep is true, or nil when none comes within d.
func (c *Capture) Next(d time.Duration, keep func(ip []byte) bool) []byte {
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return nil
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		// Ethernet devices hand over the frame with its 14-byte header;
		// layer-3 devices (tunl0 of some kinds) hand over the packet.
		pkt := buf[:n]
		if ll.Hatype == unix.ARPHRD_ETHER {
			if len(pkt) < 14 {
				continue
			}
			pkt = pkt[14:]
		}
		if len(pkt) < 20 || pkt[0]>>4 != 4 {
			continue
		}
		if keep(pkt) {
			return append([]byte(nil), pkt...)
		}
	}
}

// Forward listens on listen (127.0.0.1:6443) inside the namespace and
// relays each connection to target, dialled from the test process's own
// namespace: a process in the namespace reaches the test's API server
// without any route or device between the namespaces.
func (n *NS) Forward(t testing.TB, listen, target string) {
	t.Helper()
	var ln net.Listener
	n.Do(t, func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(2)
			relay := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				dst.(*net.TCPConn).CloseWrite()
			}
			go relay(out, in)
			go func() { relay(in, out); in.Close(); out.Close() }()
		}
	}()
}
