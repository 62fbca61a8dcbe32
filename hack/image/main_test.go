package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The tarball as `docker load` and `kind load image-archive` read it: a
// manifest.json naming the tag, and calyx's image with the agent as its
// entrypoint (lab/images' TestCalyx checks the layer).
func TestImageTarball(t *testing.T) {
	// The image takes static binaries only: cmd/pause, built as make
	// build builds it, stands in for each of calyx's.
	bin := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bin, "calyx-agent"), "github.com/calyx-net/calyx/cmd/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building a static stand-in: %v\n%s", err, out)
	}
	elf, err := os.ReadFile(filepath.Join(bin, "calyx-agent"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"calyxctl", "calyx", "calyx-ipam", "portmap", "loopback"} {
		if err := os.WriteFile(filepath.Join(bin, b), elf, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "calyx-image.tar")
	const tag = "ghcr.io/calyx-net/calyx:test"
	if err := write(bin, tag, out); err != nil {
		t.Fatal(err)
	}

	// Read by the tag: the archive's manifest.json must name it.
	ref, _ := name.NewTag(tag)
	img, err := tarball.ImageFromPath(out, &ref)
	if err != nil {
		t.Fatalf("reading the tarball back as %s: %v", tag, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/calyx-agent"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if layers, err := img.Layers(); err != nil || len(layers) != 1 {
		t.Errorf("layers: %d, %v; want one", len(layers), err)
	}
}

func TestImageMissingBinary(t *testing.T) {
	err := write(t.TempDir(), "calyx:x", filepath.Join(t.TempDir(), "x.tar"))
	if err == nil || !strings.Contains(err.Error(), "run make build first") {
		t.Errorf("error %v, want one saying to run make build", err)
	}
}
