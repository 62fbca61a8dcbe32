// Package images builds the container images the lab's nodes run, as
// tarballs that `ctr -n k8s.io images import` and `docker load` accept,
// without a Docker daemon or a registry: each image is one layer on an
// empty base, with fixed timestamps and owners, so the same inputs give
// the same digest.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one entry of a layer: a copy of a host file (Source), literal
// Data, a symlink (Link) or an empty directory (Dir); with none of them
// set it is an empty file.
type File struct {
	// Path inside the image, relative and clean: "usr/sbin/in.tftpd".
	Path string
	// Source is a host file to copy; symlinks are followed, so a
	// library's resolved file lands at the name the binary asks for.
	Source string
	Data   []byte
	// Link is the target of a symlink, as the image will resolve it.
	Link string
	Dir  bool
	// Mode is the permission bits; 0 means the Source file's, 0644 for
	// Data, 0755 for a directory and 0777 for a symlink.
	Mode fs.FileMode
}

// Config is the part of the image's configuration a runtime reads; the
// OS is linux and the architecture this program's.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	Labels     map[string]string
}

// Build is an image of one layer on an empty base: files in the order
// given, each missing parent directory created just before it. The same
// file listed twice is written once (so that lists from several
// WithLibraries calls combine); the same path listed differently is an
// error.
func Build(files []File, cfg Config) (v1.Image, error) {
	layerTar, err := layerTar(files)
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
	cf.Config.Entrypoint = cfg.Entrypoint
	cf.Config.Cmd = cfg.Cmd
	cf.Config.Env = cfg.Env
	cf.Config.WorkingDir = cfg.WorkingDir
	cf.Config.Labels = cfg.Labels
	return mutate.ConfigFile(img, cf)
}

// Write writes img as a `docker save`-style tarball named tag, through a
// temporary file in the same directory: a reader (or a crash) never sees
// half an image.
func Write(file, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("image tag %q: %w (want e.g. registry.k8s.io/pause:3.10)", tag, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	err = tarball.Write(ref, img, tmp)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return nil
}

// epoch is every entry's time: the digest depends on the inputs only.
var epoch = time.Unix(0, 0)

// layerWriter writes a layer's tar, remembering what it wrote.
type layerWriter struct {
	tw      *tar.Writer
	dirs    map[string]bool
	written map[string]File
}

func layerTar(files []File) ([]byte, error) {
	var buf bytes.Buffer
	w := &layerWriter{tw: tar.NewWriter(&buf), dirs: map[string]bool{}, written: map[string]File{}}
	for _, f := range files {
		if err := w.add(f); err != nil {
			return nil, err
		}
	}
	if err := w.tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (w *layerWriter) add(f File) error {
	if err := f.check(); err != nil {
		return err
	}
	if prev, ok := w.written[f.Path]; ok {
		if same(prev, f) {
			return nil
		}
		return fmt.Errorf("image path %s is listed twice, differently (%+v and %+v): keep one", f.Path, prev, f)
	}
	w.written[f.Path] = f
	if err := w.mkdir(path.Dir(f.Path), 0o755); err != nil {
		return err
	}
	switch {
	case f.Dir:
		return w.mkdir(f.Path, orDefault(f.Mode, 0o755))
	case f.Link != "":
		return w.header(tar.TypeSymlink, f.Path, f.Link, orDefault(f.Mode, 0o777), 0)
	case f.Source != "":
		return w.copy(f)
	}
	if err := w.header(tar.TypeReg, f.Path, "", orDefault(f.Mode, 0o644), int64(len(f.Data))); err != nil {
		return err
	}
	_, err := w.tw.Write(f.Data)
	return err
}

// check rejects what would make an ambiguous or escaping entry.
func (f File) check() error {
	p := f.Path
	if p == "" || path.Clean(p) != p || path.IsAbs(p) || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("image path %q: want a clean relative path such as usr/sbin/in.tftpd", p)
	}
	kinds := 0
	for _, set := range []bool{f.Source != "", f.Data != nil, f.Link != "", f.Dir} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return fmt.Errorf("image path %s: set one of Source, Data, Link and Dir", p)
	}
	if w := f.Mode &^ fs.ModePerm; w != 0 {
		return fmt.Errorf("image path %s: mode %v has more than permission bits", p, f.Mode)
	}
	return nil
}

func same(a, b File) bool {
	return a.Path == b.Path && a.Source == b.Source && bytes.Equal(a.Data, b.Data) &&
		(a.Data == nil) == (b.Data == nil) && a.Link == b.Link && a.Dir == b.Dir && a.Mode == b.Mode
}

func orDefault(m, def fs.FileMode) fs.FileMode {
	if m == 0 {
		return def
	}
	return m
}

// mkdir writes d and its missing parents, root-owned.
func (w *layerWriter) mkdir(d string, mode fs.FileMode) error {
	if d == "." || w.dirs[d] {
		return nil
	}
	if f, ok := w.written[d]; ok && !f.Dir {
		return fmt.Errorf("image path %s is not a directory, and something goes under it", d)
	}
	if err := w.mkdir(path.Dir(d), 0o755); err != nil {
		return err
	}
	w.dirs[d] = true
	return w.header(tar.TypeDir, d+"/", "", mode, 0)
}

func (w *layerWriter) header(typ byte, name, link string, mode fs.FileMode, size int64) error {
	if typ != tar.TypeDir && w.dirs[name] {
		return fmt.Errorf("image path %s is a directory already", name)
	}
	return w.tw.WriteHeader(&tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: int64(mode), Size: size, ModTime: epoch, Format: tar.FormatPAX})
}

func (w *layerWriter) copy(f File) error {
	src, err := os.Open(f.Source)
	if err != nil {
		return fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return fmt.Errorf("reading %s for %s: %w", f.Source, f.Path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s (for %s) is not a regular file", f.Source, f.Path)
	}
	if err := w.header(tar.TypeReg, f.Path, "", orDefault(f.Mode, fi.Mode().Perm()), fi.Size()); err != nil {
		return err
	}
	if _, err := io.Copy(w.tw, src); err != nil {
		return fmt.Errorf("copying %s into the layer: %w", f.Source, err)
	}
	return nil
}
