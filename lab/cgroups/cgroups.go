// Package cgroups gives the lab's nodes cgroups of their own: one tree per
// lab, with a subtree per node for its kubelet's pods and one for its
// runtime, so that several kubelets on one machine never share a cgroup
// root, and `calyx-lab down` can find, end and remove everything the lab
// ran. It works with cgroup v1 (each controller mounted under
// /sys/fs/cgroup) and with a unified cgroup v2 hierarchy.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const mountRoot = "/sys/fs/cgroup"

// Hierarchies are the mount points of the machine's cgroup hierarchies the
// lab uses: every v1 controller's, or the one v2 mount.
func Hierarchies() ([]string, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(mountRoot, &st); err != nil {
		return nil, fmt.Errorf("%s: %w (is cgroupfs mounted?)", mountRoot, err)
	}
	if st.Type == 0x63677270 { // CGROUP2_SUPER_MAGIC: unified
		return []string{mountRoot}, nil
	}
	entries, err := os.ReadDir(mountRoot)
	if err != nil {
		return nil, err
	}
	var hs []string
	for _, e := range entries {
		// The empty v2 mount of a hybrid setup carries no controller;
		// name=systemd does not either, but the kubelet wants its
		// cgroups there too.
		if e.IsDir() && e.Name() != "unified" {
			hs = append(hs, filepath.Join(mountRoot, e.Name()))
		}
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no cgroup controller is mounted under %s", mountRoot)
	}
	return hs, nil
}

// Unified says whether the machine has a unified (v2) hierarchy.
func Unified(hs []string) bool { return len(hs) == 1 && hs[0] == mountRoot }

// Base is where the lab's tree goes. On cgroup v1 it is this process's own
// cgroup in the memory hierarchy, the same path in every hierarchy, so that
// whatever the lab runs stays inside a memory limit its caller is under. On
// v2 it is the root: a cgroup with processes (this one) can have no child
// with controllers.
func Base(hs []string) (string, error) {
	if Unified(hs) {
		return "/", nil
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			return parts[2], nil
		}
	}
	return "/", nil
}

// Create makes the cgroup at path (relative to each hierarchy's root) in
// every hierarchy, with the ancestors it lacks, and returns the directories
// it created, parents first, for Remove. On v1 a new cpuset cgroup gets its
// parent's CPUs and memory nodes: it holds no process until it has them.
func Create(hs []string, path string) ([]string, error) {
	var created []string
	for _, h := range hs {
		dir := h
		for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			err := os.Mkdir(dir, 0o755)
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			if err != nil {
				return created, fmt.Errorf("creating cgroup %s: %w (run as root)", dir, err)
			}
			created = append(created, dir)
			if err := inherit(h, parent, dir); err != nil {
				return created, err
			}
		}
	}
	return created, nil
}

// inherit prepares a new cgroup the way each hierarchy needs: v1 cpuset's
// values copied from the parent, v2's controllers enabled for children.
func inherit(h, parent, dir string) error {
	if Unified([]string{h}) {
		ctrls, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
		if err != nil {
			return err
		}
		var enable []string
		for _, c := range strings.Fields(string(ctrls)) {
			enable = append(enable, "+"+c)
		}
		// Enabling in the parent lets dir have them; errors on a parent
		// that holds processes are left to the kubelet to report.
		os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644)
		return nil
	}
	if filepath.Base(h) != "cpuset" {
		return nil
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
			return fmt.Errorf("setting %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// Join moves process pid (0: the caller) into path in every hierarchy.
func Join(hs []string, path string, pid int) error {
	for _, h := range hs {
		f := filepath.Join(h, path, "cgroup.procs")
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("joining %s: %w", f, err)
		}
	}
	return nil
}

// Remove ends every process in path and the cgroups below it, then removes
// them, deepest first, and the directories of created (Create's result)
// that are then empty. What is already gone is fine.
func Remove(hs []string, path string, created []string) error {
	var errs []error
	// runc also mirrors its cgroups into a hybrid setup's empty v2 mount.
	if unified := filepath.Join(mountRoot, "unified"); !Unified(hs) {
		if _, err := os.Stat(filepath.Join(unified, "cgroup.procs")); err == nil {
			hs = append(slices.Clone(hs), unified)
		}
	}
	for _, h := range hs {
		root := filepath.Join(h, path)
		if err := killAll(root); err != nil {
			errs = append(errs, err)
		}
		var dirs []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := rmdir(dirs[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := rmdir(created[i]); err != nil && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EBUSY) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killAll sends SIGKILL to every process in root and below until none is
// left (a process may fork while it is being killed).
func killAll(root string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pids []int
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
			}
			return nil
		})
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s survive SIGKILL", pids, root)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rmdir(dir string) error {
	// A cgroup whose last process just died may stay busy for a moment.
	var err error
	for range 50 {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", dir, err)
}
