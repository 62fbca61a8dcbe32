// Package labtest is what the lab's test packages share: the machine has
// one lab slot (the namespace names are fixed), so each package waits for
// it, brings its lab up once for all its tests, and checks at the end that
// `Down` left nothing a user would find.
package labtest

import (
	"context"
	"fmt"
	"io"
	"io/fs"
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

// Namespaces lists the network namespaces of a lab that exist.
func Namespaces() ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w\n%s", err, out)
	}
	var found []string
	for _, l := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(l, " ")
		if strings.HasPrefix(name, "learn-k8s-") || strings.HasPrefix(name, "calyx-lab-") {
			found = append(found, name)
		}
	}
	return found, nil
}

// SlotWait is how long a test package's lab waits for another package's
// (or `calyx-lab up`'s) to go: `go test -p 1` runs one package at a time,
// but a user may run two.
const SlotWait = 10 * time.Minute

// Log is a writer into t's log, a line a write: the lab's progress.
func Log(t testing.TB) io.Writer { return logWriter{t} }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Binaries builds the lab's binaries from this repository into a new
// temporary directory, which the caller removes.
func Binaries(prefix string, progress io.Writer) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if err := lab.BuildBinaries(context.Background(), root, dir, progress); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// Mounts is the host's mount table, as a user would compare it.
func Mounts() string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return string(b)
}

// LeftOver is what a user would find after `calyx-lab down` and should
// not: namespaces, the lab's directory, its processes (every node's init
// and the kernel node's qemu name the directory), cgroups, and mounts that
// were not there before.
func LeftOver(dir, mountsBefore string) []string {
	var left []string
	if ns, err := Namespaces(); err != nil || len(ns) > 0 {
		left = append(left, fmt.Sprintf("network namespaces %v %v", ns, err))
	}
	if _, err := os.Stat(dir); err == nil {
		left = append(left, dir)
	}
	if out, _ := exec.Command("pgrep", "-a", "-f", dir).CombinedOutput(); len(strings.TrimSpace(string(out))) > 0 {
		left = append(left, "processes: "+strings.TrimSpace(string(out)))
	}
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "calyx-lab" {
			left = append(left, "cgroup "+p)
			return filepath.SkipDir
		}
		return nil
	})
	if now := Mounts(); now != mountsBefore {
		left = append(left, fmt.Sprintf("the host's mount table changed:\nbefore:\n%s\nafter:\n%s", mountsBefore, now))
	}
	return left
}

// Shared is a test package's lab: up with the first test that asks for
// it, down in Close, after the last.
type Shared struct {
	// Options are the lab's; Get sets Dir and, when zero, WaitForSlot
	// and Progress.
	Options lab.Options

	once         sync.Once
	l            *lab.Lab
	dir          string
	mountsBefore string
	err          error
}

// Get brings the lab up on its first call, once any other lab has gone,
// and fails t (and every later caller) if it could not.
func (s *Shared) Get(t *testing.T) *lab.Lab {
	t.Helper()
	s.once.Do(func() {
		tmp, err := os.MkdirTemp("", "calyx-test-lab-")
		if err != nil {
			s.err = err
			return
		}
		s.dir, s.mountsBefore = filepath.Join(tmp, "lab"), Mounts()
		opts := s.Options
		opts.Dir = s.dir
		if opts.WaitForSlot == 0 {
			opts.WaitForSlot = SlotWait
		}
		if opts.Progress == nil {
			opts.Progress = Log(t)
		}
		begin := time.Now()
		s.l, s.err = lab.Up(context.Background(), opts)
		t.Logf("the lab came up in %s", time.Since(begin).Round(time.Millisecond))
	})
	if s.err != nil {
		t.Fatalf("bringing the lab up: %v", s.err)
	}
	return s.l
}

// Close takes the lab down, if it came up, and says what it left behind.
func (s *Shared) Close() error {
	if s.dir == "" {
		return nil
	}
	defer os.RemoveAll(filepath.Dir(s.dir))
	if s.l == nil {
		return nil // a failed Up took itself down
	}
	if err := s.l.Down(); err != nil {
		return fmt.Errorf("taking the lab down: %w", err)
	}
	if left := LeftOver(s.dir, s.mountsBefore); len(left) > 0 {
		return fmt.Errorf("the lab left behind:\n  %s", strings.Join(left, "\n  "))
	}
	return nil
}

// InBothModes runs fn as two subtests: "fast", with the eBPF datapath of
// the nodes in its fast mode (nothing captures on tunl0), and
// "observable", with a capture open on each node's tunl0 as tcpdump would
// hold it, so that every packet crosses tunl0. A node on the kernel's
// datapath has only the second mode and is left as it is.
func InBothModes(t *testing.T, nodes []string, fn func(t *testing.T)) {
	for _, observable := range []bool{false, true} {
		t.Run(map[bool]string{false: "fast", true: "observable"}[observable], func(t *testing.T) {
			for _, n := range nodes {
				m, err := lab.AgentMetrics(context.Background(), n)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case !strings.Contains(m, `calyx_datapath_info{mode="ebpf"}`):
				case observable:
					c, err := lab.StartCapture(n, "tunl0") // returns once the agent switched
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.Stop() })
				default:
					if err := lab.WaitFastMode(n, true, 5*time.Second); err != nil {
						t.Fatal(err)
					}
				}
			}
			fn(t)
		})
	}
}
