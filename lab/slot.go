package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// SlotFile marks the machine's one lab slot as taken: the lab's namespaces
// have fixed names, so two labs cannot run at once. The lab's supervisor
// holds an flock on it. The kernel drops an flock when its holder dies,
// however it dies, so a lab found while the slot is free is one nobody
// runs any more (a test binary killed at its timeout, a machine restored
// from a snapshot), and Up takes it down before it starts.
const SlotFile = "/run/calyx-lab.slot"

// slotHolder is what the holder writes into SlotFile: who, and where its
// lab keeps its files.
type slotHolder struct {
	PID int
	Dir string
}

func readHolder(f *os.File) slotHolder {
	b, _ := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	pid, dir, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	n, _ := strconv.Atoi(pid)
	return slotHolder{PID: n, Dir: dir}
}

// takeSlot waits up to wait for the slot, takes it for a lab in dir, and
// takes down what a lab that is gone left behind.
func takeSlot(ctx context.Context, dir string, wait time.Duration, progress io.Writer) (*os.File, error) {
	f, err := os.OpenFile(SlotFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the lab slot: %w", err)
	}
	if err := waitLock(ctx, f, wait, progress); err != nil {
		f.Close()
		return nil, err
	}
	if err := takeDownAbandoned(readHolder(f), dir, progress); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(fmt.Sprintf("%d %s\n", os.Getpid(), dir)), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", SlotFile, err)
	}
	return f, nil
}

func waitLock(ctx context.Context, f *os.File, wait time.Duration, progress io.Writer) error {
	deadline := time.Now().Add(wait)
	for said := false; ; said = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("locking %s: %w", SlotFile, err)
		}
		h := readHolder(f)
		if time.Now().After(deadline) {
			return fmt.Errorf("another lab is up on this machine (process %d, files in %s): use it, or run `calyx-lab down --dir %s` first", h.PID, h.Dir, h.Dir)
		}
		if !said {
			fmt.Fprintf(progress, "• waiting up to %s for the lab of process %d (%s) to go …\n", wait.Round(time.Second), h.PID, h.Dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// takeDownAbandoned removes a lab whose supervisor is gone: the previous
// holder's, one in dir, and namespaces with the lab's names from anywhere.
func takeDownAbandoned(prev slotHolder, dir string, progress io.Writer) error {
	var dirs []string
	for _, d := range []string{prev.Dir, dir} {
		if _, err := ReadState(d); d != "" && err == nil {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 && !namespacesExist() {
		return nil
	}
	fmt.Fprintf(progress, "• taking down a lab whose process is gone (%d, files in %v) …\n", prev.PID, dirs)
	var errs []error
	for _, d := range dirs {
		errs = append(errs, down(d, nil)) // the fixed names too
	}
	if len(dirs) == 0 {
		errs = deleteNamespaces(&State{})
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("taking down the abandoned lab: %w", err)
	}
	return nil
}

// namespacesExist says whether a namespace with one of the lab's fixed
// names is there.
func namespacesExist() bool {
	for _, n := range labNamespaceNames(&State{}) {
		if _, err := os.Stat(nsexec.NamedPath(n)); err == nil {
			return true
		}
	}
	return false
}

// ours says whether pid still runs a process of the lab in dir: each one's
// command line names the directory. A PID from the state file may belong
// to another process by now (the lab's own died long ago, or the machine
// was restored from a snapshot), and that one must not be killed.
func ours(pid int, dir string) bool {
	if pid <= 0 || dir == "" {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte(dir))
}
