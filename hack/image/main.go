// Command image writes calyx's container image as a tarball that `docker
// load` and `kind load image-archive` accept, without a Docker daemon:
// the static binaries of `make build` in one layer on an empty base.
//
//	go run ./hack/image --bin-dir bin --tag ghcr.io/calyx-net/calyx:dev --out bin/calyx-image.tar
//
// The layer has fixed timestamps and owners, so the same binaries give
// the same image digest.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Where the binaries go in the image. The DaemonSet runs the agent from
// /usr/local/bin; install-cni copies the plugins from /opt/calyx/cni/bin.
var layout = []struct{ bin, dir string }{
	{"calyx-agent", "usr/local/bin"},
	{"calyxctl", "usr/local/bin"},
	{"calyx", "opt/calyx/cni/bin"},
	{"calyx-ipam", "opt/calyx/cni/bin"},
	{"portmap", "opt/calyx/cni/bin"},
	{"loopback", "opt/calyx/cni/bin"},
}

func main() {
	binDir := flag.String("bin-dir", "bin", "directory of the static binaries (make build)")
	tag := flag.String("tag", "ghcr.io/calyx-net/calyx:dev", "the image's name and tag, as the DaemonSet names it")
	out := flag.String("out", "bin/calyx-image.tar", "tarball to write")
	flag.Parse()
	if err := write(*binDir, *tag, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (%s): docker load -i %s, or kind load image-archive %s\n", *out, *tag, *out, *out)
}

func write(binDir, tag, out string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("image tag %q: %w (want e.g. ghcr.io/calyx-net/calyx:dev)", tag, err)
	}
	img, err := build(binDir)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}

// build is the image: one layer with the binaries, the agent as the
// entrypoint.
func build(binDir string) (v1.Image, error) {
	layerTar, err := layerFrom(binDir)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("making the layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("appending the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/usr/local/bin/calyx-agent"}
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/calyx-net/calyx"}
	return mutate.ConfigFile(img, cf)
}

// layerFrom is the layer's tar: the directories, then the binaries.
func layerFrom(binDir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	var mkdir func(string) error
	mkdir = func(d string) error {
		if d == "." || dirs[d] {
			return nil
		}
		if err := mkdir(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	for _, f := range layout {
		b, err := os.ReadFile(filepath.Join(binDir, f.bin))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w (run make build first)", f.bin, err)
		}
		if err := mkdir(f.dir); err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: path.Join(f.dir, f.bin), Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
