package vmnode

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/debpkg"
	"github.com/calyx-net/calyx/lab/images"
)

// The initramfs as the kernel reads it: cpio -t (GNU cpio, an
// independent reader) lists every file, directories first, links as links.
func TestCPIO(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatalf("cpio is needed to read the archive back (apt-get install cpio): %v", err)
	}
	var b bytes.Buffer
	err := writeCPIO(&b, []images.File{
		{Path: "init", Data: []byte("#!/bin/sh\n"), Mode: 0o755},
		{Path: "bin/sh", Link: "busybox"},
		{Path: "etc/calyx/kubeconfig", Data: []byte("x"), Mode: 0o600},
		{Path: "srv", Dir: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = &b
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		got = append(got, f[0]+" "+strings.Join(f[8:], " "))
	}
	want := []string{"drwxr-xr-x bin", "lrwxrwxrwx bin/sh -> busybox", "drwxr-xr-x etc", "drwxr-xr-x etc/calyx",
		"-rw------- etc/calyx/kubeconfig", "-rwxr-xr-x init", "drwxr-xr-x srv"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("cpio -t:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A machine with Debian's cloud kernel boots from the initramfs in an
// underlay of the test's own, answers on its NIC, and has the ipip module
// the host lacks.
func TestBoot(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu is needed (apt-get install qemu-system-x86): %v", err)
	}
	ctx := context.Background()
	kernel, modules, busybox := fetchKernel(t, ctx)
	underlay := newUnderlay(t)
	begin := time.Now()
	v, err := Start(ctx, Config{
		Name: "vmtest", IP: netip.MustParseAddr("10.99.0.10"), Gateway: "10.99.0.1",
		UnderlayNS: underlay, Bridge: "br0", Dir: t.TempDir(),
		Kernel: kernel, Modules: modules, Busybox: busybox, Files: guestBinary(t), MemoryMB: 512,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	t.Logf("booted and answering in %s", time.Since(begin).Round(time.Millisecond))
	out, err := v.Guest().Output(ctx, "sh", "-c", "uname -r; hostname; ip link show tunl0")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{filepath.Base(modules), "vmtest", "ipip"} {
		if !strings.Contains(out, want) {
			t.Errorf("the guest's uname, hostname and tunl0 lack %q:\n%s", want, out)
		}
	}
}

func fetchKernel(t *testing.T, ctx context.Context) (kernel, modules, busybox string) {
	t.Helper()
	out, err := exec.Command("apt-cache", "depends", "linux-image-cloud-amd64").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pkg string
	for _, l := range strings.Split(string(out), "\n") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(d, "linux-image-") {
			pkg = d
		}
	}
	dir, err := debpkg.Ensure(ctx, pkg, nil)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := debpkg.Ensure(ctx, "busybox-static", nil)
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimPrefix(pkg, "linux-image-")
	return filepath.Join(dir, "boot", "vmlinuz-"+v), filepath.Join(dir, "lib", "modules", v), filepath.Join(bb, "bin", "busybox")
}

// guestBinary builds cmd/calyx-guest, statically, for the initramfs.
func guestBinary(t *testing.T) []images.File {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	out := filepath.Join(t.TempDir(), "calyx-guest")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/calyx-guest")
	cmd.Dir, cmd.Env = filepath.Join(filepath.Dir(file), "..", ".."), append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building calyx-guest: %v\n%s", err, b)
	}
	return []images.File{{Path: "usr/local/bin/calyx-guest", Source: out, Mode: 0o755}}
}

// newUnderlay is a namespace with a bridge br0 at 10.99.0.1/24, removed
// when t ends.
func newUnderlay(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("calyx-vmtest-%d", os.Getpid())
	orig, _ := netns.Get()
	defer orig.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // NewNamed moves the thread: let it die
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		h.Close()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.DeleteNamed(name) })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = nsexec.Run(h, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.99.0.1/24")
		if err := netlink.AddrAdd(br, a); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		t.Fatal(err)
	}
	return "/var/run/netns/" + name
}
