package bench

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/lab"
)

// silentTap is a packet socket on tunl0 of each node whose filter takes
// nothing: the agents see a capture and keep the datapath observable, and
// the measurement pays for the observable mode and the kernel's tap, not
// for copying packets to a reader.
type silentTap struct{ fds []int }

func openSilentTaps(nodes ...string) (*silentTap, error) {
	prog, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	t := &silentTap{}
	for _, n := range nodes {
		err := inNetNS(n, func() error {
			ifi, err := net.InterfaceByName("tunl0")
			if err != nil {
				return err
			}
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
			if err != nil {
				return err
			}
			t.fds = append(t.fds, fd)
			if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}); err != nil {
				return fmt.Errorf("attaching the filter: %w", err)
			}
			return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
		})
		if err == nil {
			err = lab.WaitFastMode(n, false, 5*time.Second)
		}
		if err != nil {
			t.close()
			return nil, fmt.Errorf("a silent capture on tunl0 of %s: %w", n, err)
		}
	}
	return t, nil
}

// close ends the captures; the agents go back to the fast mode.
func (t *silentTap) close(nodes ...string) error {
	if t == nil {
		return nil // never opened
	}
	for _, fd := range t.fds {
		unix.Close(fd)
	}
	t.fds = nil
	var errs []error
	for _, n := range nodes {
		errs = append(errs, lab.WaitFastMode(n, true, 5*time.Second))
	}
	return errors.Join(errs...)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
