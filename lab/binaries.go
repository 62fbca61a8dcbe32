package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// allBinaries are what the lab needs of `make build`: calyx-lab (each
// node's init), pause, and what calyx's image holds.
var allBinaries = []string{"calyx-agent", "calyx-lab", "calyxctl", "pause", "calyx-guest", "calyx", "calyx-ipam", "portmap", "loopback"}

// BuildBinaries builds calyx's binaries (and the shipped portmap and
// loopback) from the module at srcDir into dir. The lab uses the real
// binaries, never in-process stand-ins.
func BuildBinaries(ctx context.Context, srcDir, dir string, progress io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pkgs := map[string]string{
		"calyx":       "./cmd/calyx",
		"calyx-ipam":  "./cmd/calyx-ipam",
		"calyx-agent": "./cmd/calyx-agent",
		"calyx-lab":   "./cmd/calyx-lab",
		"calyxctl":    "./cmd/calyxctl",
		"pause":       "./cmd/pause",
		"calyx-guest": "./cmd/calyx-guest",
		"portmap":     "github.com/containernetworking/plugins/plugins/meta/portmap",
		"loopback":    "github.com/containernetworking/plugins/plugins/main/loopback",
	}
	begin := time.Now()
	args := []string{"build", "-trimpath", "-o", dir + "/"}
	for _, name := range allBinaries {
		args = append(args, pkgs[name])
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the lab's binaries in %s: %w\n%s", srcDir, err, out)
	}
	fmt.Fprintf(progress, "built %d binaries into %s in %s\n", len(allBinaries), dir, time.Since(begin).Round(time.Millisecond))
	return nil
}

// checkBinaries says which of the lab's binaries dir lacks.
func checkBinaries(dir string) error {
	for _, name := range allBinaries {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("%s has no %s: run `make build` (or pass --bin-dir): %w", dir, name, err)
		}
	}
	return nil
}
