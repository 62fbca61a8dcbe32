package lab

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// The slot: a second lab is refused and told whose the first is; once the
// first one's holder is gone, the next Up takes down what it left (its
// processes, a namespace name with nothing behind it, its directory) and
// kills no process that merely reuses a PID from its state file.
func TestSlot(t *testing.T) {
	ctx := context.Background()
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	first, err := takeSlot(ctx, dirA, 10*time.Minute, io.Discard) // waits out a real lab
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = takeSlot(ctx, dirB, 0, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), dirA) {
		t.Fatalf("second takeSlot: %v, want another lab's process %d and %s", err, os.Getpid(), dirA)
	}

	// What the first lab leaves when its process dies.
	labProc := start(t, "sh", "-c", "sleep 600; :", dirA)
	stranger := start(t, "sleep", "600")
	if err := updateState(dirA, func(s *State) error {
		s.Nodes = []NodeState{{Name: "learn-k8s-2", InitPID: labProc.Process.Pid}}
		s.KubePIDs = []int{stranger.Process.Pid}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stale := NodeName(14)
	if err := os.MkdirAll(nsexec.NamedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nsexec.NamedPath(stale), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(nsexec.NamedPath(stale))
	first.Close() // as the kernel does when the holder dies

	second, err := takeSlot(ctx, dirB, 0, io.Discard)
	if err != nil {
		t.Fatalf("takeSlot after the holder went: %v", err)
	}
	defer second.Close()
	if err := waitExit(labProc); err != nil {
		t.Errorf("the abandoned lab's process: %v", err)
	}
	if err := stranger.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process that only reuses a PID of the state file was killed: %v", err)
	}
	for _, p := range []string{nsexec.NamedPath(stale), dirA} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
	if h := readHolder(second); h.PID != os.Getpid() || h.Dir != dirB {
		t.Errorf("slot holder %+v, want process %d in %s", h, os.Getpid(), dirB)
	}
}

func start(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func waitExit(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return context.DeadlineExceeded
	}
}
