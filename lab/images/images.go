package images

import (
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The images' names, as the nodes' containerd and the manifests ask for
// them: no registry is reachable, so a name must match exactly.
const (
	// PauseTag is the sandbox image containerd is configured with.
	PauseTag = "registry.k8s.io/pause:3.10"
	// ToolboxTag is the lab's image for pods that run shell tools and a
	// TFTP server.
	ToolboxTag = "localhost/calyx-lab/toolbox:v1"
	// KubeProxyRepository is the name kubeadm's kube-proxy DaemonSet
	// uses, tagged with the Kubernetes version: KubeProxyRepository+":v1.37.2".
	KubeProxyRepository = "registry.k8s.io/kube-proxy"
	// CalyxTag is the name deploy/calyx.yaml's DaemonSet uses.
	CalyxTag = "ghcr.io/calyx-net/calyx:dev"
)

// calyxLayout is where calyx's binaries go in its image. The DaemonSet
// runs the agent from /usr/local/bin; install-cni copies the plugins
// from /opt/calyx/cni/bin.
var calyxLayout = []struct{ bin, dir string }{
	{"calyx-agent", "usr/local/bin"},
	{"calyxctl", "usr/local/bin"},
	{"calyx", "opt/calyx/cni/bin"},
	{"calyx-ipam", "opt/calyx/cni/bin"},
	{"portmap", "opt/calyx/cni/bin"},
	{"loopback", "opt/calyx/cni/bin"},
}

// Calyx is calyx's own image, named tag: the static binaries of `make
// build` in binDir, the agent as the entrypoint. The binaries are static
// (CGO_ENABLED=0), so the image holds nothing else.
func Calyx(binDir, tag string) (string, v1.Image, error) {
	var files []File
	for _, f := range calyxLayout {
		src := filepath.Join(binDir, f.bin)
		if err := requireStatic(src, "calyx"); err != nil {
			return "", nil, err
		}
		files = append(files, File{Path: path.Join(f.dir, f.bin), Source: src, Mode: 0o755})
	}
	img, err := Build(files, Config{
		Entrypoint: []string{"/usr/local/bin/calyx-agent"},
		Env:        []string{"PATH=/usr/local/bin"},
		Labels:     map[string]string{"org.opencontainers.image.source": "https://github.com/calyx-net/calyx"},
	})
	if err != nil {
		return "", nil, fmt.Errorf("%w (run make build first)", err)
	}
	return tag, img, nil
}

// Pause is the pod sandbox image: cmd/pause, built by `make build` into
// binDir, alone.
func Pause(binDir string) (string, v1.Image, error) {
	bin := filepath.Join(binDir, "pause")
	if err := requireStatic(bin, "pause"); err != nil {
		return "", nil, err
	}
	img, err := Build([]File{{Path: "pause", Source: bin, Mode: 0o755}}, Config{Entrypoint: []string{"/pause"}})
	return PauseTag, img, err
}

// requireStatic refuses a binary that loads shared libraries for an
// image that holds none: in a container, exec of it fails with a bare
// "no such file or directory" (its loader is missing).
func requireStatic(bin, image string) error {
	dynamic, err := isDynamic(bin)
	if err != nil {
		return fmt.Errorf("%w (run make build first)", err)
	}
	if dynamic {
		return fmt.Errorf("%s is dynamically linked, and the %s image holds no libraries: build it with CGO_ENABLED=0 (make build does)", bin, image)
	}
	return nil
}

// toolboxEtc is what in.tftpd needs to drop to nobody: glibc looks the
// user up in /etc/passwd, through nsswitch.conf's "files".
var toolboxEtc = []File{
	{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
	{Path: "etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n")},
	{Path: "etc/nsswitch.conf", Data: []byte("passwd: files\ngroup: files\nhosts: files dns\n")},
}

// Toolbox is the lab's image for pods that need a shell and network
// tools: busybox (Debian's busybox-static, at the path given) with a
// link in /bin for each of its applets, and tftpd-hpa's in.tftpd (the
// path given) with its libraries at /usr/sbin/in.tftpd, serving an empty
// /srv/tftp. It sleeps unless told otherwise.
func Toolbox(busybox, tftpd string) (string, v1.Image, error) {
	files, err := busyboxFiles(busybox)
	if err != nil {
		return "", nil, err
	}
	files = append(files, File{Path: "usr/sbin/in.tftpd", Source: tftpd, Mode: 0o755})
	libs, err := Libraries(busybox, tftpd)
	if err != nil {
		return "", nil, fmt.Errorf("toolbox image: %w (tftpd-hpa ships in.tftpd)", err)
	}
	files = append(files, libs...)
	files = append(files, toolboxEtc...)
	files = append(files, File{Path: "srv/tftp", Dir: true})
	img, err := Build(files, Config{
		Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"},
		Cmd: []string{"sleep", "infinity"},
	})
	return ToolboxTag, img, err
}

// busyboxFiles are busybox at /bin/busybox and a link in /bin for each of
// its applets.
func busyboxFiles(busybox string) ([]File, error) {
	applets, err := busyboxApplets(busybox)
	if err != nil {
		return nil, err
	}
	files := []File{{Path: "bin/busybox", Source: busybox, Mode: 0o755}}
	for _, a := range applets {
		files = append(files, File{Path: "bin/" + a, Link: "busybox"})
	}
	return files, nil
}

// busyboxApplets is what `busybox --list` prints, but busybox itself.
func busyboxApplets(busybox string) ([]string, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w: want Debian's busybox-static (apt-get download busybox-static && dpkg-deb -x busybox-static_*.deb DIR gives DIR/bin/busybox)", busybox, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applets: want Debian's busybox-static", busybox)
	}
	return applets, nil
}
