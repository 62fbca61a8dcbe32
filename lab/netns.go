package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/nsexec"
)

// netnsDir is where iproute2 keeps named namespaces: `ip netns list` shows
// the lab's there, and `ip netns exec` works on them.
const netnsDir = "/var/run/netns"

// netnsPath is the path of the named namespace; an absolute path (a pod's
// namespace on its node, /proc/PID/root/run/netns/cni-…) is taken as is.
func netnsPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(netnsDir, name)
}

// ensureNetNS creates the named namespace unless it exists, with lo up.
func ensureNetNS(name string) error {
	if _, err := os.Stat(netnsPath(name)); err == nil {
		return nil
	}
	// NewNamed switches the calling thread into the new namespace; do it
	// on a locked thread that is restored afterwards.
	var created netns.NsHandle
	err := inHostThread(func() error {
		var err error
		created, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		return fmt.Errorf("creating network namespace %s (root needed): %w", name, err)
	}
	created.Close()
	return inNetNS(name, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
}

// deleteNetNS removes the named namespace; a missing one is fine.
func deleteNetNS(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting network namespace %s: %w", name, err)
	}
	return nil
}

// inNetNS runs fn on a thread switched into the named namespace.
func inNetNS(name string, fn func() error) error {
	return nsexec.RunAt(netnsPath(name), fn)
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
	f, err := os.Open(netnsPath(name))
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	return f, nil
}
