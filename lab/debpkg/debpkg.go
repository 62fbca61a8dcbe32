// Package debpkg provides programs from Debian's packages without installing
// them: the package of the version apt would install is downloaded with
// `apt-get download` and unpacked with `dpkg-deb -x` into the cache, once.
// The lab runs Debian's containerd 1.6 and runc and builds images from
// busybox-static this way, so that a developer's machine gets no daemon, no
// service and no file outside the cache.
package debpkg

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab/kubebin"
)

// Ensure returns the directory that holds the files of Debian package pkg
// (its ./usr/bin, ./bin, …), as the version apt would install now. The
// first call downloads and unpacks it; later calls find it in the cache.
func Ensure(ctx context.Context, pkg string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	version, err := candidate(ctx, pkg)
	if err != nil {
		return "", err
	}
	cache, err := kubebin.CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "debian", pkg+"_"+strings.ReplaceAll(version, ":", "%3a"))
	complete := func() bool {
		_, err := os.Stat(filepath.Join(dir, ".complete"))
		return err == nil
	}
	err = kubebin.FillOnce(filepath.Join(filepath.Dir(dir), ".lock"), complete, func() error {
		begin := time.Now()
		fmt.Fprintf(progress, "fetching Debian's %s %s (apt-get download; unpacked into %s, nothing installed)\n", pkg, version, dir)
		if err := fetch(ctx, pkg, version, dir); err != nil {
			return err
		}
		fmt.Fprintf(progress, "  %s %s ready in %s\n", pkg, version, time.Since(begin).Round(time.Millisecond))
		return nil
	})
	if err != nil {
		return "", err
	}
	return dir, nil
}

// candidate is the version of pkg that apt would install, updating apt's
// package lists once if it knows none (a fresh machine or container).
func candidate(ctx context.Context, pkg string) (string, error) {
	v, err := policy(ctx, pkg)
	if err == nil && v != "" {
		return v, nil
	}
	if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get update (to find Debian's %s): %w\n%s", pkg, err, out)
	}
	v, err = policy(ctx, pkg)
	if err != nil {
		return "", err
	}
	if v == "" {
		return "", fmt.Errorf("apt knows no candidate version of %s: is this a Debian (or Debian-based) machine with the main archive configured?", pkg)
	}
	return v, nil
}

func policy(ctx context.Context, pkg string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "policy", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache policy %s: %w (the lab takes %s from Debian's packages: it needs apt)", pkg, err, pkg)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate:"); ok {
			if v = strings.TrimSpace(v); v != "(none)" {
				return v, nil
			}
		}
	}
	return "", nil
}

// fetch downloads pkg=version into a scratch directory and unpacks it into
// dir, which appears complete or not at all.
func fetch(ctx context.Context, pkg, version, dir string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dl := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg+"="+version)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s=%s: %w\n%s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files in %s, want 1", pkg, len(debs), tmp)
	}
	root := filepath.Join(tmp, "root")
	var stderr bytes.Buffer
	x := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root)
	x.Stderr = &stderr
	if err := x.Run(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[0], err, stderr.String())
	}
	if err := os.WriteFile(filepath.Join(root, ".complete"), []byte(version+"\n"), 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir) // a partial unpack from an interrupted run
	if err := os.Rename(root, dir); err != nil {
		return fmt.Errorf("caching %s: %w", pkg, err)
	}
	return nil
}
