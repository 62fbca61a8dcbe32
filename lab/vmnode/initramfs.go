package vmnode

import (
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/calyx-net/calyx/lab/images"
)

// moduleDirs are the parts of the kernel's modules the guest needs: its
// NIC (virtio), IPv4 and its tunnels (ipip), netfilter (the agent's
// nftables table), veth (pods) and what those depend on.
var moduleDirs = []string{
	"kernel/net/ipv4", "kernel/net/ipv6", "kernel/net/netfilter", "kernel/net/core",
	"kernel/drivers/virtio", "kernel/lib", "kernel/crypto",
	"kernel/drivers/net/virtio_net.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/veth.ko",
}

// initScript is the guest's own set-up, before cfg.Init: file systems,
// modules (busybox's depmod indexes them; the kernel asks /sbin/modprobe
// for the ones it needs later), the NIC named as on the lab's other nodes,
// and calyx-guest for the lab to reach it.
const initScript = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log /var/lib /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mkdir -p /run/netns
depmod
for m in virtio_pci virtio_net ipip veth nf_tables nf_conntrack nf_nat; do modprobe $m; done
for m in $(find /lib/modules -name 'nft_*.ko' -o -name 'nf_conntrack_*.ko' -o -name 'nf_nat_*.ko' -o -name 'nf_*ipv4*.ko'); do
	modprobe "$(basename "$m" .ko)" 2>/dev/null
done
hostname {{NAME}}
ip link set lo up
ip link set eth0 name ens160
ip addr add {{IP}}/24 dev ens160
ip link set ens160 up
ip route add default via {{GATEWAY}}
echo 1 > /proc/sys/net/ipv4/ip_forward
calyx-guest --listen {{IP}}:7070 > /var/log/calyx-guest.log 2>&1 &
. /etc/node-init.sh
echo "{{NAME}}: up after $(cut -d' ' -f1 /proc/uptime) s" > /dev/console
while :; do sleep 3600; done
`

// initramfsFiles is everything the initramfs holds.
func initramfsFiles(cfg Config) ([]images.File, error) {
	applets, err := exec.Command(cfg.Busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w (want Debian's busybox-static)", cfg.Busybox, err)
	}
	files := []images.File{{Path: "bin/busybox", Source: cfg.Busybox, Mode: 0o755}}
	provided := map[string]bool{}
	for _, f := range cfg.Files {
		provided[strings.TrimPrefix(f.Path, "/")] = true
	}
	for _, a := range strings.Fields(string(applets)) {
		if a != "bin/busybox" && !provided[a] {
			files = append(files, images.File{Path: a, Link: "/bin/busybox"})
		}
	}
	mods, err := moduleFiles(cfg.Modules)
	if err != nil {
		return nil, err
	}
	files = append(files, mods...)
	init := strings.NewReplacer("{{NAME}}", cfg.Name, "{{IP}}", cfg.IP.String(), "{{GATEWAY}}", cfg.Gateway).Replace(initScript)
	files = append(files,
		images.File{Path: "init", Data: []byte(init), Mode: 0o755},
		images.File{Path: "etc/node-init.sh", Data: []byte(cfg.Init), Mode: 0o755},
		images.File{Path: "var/run", Link: "/run"},
		images.File{Path: "proc", Dir: true}, images.File{Path: "sys", Dir: true}, images.File{Path: "dev", Dir: true},
	)
	return append(files, cfg.Files...), nil
}

// moduleFiles are moduleDirs of the kernel's modules, at their place under
// /lib/modules/VERSION, with the index files depmod reads.
func moduleFiles(dir string) ([]images.File, error) {
	version := filepath.Base(dir)
	var files []images.File
	add := func(p string) {
		rel, _ := filepath.Rel(dir, p)
		files = append(files, images.File{Path: path.Join("lib/modules", version, rel), Source: p, Mode: 0o644})
	}
	for _, name := range []string{"modules.builtin", "modules.order", "modules.builtin.modinfo"} {
		add(filepath.Join(dir, name))
	}
	for _, d := range moduleDirs {
		err := filepath.WalkDir(filepath.Join(dir, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("the kernel's modules: %w", err)
			}
			if !e.IsDir() && strings.HasSuffix(p, ".ko") {
				add(p)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return files, nil
}
