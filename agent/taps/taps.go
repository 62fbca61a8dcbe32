// Package taps says whether anyone may be capturing tunl0's packets: a
// packet socket (tcpdump, a lab capture) bound to tunl0, or to every
// device. The eBPF datapath keeps tunl0's device passes only while one
// exists. The kernel has no notification for packet sockets, so the agent
// polls /proc/net/packet, which lists those of its network namespace.
package taps

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Socket is one packet socket of /proc/net/packet.
type Socket struct {
	// Ifindex is the device it is bound to; 0 is every device.
	Ifindex int
	// Running says its protocol hook is registered: it receives packets.
	Running bool
	Inode   uint64
}

// Parse reads /proc/net/packet:
//
//	sk               RefCnt Type Proto  Iface R Rmem   User   Inode
//	ffff8f0b4c5e3800 3      3    0003   5     1 0      0      123456
func Parse(r io.Reader) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	for line := 0; sc.Scan(); line++ {
		if line == 0 {
			continue // the header
		}
		f := strings.Fields(sc.Text())
		if len(f) < 9 {
			return nil, fmt.Errorf("/proc/net/packet line %d: %d fields, want 9: %q", line+1, len(f), sc.Text())
		}
		idx, err := strconv.Atoi(f[4])
		if err != nil {
			return nil, fmt.Errorf("/proc/net/packet line %d: interface %q: %w", line+1, f[4], err)
		}
		inode, _ := strconv.ParseUint(f[8], 10, 64)
		out = append(out, Socket{Ifindex: idx, Running: f[5] == "1", Inode: inode})
	}
	return out, sc.Err()
}

// Seeing returns the first running socket that receives what device
// ifindex sends and receives, and whether there is one.
func Seeing(sockets []Socket, ifindex int) (Socket, bool) {
	for _, s := range sockets {
		if s.Running && (s.Ifindex == 0 || s.Ifindex == ifindex) {
			return s, true
		}
	}
	return Socket{}, false
}
