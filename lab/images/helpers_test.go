package images

import (
	"archive/tar"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tftpd is tftpd-hpa's server, installed here: a dynamic binary to
// put in images.
const tftpd = "/usr/sbin/in.tftpd"

// scratch holds what the tests share: a built cmd/pause, a static
// busybox. TestMain removes it.
var scratch string

func TestMain(m *testing.M) {
	var err error
	if scratch, err = os.MkdirTemp("", "calyx-images-test-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(scratch)
	os.Exit(code)
}

// once runs f the first time, and remembers its answer for every test.
func once(f func() (string, error)) func(*testing.T) string {
	var o sync.Once
	var v string
	var err error
	return func(t *testing.T) string {
		t.Helper()
		o.Do(func() { v, err = f() })
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// pauseBinDir is a bin dir holding cmd/pause, built as make build does.
var pauseBinDir = once(func() (string, error) {
	dir := filepath.Join(scratch, "bin")
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "pause"), "github.com/calyx-net/calyx/cmd/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cmd/pause: %w\n%s", err, out)
	}
	return dir, nil
})

// staticBusybox is the host's /bin/busybox when it is static, else
// Debian's busybox-static, downloaded and unpacked as the lab does.
var staticBusybox = once(func() (string, error) {
	if dynamic, err := isDynamic("/bin/busybox"); err == nil && !dynamic {
		return "/bin/busybox", nil
	}
	dir := filepath.Join(scratch, "busybox-static")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	fail := func(what string, err error, out []byte) (string, error) {
		return "", fmt.Errorf("no static busybox: /bin/busybox is missing or dynamic, and %s failed: %w\n%s\ninstall busybox-static, or make the Debian mirror reachable", what, err, out)
	}
	get := exec.Command("apt-get", "download", "busybox-static")
	get.Dir = dir
	if out, err := get.CombinedOutput(); err != nil {
		return fail("apt-get download busybox-static", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "busybox-static_*.deb"))
	if len(debs) != 1 {
		return fail("finding the downloaded package", fmt.Errorf("%d busybox-static_*.deb in %s", len(debs), dir), nil)
	}
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], filepath.Join(dir, "x")).CombinedOutput(); err != nil {
		return fail("dpkg-deb -x", err, out)
	}
	return filepath.Join(dir, "x", "bin", "busybox"), nil
})

// writeAndRead writes img as tag, checks that docker load's index names
// that tag, and reads the image back as containerd would.
func writeAndRead(t *testing.T, tag string, img v1.Image) v1.Image {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := Write(out, tag, img); err != nil {
		t.Fatal(err)
	}
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !cmp.Equal(manifest[0].RepoTags, []string{tag}) {
		t.Errorf("manifest.json = %+v, want one image tagged %s", manifest, tag)
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	back, err := tarball.ImageFromPath(out, &ref)
	if err != nil {
		t.Fatalf("reading %s back: %v", out, err)
	}
	return back
}

// layerEntry is one entry of a layer; Data only for regular files that
// keep kept.
type layerEntry struct {
	Name string
	Mode int64
	UID  int
	Link string
	Data string
}

// String is the entry as a user would list it: "usr/sbin/in.tftpd 0755
// uid 0", "srv/tftp/ 0755 uid 0", "bin/sh -> busybox".
func (e layerEntry) String() string {
	if e.Link != "" {
		return e.Name + " -> " + e.Link
	}
	return fmt.Sprintf("%s %04o uid %d", e.Name, e.Mode, e.UID)
}

// layerEntries is img's one layer, entry by entry in order, keeping
// those keep says to.
func layerEntries(t *testing.T, img v1.Image, keep func(name string) bool) []layerEntry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []layerEntry
	eachEntry(t, rc, func(h *tar.Header, r io.Reader) error {
		if !keep(h.Name) {
			return nil
		}
		e := layerEntry{Name: h.Name, Mode: h.Mode, UID: h.Uid, Link: h.Linkname}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			e.Data = string(b)
		}
		got = append(got, e)
		return nil
	})
	return got
}

// eachEntry calls f on each entry of the tar stream r.
func eachEntry(t *testing.T, r io.Reader, f func(h *tar.Header, r io.Reader) error) {
	t.Helper()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err == nil {
			err = f(h, tr)
		}
		if err != nil {
			t.Fatalf("reading a layer: %v", err)
		}
	}
}

// listing is entries as strings, sorted.
func listing(entries []layerEntry) []string {
	var l []string
	for _, e := range entries {
		l = append(l, e.String())
	}
	sort.Strings(l)
	return l
}

// extract unpacks img's filesystem into a new directory.
func extract(t *testing.T, img v1.Image) string {
	t.Helper()
	root := t.TempDir()
	// A container's root is 0755: in.tftpd, for one, runs as nobody.
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	eachEntry(t, rc, func(h *tar.Header, r io.Reader) error {
		p := filepath.Join(root, h.Name)
		var err error
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode))
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			err = writeFile(p, r, os.FileMode(h.Mode))
		default:
			err = fmt.Errorf("unexpected entry type %c", h.Typeflag)
		}
		if err != nil {
			return fmt.Errorf("extracting %s: %w", h.Name, err)
		}
		return nil
	})
	return root
}

func writeFile(p string, r io.Reader, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// inRoot is a command run chrooted into root, with the clone flags given
// (CLONE_NEWNET for one that changes the network) and the image's PATH.
func inRoot(root string, cloneflags uintptr, args ...string) *exec.Cmd {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Cloneflags: cloneflags}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return cmd
}

// run is a command for an image's root: what it reads, and the strings
// its output must hold.
type run struct {
	args  []string
	clone uintptr
	stdin string
	want  []string
}

func runAll(t *testing.T, root string, runs []run) {
	t.Helper()
	for _, r := range runs {
		cmd := inRoot(root, r.clone, r.args...)
		cmd.Stdin = strings.NewReader(r.stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("chroot %q: %v, output:\n%s\nwant exit 0", r.args, err, out)
			continue
		}
		for _, w := range r.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("chroot %q printed:\n%s\nwant %q in it", r.args, out, w)
			}
		}
	}
}

// wantError tells whether the case expected an error (wants: the
// non-empty strings it must hold), failing the test when err is not that.
func wantError(t *testing.T, err error, wants ...string) bool {
	t.Helper()
	expected := false
	for _, w := range wants {
		if w == "" {
			continue
		}
		expected = true
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v, want one with %q", err, w)
		}
	}
	if !expected && err != nil {
		t.Fatal(err)
	}
	return expected
}

// interp is the dynamic loader bin names, without the leading slash.
func interp(t *testing.T, bin string) string {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimPrefix(strings.TrimRight(string(b), "\x00"), "/")
		}
	}
	t.Fatalf("%s names no loader", bin)
	return ""
}
