package nsexec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NamedDir is where iproute2 keeps named namespaces: `ip netns list` shows
// those made here, and `ip netns exec` works on them.
const NamedDir = "/var/run/netns"

// NamedPath is the path of the named namespace; an absolute path (a pod's
// namespace on a lab node, /proc/PID/root/run/netns/cni-…) is taken as is.
func NamedPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(NamedDir, name)
}

// CreateNamed creates the named namespace with lo up, as `ip netns add`
// and `ip link set lo up` would, in-process (a millisecond instead of two
// `ip` runs). One that exists is left as it is.
func CreateNamed(name string) error {
	if _, err := os.Stat(NamedPath(name)); err == nil {
		return nil
	}
	var created netns.NsHandle
	err := OnThread(func() error {
		var err error
		created, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		return fmt.Errorf("creating network namespace %s (root needed): %w", name, err)
	}
	defer created.Close()
	return Run(created, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
}

// DeleteNamed removes the named namespace; a missing one is fine, and so
// is a name that no longer holds a namespace (a plain file, as a reboot
// or a restored snapshot leaves one where /run is on disk).
func DeleteNamed(name string) error {
	err := netns.DeleteNamed(name)
	if errors.Is(err, unix.EINVAL) {
		err = os.Remove(NamedPath(name))
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting network namespace %s: %w", name, err)
	}
	return nil
}
