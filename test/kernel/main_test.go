// Package kernel runs the kernel's ipip datapath for real, next to the
// eBPF one: a lab with learn-k8s-4, a qemu guest booting Debian's cloud
// kernel (which has the ipip module this machine's lacks), whose
// calyx-agent --ipip-datapath auto picks the kernel's device, and pods on
// it and on the eBPF nodes talking across the wire.
package kernel

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

// shared is the package's lab with the kernel node, up on first use.
var shared = labtest.Shared{Options: lab.Options{KernelNode: true}}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := labtest.Binaries("calyx-kernel-bin-", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shared.Options.BinDir = dir
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

func sharedLab(t *testing.T) *lab.Lab { return shared.Get(t) }

// guestOut runs argv on the kernel node and returns its output.
func guestOut(t *testing.T, l *lab.Lab, argv ...string) string {
	t.Helper()
	out, err := l.KernelNode().Guest().Output(context.Background(), argv...)
	if err != nil {
		t.Fatalf("on %s: %v\n%s", lab.KernelNodeName, err, out)
	}
	return out
}

// waitFor polls fn every 50 ms until it holds, and says how long it took.
func waitFor(t *testing.T, timeout time.Duration, what string, fn func() (bool, string)) time.Duration {
	t.Helper()
	begin := time.Now()
	for {
		ok, last := fn()
		if ok {
			return time.Since(begin)
		}
		if time.Since(begin) > timeout {
			t.Fatalf("no %s after %s; last seen:\n%s", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
