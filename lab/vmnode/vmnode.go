// Package vmnode runs a node of the lab as a virtual machine with a kernel
// of its own: Debian's cloud kernel, which has the ipip module the host's
// kernel lacks, booted by qemu (software emulation) from an initramfs the
// lab builds — busybox, the kernel's network modules, calyx's binaries —
// with its NIC a tap on the lab's underlay bridge, so that the kernel's
// ipip datapath and the eBPF one meet on the wire. qemu runs inside the
// underlay's namespace: the tap never appears in the host's.
package vmnode

import (
	"compress/gzip"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/calyx-net/calyx/agent/nsexec"
	"github.com/calyx-net/calyx/lab/guest"
	"github.com/calyx-net/calyx/lab/images"
	"github.com/calyx-net/calyx/lab/spawn"
)

// Config describes the machine.
type Config struct {
	Name string
	// IP is its underlay address (a /24), Gateway the underlay's router.
	IP      netip.Addr
	Gateway string
	// UnderlayNS is the path of the underlay's network namespace and
	// Bridge the bridge there its NIC joins.
	UnderlayNS, Bridge string
	// Dir holds the initramfs and the console's log.
	Dir string
	// Kernel is the vmlinuz to boot; Modules its /lib/modules/VERSION.
	Kernel, Modules string
	// Busybox is a static busybox, the guest's userland.
	Busybox string
	// Files are added to the initramfs: programs, configuration.
	Files []images.File
	// Init is the shell script run after the guest's own set-up (mounts,
	// modules, the NIC, calyx-guest): the node's services.
	Init string
	// MemoryMB is the guest's memory; default 1536.
	MemoryMB int
}

// VM is a running machine.
type VM struct {
	Config
	cmd    *exec.Cmd
	exited chan struct{}
	client *guest.Client
}

// Start builds the initramfs, boots the machine and returns once its
// calyx-guest answers.
func Start(ctx context.Context, cfg Config) (_ *VM, err error) {
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 1536
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	initrd := filepath.Join(cfg.Dir, "initramfs.gz")
	if err := buildInitramfs(cfg, initrd); err != nil {
		return nil, err
	}
	v := &VM{Config: cfg, exited: make(chan struct{})}
	v.client = guest.NewClient(cfg.IP.String(), nsexec.Dialer(cfg.UnderlayNS))
	if err := v.boot(initrd); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.Stop()
		}
	}()
	if err := v.attachTap(ctx); err != nil {
		return nil, err
	}
	return v, v.waitGuest(ctx, 3*time.Minute)
}

// Guest is the client of the machine's calyx-guest.
func (v *VM) Guest() *guest.Client { return v.client }

// PID is qemu's process ID.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// ConsoleLog is the path of the guest's serial console output.
func (v *VM) ConsoleLog() string { return filepath.Join(v.Dir, "console.log") }

// tap is the name of the machine's NIC on the underlay's side.
func (v *VM) tap() string {
	n := "tap-" + v.Name
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// mac is a stable locally administered address made from the IP.
func (v *VM) mac() string {
	a := v.IP.As4()
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// boot starts qemu in the underlay's namespace: with software emulation
// (this machine's KVM accepts a VM and then never runs it), the NIC a tap
// qemu creates there.
func (v *VM) boot(initrd string) error {
	args := []string{
		"-name", v.Name, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", strconv.Itoa(v.MemoryMB),
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:" + v.ConsoleLog(),
		"-kernel", v.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet",
		"-netdev", "tap,id=n0,ifname=" + v.tap() + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0,mac=" + v.mac(),
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	log, err := os.Create(filepath.Join(v.Dir, "qemu.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	v.cmd.Stdout, v.cmd.Stderr = log, log
	waited, err := spawn.Start(v.cmd, v.UnderlayNS)
	if err != nil {
		return fmt.Errorf("starting qemu-system-x86_64 (install qemu-system-x86): %w", err)
	}
	go func() { <-waited; close(v.exited) }()
	return nil
}

// attachTap puts qemu's tap on the underlay bridge once qemu has made it.
func (v *VM) attachTap(ctx context.Context) error {
	h, err := netns.GetFromPath(v.UnderlayNS)
	if err != nil {
		return err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return err
	}
	defer nl.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tap, err := nl.LinkByName(v.tap())
		if err == nil {
			br, err := nl.LinkByName(v.Bridge)
			if err != nil {
				return err
			}
			if err := nl.LinkSetMaster(tap, br); err != nil {
				return fmt.Errorf("attaching %s to %s: %w", v.tap(), v.Bridge, err)
			}
			return nl.LinkSetUp(tap)
		}
		select {
		case <-v.exited:
			return fmt.Errorf("qemu exited: %s", tail(filepath.Join(v.Dir, "qemu.log")))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu made no tap %s in 30 s: %s", v.tap(), tail(filepath.Join(v.Dir, "qemu.log")))
		}
	}
}

// waitGuest waits for calyx-guest's answer.
func (v *VM) waitGuest(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := v.client.Healthy(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-v.exited:
			return fmt.Errorf("the guest %s stopped during boot: its console: %s", v.Name, tail(v.ConsoleLog()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest %s did not answer in %s (%v): its console: %s", v.Name, timeout, err, tail(v.ConsoleLog()))
		}
	}
}

// Stop turns the machine off.
func (v *VM) Stop() {
	if v == nil || v.cmd == nil || v.cmd.Process == nil {
		return
	}
	v.cmd.Process.Kill()
	<-v.exited
}

// buildInitramfs writes the gzip'd initramfs.
func buildInitramfs(cfg Config, path string) error {
	files, err := initramfsFiles(cfg)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Speed over size: the guest unpacks it under emulation.
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err := writeCPIO(zw, files); err != nil {
		return err
	}
	return zw.Close()
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "\n" + strings.Join(lines, "\n")
}
