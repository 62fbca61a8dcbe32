package images

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/calyx-net/calyx/lab/kubebin"
)

// toolboxTFTP serves a file with the image's in.tftpd (dropping to
// nobody) and fetches it with its busybox tftp, over the loopback of a
// network namespace of its own. A runtime gives a container /dev/null,
// which sh needs to start a job in the background; a chroot has none.
// in.tftpd resolves its address with AI_ADDRCONFIG, which ignores
// 127.0.0.1: a pod has its eth0 address, here lo gets one more.
const toolboxTFTP = `set -e
mkdir -p /dev && mknod -m 666 /dev/null c 1 3
ip link set lo up
ip addr add 10.0.0.1/32 dev lo
echo 'hello over tftp' > /srv/tftp/hello.txt
/usr/sbin/in.tftpd -L -u nobody -s -a 127.0.0.1:69 /srv/tftp &
sleep 0.3
cd /srv && tftp -g -r hello.txt -l got.txt 127.0.0.1
kill $!
cat /srv/got.txt`

// Each image read back from its tarball as containerd imports it: the
// name, what runs, the files a user looks for; then its filesystem,
// unpacked, running its programs.
func TestImages(t *testing.T) {
	hostIptables, err := filepath.EvalSymlinks("/usr/sbin/iptables")
	if err != nil {
		t.Fatalf("the host's iptables: %v (install iptables)", err)
	}
	chosen := filepath.Base(hostIptables)
	rules, err := os.ReadFile("testdata/kube-proxy.rules")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name                 string
		build                func(t *testing.T) (string, v1.Image, error)
		tag                  string
		entrypoint, cmd, env []string
		keep                 func(string) bool
		want                 []string
		runs                 []run
		check                func(t *testing.T, root string)
	}{{
		name:       "pause",
		build:      func(t *testing.T) (string, v1.Image, error) { return Pause(pauseBinDir(t)) },
		tag:        "registry.k8s.io/pause:3.10",
		entrypoint: []string{"/pause"},
		keep:       func(string) bool { return true },
		want:       []string{"pause 0755 uid 0"},
		runs:       []run{{args: []string{"/pause", "-v"}, want: []string{"pause (calyx) 3.10"}}},
		check:      pauseStopsOnSIGTERM,
	}, {
		name:  "toolbox",
		build: func(t *testing.T) (string, v1.Image, error) { return Toolbox(staticBusybox(t), tftpd) },
		tag:   "localhost/calyx-lab/toolbox:v1",
		cmd:   []string{"sleep", "infinity"},
		env:   []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"},
		keep: in("bin/busybox", "bin/sh", "bin/ping", "bin/tftp", "bin/nc", "bin/wget", "bin/syslogd", "bin/sleep", "bin/ip",
			"usr/sbin/in.tftpd", "etc/passwd", "etc/group", "srv/tftp/", interp(t, tftpd)),
		want: []string{
			"bin/busybox 0755 uid 0",
			"bin/ip -> busybox",
			"bin/nc -> busybox",
			"bin/ping -> busybox",
			"bin/sh -> busybox",
			"bin/sleep -> busybox",
			"bin/syslogd -> busybox",
			"bin/tftp -> busybox",
			"bin/wget -> busybox",
			"etc/group 0644 uid 0",
			"etc/passwd 0644 uid 0",
			interp(t, tftpd) + " 0755 uid 0",
			"srv/tftp/ 0755 uid 0",
			"usr/sbin/in.tftpd 0755 uid 0",
		},
		runs: []run{
			{args: []string{"/bin/sh", "-c", "echo ok"}, want: []string{"ok\n"}},
			{args: []string{"/bin/busybox", "tftp", "--help"}, want: []string{"Usage: tftp"}},
			{args: []string{"/usr/sbin/in.tftpd", "-V"}, want: []string{"tftp-hpa"}},
			{args: []string{"/bin/sh", "-c", toolboxTFTP}, clone: syscall.CLONE_NEWNET, want: []string{"hello over tftp"}},
		},
	}, {
		name: "kube-proxy",
		// Any dynamic binary stands in for kube-proxy: the image must
		// run it, libraries and all.
		build:      func(t *testing.T) (string, v1.Image, error) { return KubeProxy("v1.37.2", "/usr/bin/ls") },
		tag:        "registry.k8s.io/kube-proxy:v1.37.2",
		entrypoint: []string{"/usr/local/bin/kube-proxy"},
		env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		keep: func(p string) bool {
			return strings.HasPrefix(p, "usr/sbin/") || strings.HasPrefix(p, "usr/local/bin/") || p == "run/"
		},
		want: []string{
			"run/ 0755 uid 0",
			"usr/local/bin/ 0755 uid 0",
			"usr/local/bin/kube-proxy 0755 uid 0",
			"usr/sbin/ 0755 uid 0",
			"usr/sbin/ip6tables -> " + chosen,
			"usr/sbin/ip6tables-legacy -> xtables-legacy-multi",
			"usr/sbin/ip6tables-legacy-restore -> xtables-legacy-multi",
			"usr/sbin/ip6tables-legacy-save -> xtables-legacy-multi",
			"usr/sbin/ip6tables-nft -> xtables-nft-multi",
			"usr/sbin/ip6tables-nft-restore -> xtables-nft-multi",
			"usr/sbin/ip6tables-nft-save -> xtables-nft-multi",
			"usr/sbin/ip6tables-restore -> " + chosen,
			"usr/sbin/ip6tables-save -> " + chosen,
			"usr/sbin/iptables -> " + chosen,
			"usr/sbin/iptables-legacy -> xtables-legacy-multi",
			"usr/sbin/iptables-legacy-restore -> xtables-legacy-multi",
			"usr/sbin/iptables-legacy-save -> xtables-legacy-multi",
			"usr/sbin/iptables-nft -> xtables-nft-multi",
			"usr/sbin/iptables-nft-restore -> xtables-nft-multi",
			"usr/sbin/iptables-nft-save -> xtables-nft-multi",
			"usr/sbin/iptables-restore -> " + chosen,
			"usr/sbin/iptables-save -> " + chosen,
			"usr/sbin/xtables-legacy-multi 0755 uid 0",
			"usr/sbin/xtables-nft-multi 0755 uid 0",
		},
		runs: []run{
			{args: []string{"/usr/sbin/iptables", "--version"}, want: []string{"iptables v1."}},
			{args: []string{"/usr/sbin/iptables-save", "--version"}, want: []string{"iptables-save v1."}},
			{args: []string{"/usr/sbin/ip6tables-restore", "--version"}, want: []string{"ip6tables-restore v1."}},
			{args: []string{"/usr/sbin/iptables-nft", "--version"}, want: []string{"(nf_tables)"}},
			{args: []string{"/usr/sbin/iptables-legacy", "--version"}, want: []string{"(legacy)"}},
			{args: []string{"/usr/local/bin/kube-proxy", "--version"}, want: []string{"ls (GNU coreutils)"}},
			// The rules kube-proxy writes for a UDP Service: every module
			// it needs loads (with its libraries) and the kernel takes them.
			{args: []string{"iptables-nft-restore", "-v"}, clone: syscall.CLONE_NEWNET, stdin: string(rules),
				want: []string{"statistic mode random probability 0.5", "udp to:192.168.29.67:69", "random-fully", "ctstate RELATED,ESTABLISHED"}},
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tag, img, err := c.build(t)
			if err != nil {
				t.Fatal(err)
			}
			if tag != c.tag {
				t.Errorf("tag %q, want %q", tag, c.tag)
			}
			img = writeAndRead(t, tag, img)
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			got := []any{cf.OS, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env}
			if diff := cmp.Diff([]any{"linux", c.entrypoint, c.cmd, c.env}, got); diff != "" {
				t.Errorf("OS, entrypoint, cmd, env (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(c.want, listing(layerEntries(t, img, c.keep))); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			root := extract(t, img)
			runAll(t, root, c.runs)
			if c.check != nil {
				c.check(t, root)
			}
		})
	}
}

// in keeps the paths listed.
func in(paths ...string) func(string) bool {
	set := map[string]bool{}
	for _, p := range paths {
		set[p] = true
	}
	return func(p string) bool { return set[p] }
}

// pauseStopsOnSIGTERM starts the image's /pause and wants it gone, with
// status 0, within a second of SIGTERM (cmd/pause's tests check the
// rest: SIGINT, reaping orphans as PID 1).
func pauseStopsOnSIGTERM(t *testing.T, root string) {
	cmd := inRoot(root, 0, "/pause")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Not PID 1 here, it warns, once its signal handlers are in place.
	sc := bufio.NewScanner(stderr)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "Warning:") {
		t.Fatalf("pause's first line %q, want its warning", sc.Text())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("pause after SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(time.Second):
		t.Errorf("pause still runs a second after SIGTERM")
	}
}

// The real kube-proxy, where a lab run has built it: the image runs it.
func TestKubeProxyImageRunsTheRealOne(t *testing.T) {
	cache, err := kubebin.CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	tools, err := kubebin.ToolsDir()
	if err != nil {
		t.Fatal(err)
	}
	version, err := kubebin.Version(tools)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(cache, "kube-proxy-"+version)
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no kube-proxy built yet (%v): the lab builds it on its first run", err)
	}
	_, img, err := KubeProxy(version, bin)
	if err != nil {
		t.Fatal(err)
	}
	runAll(t, extract(t, img), []run{{args: []string{"/usr/local/bin/kube-proxy", "--version"}, want: []string{"Kubernetes " + version}}})
}
