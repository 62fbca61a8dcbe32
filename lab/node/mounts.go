package node

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// overlaid are the host directories a node sees through an overlay: the
// host's files below (programs' configuration, certificates, /opt's and
// /var's contents), the node's own above (fs/etc, fs/opt, fs/var in its
// directory). /run is the node's alone, as on a machine that just booted.
var overlaid = []string{"/etc", "/opt", "/var"}

// mountNode builds the node's view of the file system in the mount
// namespace its init was started in (private: nothing propagates to the
// host). dir is the node's directory on the host; once /run is covered,
// dir may be out of sight, so /run comes last.
func mountNode(dir string) error {
	if err := detachUnder("/run"); err != nil {
		return err
	}
	for _, d := range overlaid {
		opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", d, filepath.Join(dir, "fs", d), filepath.Join(dir, ".work", d))
		if err := unix.Mount("overlay", d, "overlay", 0, opts); err != nil {
			return fmt.Errorf("overlaying %s (%s): %w", d, opts, err)
		}
	}
	// containerd's overlayfs snapshots cannot live on an overlay.
	if err := bind(filepath.Join(dir, "containerd"), "/var/lib/containerd"); err != nil {
		return err
	}
	if err := remountSys(filepath.Join(dir, ".cgroup")); err != nil {
		return err
	}
	// The node's processes see their own PIDs.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	return bind(filepath.Join(dir, "fs", "run"), "/run")
}

// remountSys mounts a sysfs of the node's network namespace on /sys (its
// /sys/class/net lists the node's links), with the host's cgroup tree
// moved back on top through the scratch directory tmp: the kubelet and
// runc need /sys/fs/cgroup.
func remountSys(tmp string) error {
	if err := unix.Mount("/sys/fs/cgroup", tmp, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("keeping /sys/fs/cgroup aside: %w", err)
	}
	if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mounting the node's sysfs: %w", err)
	}
	if err := unix.Mount(tmp, "/sys/fs/cgroup", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("putting /sys/fs/cgroup back: %w", err)
	}
	if err := unix.Unmount(tmp, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting %s: %w", tmp, err)
	}
	return nil
}

func bind(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s on %s: %w", src, dst, err)
	}
	return nil
}

// detachUnder unmounts the copies of the host's mounts below dir (the lab's
// named network namespaces in /run/netns, for one): the node covers dir,
// and a copy would keep what it holds alive for as long as the node runs.
func detachUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	// Deepest first.
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmounting the node's copy of %s: %w", p, err)
		}
	}
	return nil
}
