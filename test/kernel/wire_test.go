package kernel

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/calyx-net/calyx/lab"
)

// pods are a pod on the kernel node and one on an eBPF node.
type pods struct {
	kernel *lab.KernelPod
	ebpf   *lab.PodState
}

func twoPods(t *testing.T, l *lab.Lab, name string) pods {
	t.Helper()
	ctx := context.Background()
	k, err := l.KernelNode().AddPod(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.KernelNode().DelPod(context.Background(), name) })
	e, err := l.Client().AddPod(ctx, lab.PodSpec{Namespace: "kernel", Name: name, Node: "learn-k8s-2"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Client().DelPod(context.Background(), e.Key()) })
	return pods{k, e}
}

// A pod on the kernel node and a pod on an eBPF node: ping, 10 MB of TCP
// each way with its checksum, and the largest packet that fits.
func TestAcrossDatapaths(t *testing.T) {
	l := sharedLab(t)
	p := twoPods(t, l, "wire")
	ctx := context.Background()
	inKernelPod := func(argv ...string) []string { return append([]string{"ip", "netns", "exec", p.kernel.Name}, argv...) }
	t.Run("ping both ways", func(t *testing.T) {
		guestOut(t, l, inKernelPod("ping", "-c", "3", "-W", "2", p.ebpf.IP)...)
		if out, err := l.Client().Exec(ctx, p.ebpf.Key(), "ping", "-c", "3", "-W", "2", p.kernel.IP); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	})
	t.Run("10 MB of TCP from the kernel node's pod, checksummed", func(t *testing.T) { tcpToEBPF(t, l, p) })
	t.Run("10 MB of TCP to the kernel node's pod, checksummed", func(t *testing.T) { tcpToKernel(t, l, p) })
	t.Run("MTU: the underlay's less 20 passes both ways, one byte more does not", func(t *testing.T) {
		const fits = 1480 - 28 // tunl0's MTU less the ICMP and IP headers
		guestOut(t, l, inKernelPod("ping", "-M", "do", "-s", fmt.Sprint(fits), "-c", "2", "-W", "2", p.ebpf.IP)...)
		if out, err := l.Client().Output(ctx, p.ebpf.Key(), "ping", "-M", "do", "-s", fmt.Sprint(fits), "-c", "2", "-W", "2", p.kernel.IP); err != nil {
			t.Errorf("%d bytes from the eBPF node's pod: %v\n%s", fits, err, out)
		}
		res, err := l.KernelNode().Guest().Exec(ctx, nil, inKernelPod("ping", "-M", "do", "-s", fmt.Sprint(fits+1), "-c", "1", "-W", "2", p.ebpf.IP)...)
		if err != nil {
			t.Fatal(err)
		}
		msg := string(res.Stdout) + string(res.Stderr)
		if res.Code == 0 || !strings.Contains(msg, "mtu=1480") {
			t.Errorf("%d bytes with DF from the kernel node's pod: exit %d, want refused with mtu=1480:\n%s", fits+1, res.Code, msg)
		}
		t.Logf("one byte more: %s", strings.TrimSpace(msg))
		out, err := l.Client().Output(ctx, p.ebpf.Key(), "ping", "-M", "do", "-s", fmt.Sprint(fits+1), "-c", "1", "-W", "2", p.kernel.IP)
		if err == nil || !strings.Contains(out, "mtu=1480") {
			t.Errorf("%d bytes with DF from the eBPF node's pod: %v, want refused with mtu=1480:\n%s", fits+1, err, out)
		}
	})
}

// tcpToEBPF sends 10 MB from the kernel node's pod (busybox nc) to a Go
// listener in the eBPF node's pod, and compares the checksums.
func tcpToEBPF(t *testing.T, l *lab.Lab, p pods) {
	const size = 10 << 20
	var ln net.Listener
	if err := lab.InNetNS(p.ebpf.NetNS, func() (err error) { ln, err = net.Listen("tcp4", p.ebpf.IP+":5001"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.CopyN(h, c, size)
		got <- fmt.Sprintf("%x %d %v", h.Sum(nil), n, err)
	}()
	out := guestOut(t, l, "sh", "-c", fmt.Sprintf(
		"dd if=/dev/urandom of=/tmp/tx bs=1M count=10 2>/dev/null; sha256sum /tmp/tx; /usr/sbin/ip netns exec %s nc %s 5001 < /tmp/tx", p.kernel.Name, p.ebpf.IP))
	sum := strings.Fields(out)[0]
	select {
	case r := <-got:
		if want := fmt.Sprintf("%s %d <nil>", sum, size); r != want {
			t.Errorf("the eBPF node's pod got %q, want %q", r, want)
		}
	case <-time.After(time.Minute):
		t.Fatal("the eBPF node's pod got nothing in a minute")
	}
}

// tcpToKernel sends 10 MB from the eBPF node's pod to busybox nc in the
// kernel node's pod, and compares the checksums.
func tcpToKernel(t *testing.T, l *lab.Lab, p pods) {
	const size = 10 << 20
	guestOut(t, l, "sh", "-c", fmt.Sprintf("rm -f /tmp/rx; /usr/sbin/ip netns exec %s sh -c 'nc -l -p 5002 > /tmp/rx' > /dev/null 2>&1 &", p.kernel.Name))
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	var c net.Conn
	err := lab.InNetNS(p.ebpf.NetNS, func() error {
		var err error
		for range 50 { // nc may not listen yet
			if c, err = net.DialTimeout("tcp4", p.kernel.IP+":5002", time.Second); err == nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, time.Minute, "10 MB in the kernel node's pod", func() (bool, string) {
		out, _ := l.KernelNode().Guest().Output(context.Background(), "stat", "-c", "%s", "/tmp/rx")
		return strings.TrimSpace(out) == fmt.Sprint(size), out
	})
	if got := strings.Fields(guestOut(t, l, "sha256sum", "/tmp/rx"))[0]; got != hex.EncodeToString(want[:]) {
		t.Errorf("the kernel node's pod got %s, sent %x", got, want)
	}
}

// The article's TFTP download across the two datapaths, both ways,
// captured on the kernel node's tunl0 (a raw IP device: ip:udp:tftp) and
// NIC (eth:ip:ip:udp:tftp), and on the eBPF node's NIC, where each side's
// outer headers are compared: TTL inherited from the inner packet, DF
// copied, the TOS's ECN copied (the kernel's "ttl inherit nopmtudisc").
func TestTFTPAcrossDatapaths(t *testing.T) {
	l := sharedLab(t)
	p := twoPods(t, l, "tftp")
	ctx := context.Background()
	server, err := l.Client().AddTFTPServer(ctx, lab.PodSpec{Namespace: "kernel", Name: "tftpd", Node: "learn-k8s-2"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Client().DelPod(context.Background(), server.Key())
	caps := captureAround(t, l, func() {
		guestOut(t, l, "ip", "netns", "exec", p.kernel.Name, "tftp", "-g", "-r", lab.DemoFile, "-l", "/tmp/tftp.bin", server.IP)
	})
	if sum := strings.Fields(guestOut(t, l, "sha256sum", "/tmp/tftp.bin"))[0]; sum != fmt.Sprintf("%x", sha256.Sum256(lab.DemoContent())) {
		t.Errorf("the kernel node's pod downloaded a file that differs from the served one")
	}
	checkCaptures(t, caps, p.kernel.IP, server.IP)

	// The other way: tftpd-hpa in the kernel node's pod, busybox's tftp
	// in the eBPF node's.
	guestOut(t, l, "ip", "netns", "exec", p.kernel.Name, "in.tftpd", "--listen", "--address", p.kernel.IP+":69", "--secure", "--refuse", "tsize", "--user", "nobody", "/srv/tftp")
	got, err := l.Client().Exec(ctx, p.ebpf.Key(), "tftp", "-g", "-r", lab.DemoFile, "-l", "-", p.kernel.IP)
	if err != nil || got != string(lab.DemoContent()) {
		t.Errorf("the eBPF node's pod downloading from the kernel node's: %v, %d bytes", err, len(got))
	}
}

// captures are the three capture points' TFTP packets.
type captures map[string][]lab.Dissected

// captureAround captures on the kernel node's tunl0 and ens160 and on
// learn-k8s-2's ens160 while fn runs.
func captureAround(t *testing.T, l *lab.Lab, fn func()) captures {
	t.Helper()
	ebpfNIC, err := lab.StartCapture("learn-k8s-2", lab.NICName)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	raw := map[string][]byte{}
	var mu sync.Mutex
	for _, iface := range []string{"tunl0", lab.NICName} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := l.KernelNode().Guest().Capture(context.Background(), iface, 6*time.Second)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			raw[iface] = b
			mu.Unlock()
		}()
	}
	time.Sleep(time.Second) // the guest's sockets open
	fn()
	wg.Wait()
	out := captures{"learn-k8s-2 " + lab.NICName: dissectTFTP(ebpfNIC.LinkType(), ebpfNIC.Stop())}
	for iface, b := range raw {
		lt, pkts, err := lab.ReadPcap(b)
		if err != nil {
			t.Fatal(err)
		}
		out[lab.KernelNodeName+" "+iface] = dissectTFTP(lt, pkts)
	}
	return out
}

func dissectTFTP(lt layers.LinkType, pkts []lab.CapturedPacket) []lab.Dissected {
	var out []lab.Dissected
	for _, p := range pkts {
		if d := lab.Dissect(lt, p.Data); d.TFTP != "" {
			out = append(out, d)
		}
	}
	return out
}

// checkCaptures checks the nine packets at each point, and each side's
// outer header against its inner one.
func checkCaptures(t *testing.T, caps captures, kernelPod, server string) {
	t.Helper()
	for point, ds := range caps {
		var mine []lab.Dissected
		for _, d := range ds {
			if (d.Src == kernelPod && d.Dst == server) || (d.Src == server && d.Dst == kernelPod) {
				mine = append(mine, d)
			}
		}
		want := "eth:ip:ip:udp:tftp"
		if strings.HasSuffix(point, "tunl0") {
			want = "ip:udp:tftp" // the kernel's ipip device has no link layer
		}
		if len(mine) != 9 {
			t.Errorf("%s: %d TFTP packets, want 9 (1 RRQ + 4 DATA + 4 ACK)", point, len(mine))
		}
		for _, d := range mine {
			if d.Stack != want {
				t.Errorf("%s: a packet is %s, want %s", point, d.Stack, want)
			}
		}
		if strings.HasPrefix(point, "learn-k8s-2") {
			checkOuter(t, mine)
		}
	}
}

// checkOuter compares each side's encapsulation on the wire: the kernel
// node's (outer source .210) and the eBPF node's (.208) follow the same
// rules, the kernel's ipip "ttl inherit nopmtudisc" with tos 0.
func checkOuter(t *testing.T, ds []lab.Dissected) {
	t.Helper()
	seen := map[string]bool{}
	for _, d := range ds {
		side := map[string]string{kernelIP: "kernel", "10.10.100.208": "eBPF"}[d.OuterSrc]
		if side == "" {
			t.Errorf("an outer header from %s, want one of the two nodes", d.OuterSrc)
			continue
		}
		if !seen[side] {
			seen[side] = true
			t.Logf("%s encapsulation: outer TTL %d DF %v TOS %#02x, inner TTL %d DF %v TOS %#02x", side,
				d.Outer.TTL, d.Outer.DF, d.Outer.TOS, d.Inner.TTL, d.Inner.DF, d.Inner.TOS)
		}
		if d.Outer.TTL != d.Inner.TTL || d.Outer.DF != d.Inner.DF || d.Outer.TOS != d.Inner.TOS&3 {
			t.Errorf("%s side: outer TTL %d DF %v TOS %#02x for inner TTL %d DF %v TOS %#02x: want the TTL inherited, DF copied, the ECN copied",
				side, d.Outer.TTL, d.Outer.DF, d.Outer.TOS, d.Inner.TTL, d.Inner.DF, d.Inner.TOS)
		}
	}
	if !seen["kernel"] || !seen["eBPF"] {
		t.Errorf("outer headers seen from %v, want both sides", seen)
	}
}

// The TOS byte across the wire: pings marked DSCP 46 with ECT(1) each way;
// both sides' outer headers carry what the kernel's ipip (tos 0) does: the
// inner packet's ECN and no DSCP.
func TestTOSAcrossDatapaths(t *testing.T) {
	l := sharedLab(t)
	p := twoPods(t, l, "tos")
	ctx := context.Background()
	nic, err := lab.StartCapture("learn-k8s-2", lab.NICName)
	if err != nil {
		t.Fatal(err)
	}
	guestOut(t, l, "ip", "netns", "exec", p.kernel.Name, "ping", "-Q", "0xb9", "-c", "2", "-W", "2", p.ebpf.IP)
	if out, err := l.Client().Output(ctx, p.ebpf.Key(), "ping", "-Q", "0xb9", "-c", "2", "-W", "2", p.kernel.IP); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
	pkts := nic.Stop()
	var ds []lab.Dissected
	for _, pk := range pkts {
		d := lab.Dissect(nic.LinkType(), pk.Data)
		if d.OuterProto == 4 && d.Inner.TOS == 0xb9 {
			ds = append(ds, d)
		}
	}
	if len(ds) < 4 {
		t.Fatalf("%d marked packets on learn-k8s-2's %s, want the 2 requests each way", len(ds), lab.NICName)
	}
	checkOuter(t, ds)
}
