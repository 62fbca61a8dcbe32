package main

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The tarball as `docker load` and `kind load image-archive` read it: a
// manifest.json naming the tag, and an image whose one layer holds the
// binaries where the DaemonSet expects them, executable, owned by root.
func TestImageTarball(t *testing.T) {
	bin := t.TempDir()
	for _, f := range layout {
		if err := os.WriteFile(filepath.Join(bin, f.bin), []byte("binary "+f.bin), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "calyx-image.tar")
	const tag = "ghcr.io/calyx-net/calyx:test"
	if err := write(bin, tag, out); err != nil {
		t.Fatal(err)
	}

	// docker load's index of the archive.
	var manifest []struct{ RepoTags, Layers []string }
	if err := json.Unmarshal(readMember(t, out, "manifest.json"), &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !cmp.Equal(manifest[0].RepoTags, []string{tag}) {
		t.Errorf("manifest.json = %+v, want one image tagged %s", manifest, tag)
	}

	ref, _ := name.NewTag(tag)
	img, err := tarball.ImageFromPath(out, &ref)
	if err != nil {
		t.Fatalf("reading the tarball back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/calyx-agent"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		Name    string
		Mode    int64
		UID     int
		Content string
	}
	var got [][]entry
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var es []entry
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			b, _ := io.ReadAll(tr)
			es = append(es, entry{h.Name, h.Mode, h.Uid, string(b)})
		}
		rc.Close()
		got = append(got, es)
	}
	want := [][]entry{{
		{"usr/local/bin/calyx-agent", 0o755, 0, "binary calyx-agent"},
		{"usr/local/bin/calyxctl", 0o755, 0, "binary calyxctl"},
		{"opt/calyx/cni/bin/calyx", 0o755, 0, "binary calyx"},
		{"opt/calyx/cni/bin/calyx-ipam", 0o755, 0, "binary calyx-ipam"},
		{"opt/calyx/cni/bin/portmap", 0o755, 0, "binary portmap"},
		{"opt/calyx/cni/bin/loopback", 0o755, 0, "binary loopback"},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("layers (-want +got):\n%s", diff)
	}

	// Same binaries, same image.
	out2 := filepath.Join(t.TempDir(), "again.tar")
	if err := write(bin, tag, out2); err != nil {
		t.Fatal(err)
	}
	img2, err := tarball.ImageFromPath(out2, &ref)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same binaries: digests %s and %s, want equal", d1, d2)
	}
}

func TestImageMissingBinary(t *testing.T) {
	err := write(t.TempDir(), "calyx:x", filepath.Join(t.TempDir(), "x.tar"))
	if err == nil || !contains(err.Error(), "run make build first") {
		t.Errorf("error %v, want one saying to run make build", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// readMember is the content of the named member of a tar file.
func readMember(t *testing.T, file, member string) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no %s: %v", file, member, err)
		}
		if h.Name == member {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}
