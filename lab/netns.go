package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// inNetNS runs fn on a thread switched into the named namespace.
func inNetNS(name string, fn func() error) error {
	return nsexec.RunAt(nsexec.NamedPath(name), fn)
}

// inHostThread runs fn on a locked thread and puts the thread back into the
// caller's namespace afterwards, for calls that switch namespaces.
func inHostThread(fn func() error) error {
	return nsexec.OnThread(fn)
}

// sysctl writes a sysctl of the calling thread's network namespace.
func sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", filepath.FromSlash(key))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", key, value, err)
	}
	return nil
}

var errExist = syscall.EEXIST

// openNetNS opens the named namespace's handle.
func openNetNS(name string) (*os.File, error) {
	f, err := os.Open(nsexec.NamedPath(name))
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	return f, nil
}
