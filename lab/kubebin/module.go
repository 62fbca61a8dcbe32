package kubebin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Module is a set of programs built with `go install PKG@VERSION`, outside
// calyx's modules, from the Go module proxy.
type Module struct {
	// Name names the cache directory: Name-Version.
	Name, Version string
	// Packages are the main packages to install, without the version.
	Packages []string
	// Ldflags are added to the link: the version the programs report.
	Ldflags string
}

// Containerd is containerd 2.x: the daemon, its runc shim and ctr. The lab
// runs it next to Debian's containerd 1.6, so that calyx meets both the
// oldest and a current runtime.
var Containerd = Module{
	Name:    "containerd",
	Version: "v2.2.9",
	Packages: []string{
		"github.com/containerd/containerd/v2/cmd/containerd",
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
		"github.com/containerd/containerd/v2/cmd/ctr",
	},
	// What `containerd --version` and the CRI (kubectl get nodes -o
	// wide) report; go install leaves it "+unknown".
	Ldflags: "-X github.com/containerd/containerd/v2/version.Version=2.2.9",
}

// EnsureModule returns the directory that holds m's programs, statically
// linked, building them first if the cache lacks them. The programs share
// a directory because they find each other there (containerd looks its
// shim up in PATH).
func EnsureModule(ctx context.Context, m Module, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, m.Name+"-"+m.Version)
	complete := func() bool {
		for _, p := range m.Packages {
			if !isExecutable(filepath.Join(dir, filepath.Base(p))) {
				return false
			}
		}
		return true
	}
	err = FillOnce(filepath.Join(cache, ".build.lock"), complete, func() error { return installModule(ctx, m, cache, dir, progress) })
	if err != nil {
		return "", err
	}
	return dir, nil
}

// installModule builds m's programs with go install into dir.
func installModule(ctx context.Context, m Module, cache, dir string, progress io.Writer) error {
	start := time.Now()
	fmt.Fprintf(progress, "building %s %s with go install (first run only, about a minute); cached in %s\n", m.Name, m.Version, dir)
	tmp, err := os.MkdirTemp(cache, "."+m.Name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"install", "-v", "-trimpath", "-ldflags=-s -w " + m.Ldflags}
	for _, p := range m.Packages {
		args = append(args, p+"@"+m.Version)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = tmp // outside any module: each package@version brings its own go.mod
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=")
	if err := runCounting(ctx, cmd, m.Name, 0, start, progress); err != nil {
		return fmt.Errorf("%w\n(is the Go module proxy reachable?)", err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("caching %s: %w", m.Name, err)
	}
	fmt.Fprintf(progress, "built %s %s in %s\n", m.Name, m.Version, time.Since(start).Round(time.Second))
	return nil
}
