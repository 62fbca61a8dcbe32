package images

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// calyx's image as `docker load` and `kind load image-archive` read it:
// tagged as asked, the agent as the entrypoint, one layer whose files
// are the binaries where the DaemonSet expects them, executable, owned
// by root; the same binaries make the same image.
func TestCalyx(t *testing.T) {
	// Static ELF binaries, told apart by what follows the ELF: cmd/pause
	// with each binary's name appended.
	elf, err := os.ReadFile(filepath.Join(pauseBinDir(t), "pause"))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, f := range calyxLayout {
		if err := os.WriteFile(filepath.Join(bin, f.bin), append(slices.Clone(elf), "binary "+f.bin...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const tag = "ghcr.io/calyx-net/calyx:test"
	got, img, err := Calyx(bin, tag)
	if err != nil {
		t.Fatal(err)
	}
	if got != tag {
		t.Errorf("tag %q, want %q", got, tag)
	}
	img = writeAndRead(t, tag, img)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/calyx-agent"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	files := func(name string) bool { return !strings.HasSuffix(name, "/") }
	want := []layerEntry{
		{"usr/local/bin/calyx-agent", 0o755, 0, "", "binary calyx-agent"},
		{"usr/local/bin/calyxctl", 0o755, 0, "", "binary calyxctl"},
		{"opt/calyx/cni/bin/calyx", 0o755, 0, "", "binary calyx"},
		{"opt/calyx/cni/bin/calyx-ipam", 0o755, 0, "", "binary calyx-ipam"},
		{"opt/calyx/cni/bin/portmap", 0o755, 0, "", "binary portmap"},
		{"opt/calyx/cni/bin/loopback", 0o755, 0, "", "binary loopback"},
	}
	entries := layerEntries(t, img, files)
	for i := range entries {
		entries[i].Data = strings.TrimPrefix(entries[i].Data, string(elf))
	}
	if diff := cmp.Diff(want, entries); diff != "" {
		t.Errorf("layer (-want +got):\n%s", diff)
	}

	_, again, err := Calyx(bin, tag)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := writeAndRead(t, tag, again).Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same binaries: digests %s and %s, want equal", d1, d2)
	}
}

// A binary built with cgo (go build without CGO_ENABLED=0) would fail in
// the container with a bare "no such file or directory": refused here,
// with what to do.
func TestCalyxDynamicBinary(t *testing.T) {
	bin := t.TempDir()
	elf, err := os.ReadFile(filepath.Join(pauseBinDir(t), "pause"))
	if err != nil {
		t.Fatal(err)
	}
	dynamic, err := os.ReadFile("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range calyxLayout {
		b := elf
		if f.bin == "calyx-ipam" {
			b = dynamic
		}
		if err := os.WriteFile(filepath.Join(bin, f.bin), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err = Calyx(bin, CalyxTag)
	wantError(t, err, "calyx-ipam is dynamically linked", "CGO_ENABLED=0")
}

func TestCalyxMissingBinary(t *testing.T) {
	_, _, err := Calyx(t.TempDir(), CalyxTag)
	if err == nil || !strings.Contains(err.Error(), "run make build first") {
		t.Errorf("error %v, want one saying to run make build", err)
	}
}
