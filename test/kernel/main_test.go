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
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab"
)

var (
	binDir string
	shared struct {
		once sync.Once
		l    *lab.Lab
		dir  string
		err  error
	}
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "calyx-kernel-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	_, file, _, _ := runtime.Caller(0)
	if err := lab.BuildBinaries(context.Background(), filepath.Join(filepath.Dir(file), "..", ".."), dir, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	code := m.Run()
	if shared.l != nil {
		if err := shared.l.Down(); err != nil {
			fmt.Fprintf(os.Stderr, "taking the lab down: %v\n", err)
			code = 1
		}
		if left := leftOver(shared.dir); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "the lab left behind:\n  %s\n", strings.Join(left, "\n  "))
			code = 1
		}
	}
	if shared.dir != "" {
		// Also after a failed Up, which took itself down.
		os.RemoveAll(filepath.Dir(shared.dir))
	}
	return code
}

// sharedLab is the package's lab with the kernel node, up on first use.
func sharedLab(t *testing.T) *lab.Lab {
	t.Helper()
	shared.once.Do(func() {
		waitNoLab(t, 5*time.Minute)
		tmp, err := os.MkdirTemp("", "calyx-kernel-lab-")
		if err != nil {
			shared.err = err
			return
		}
		shared.dir = filepath.Join(tmp, "lab")
		begin := time.Now()
		shared.l, shared.err = lab.Up(context.Background(), lab.Options{Dir: shared.dir, BinDir: binDir, KernelNode: true, Progress: testWriter{t}})
		t.Logf("the lab with %s came up in %s", lab.KernelNodeName, time.Since(begin).Round(time.Millisecond))
	})
	if shared.err != nil {
		t.Fatalf("bringing the lab up: %v", shared.err)
	}
	return shared.l
}

// leftOver is what `calyx-lab down` must not leave: namespaces, qemu, the
// directory.
func leftOver(dir string) []string {
	var left []string
	if ns := labNamespaces(); len(ns) > 0 {
		left = append(left, fmt.Sprintf("network namespaces %v", ns))
	}
	if out, _ := exec.Command("pgrep", "-a", "qemu-system").CombinedOutput(); strings.Contains(string(out), dir) {
		left = append(left, "qemu: "+strings.TrimSpace(string(out)))
	}
	if out, _ := exec.Command("pgrep", "-a", "-f", dir).CombinedOutput(); len(strings.TrimSpace(string(out))) > 0 {
		left = append(left, "processes: "+strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(dir); err == nil {
		left = append(left, dir)
	}
	return left
}

func labNamespaces() []string {
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	var found []string
	for _, l := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(l, " ")
		if strings.HasPrefix(name, "learn-k8s-") || strings.HasPrefix(name, "calyx-lab-") {
			found = append(found, name)
		}
	}
	return found
}

func waitNoLab(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(labNamespaces()) > 0 && time.Now().Before(deadline) {
		time.Sleep(3 * time.Second)
	}
	if ns := labNamespaces(); len(ns) > 0 {
		t.Fatalf("a lab is up (%v): run `calyx-lab down`", ns)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

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
