package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/calyx-net/calyx/lab/conformance"
	"github.com/calyx-net/calyx/lab/debpkg"
	"github.com/calyx-net/calyx/lab/images"
	"github.com/calyx-net/calyx/lab/kubebin"
	"github.com/calyx-net/calyx/lab/node"
)

// kit is what the lab's nodes run, found in the cache or built once: the
// Kubernetes binaries from the pinned module, the container runtimes, and
// the images every node imports (no registry is reachable).
type kit struct {
	kubelet, scheduler, controllerManager, kubectl, kubeProxy string
	runc                                                      string
	// runtimes holds each runtime's directory of containerd, its shim
	// and ctr.
	runtimes map[node.Runtime]string
	// images are the tarballs every node imports.
	images []string
	// kubeProxyImage and coreDNSImage are the add-ons' image names in the
	// lab's manifests.
	kubeProxyImage, coreDNSImage string
	// busybox is Debian's busybox-static; kernel and modules the kernel
	// node's (Options.KernelNode).
	busybox, kernel, modules string
}

// prepareKit gathers the kit. The first run builds the Kubernetes binaries
// and containerd 2 (minutes, with progress) and fetches Debian's
// containerd, runc and busybox-static; later runs find them in the cache.
func (l *Lab) prepareKit(ctx context.Context) (*kit, error) {
	k := &kit{runtimes: map[node.Runtime]string{}}
	for _, b := range []struct {
		name string
		dst  *string
	}{
		{"kubelet", &k.kubelet}, {"kube-scheduler", &k.scheduler}, {"kube-controller-manager", &k.controllerManager},
		{"kubectl", &k.kubectl}, {"kube-proxy", &k.kubeProxy},
	} {
		p, err := kubebin.Ensure(ctx, b.name, l.opts.Progress)
		if err != nil {
			return nil, err
		}
		*b.dst = p
	}
	if err := l.prepareRuntimes(ctx, k); err != nil {
		return nil, err
	}
	if l.opts.KernelNode {
		if err := l.prepareKernel(ctx, k); err != nil {
			return nil, err
		}
	}
	return k, l.buildImages(ctx, k)
}

func (l *Lab) prepareRuntimes(ctx context.Context, k *kit) error {
	for _, r := range l.runtimesUsed() {
		switch r {
		case node.Containerd2:
			dir, err := kubebin.EnsureModule(ctx, kubebin.Containerd, l.opts.Progress)
			if err != nil {
				return err
			}
			k.runtimes[r] = dir
		case node.Containerd16:
			dir, err := debpkg.Ensure(ctx, "containerd", l.opts.Progress)
			if err != nil {
				return err
			}
			k.runtimes[r] = filepath.Join(dir, "usr", "bin")
		}
	}
	dir, err := debpkg.Ensure(ctx, "runc", l.opts.Progress)
	if err != nil {
		return err
	}
	k.runc = filepath.Join(dir, "usr", "sbin", "runc")
	return nil
}

// runtimesUsed are the distinct runtimes of the lab's nodes.
func (l *Lab) runtimesUsed() []node.Runtime {
	seen := map[node.Runtime]bool{}
	var out []node.Runtime
	for i := range l.opts.Workers + 1 {
		if r := l.opts.runtime(i); !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

// image is one of the lab's images: the tarball's file name and how to
// build it; tag, when set, names it instead of the builder's tag.
type image struct {
	file, tag string
	build     func() (string, v1.Image, error)
}

// buildImages writes the tarballs of the lab's images into the lab's
// directory: pause, the toolbox (busybox and tftpd-hpa), kube-proxy with
// its iptables, calyx from the lab's binaries (as `make image` does),
// CoreDNS, and with Conformance the e2e tests' images.
func (l *Lab) buildImages(ctx context.Context, k *kit) error {
	busybox, err := debpkg.Ensure(ctx, "busybox-static", l.opts.Progress)
	if err != nil {
		return err
	}
	busybox = filepath.Join(busybox, "bin", "busybox")
	k.busybox = busybox
	tools, err := kubebin.ToolsDir()
	if err != nil {
		return err
	}
	version, err := kubebin.Version(tools)
	if err != nil {
		return err
	}
	coredns, err := kubebin.Ensure(ctx, "coredns", l.opts.Progress)
	if err != nil {
		return err
	}
	dnsVersion, err := kubebin.ModuleVersion(tools, "github.com/coredns/coredns")
	if err != nil {
		return err
	}
	all := []image{
		{"pause.tar", "", func() (string, v1.Image, error) { return images.Pause(l.opts.BinDir) }},
		{"toolbox.tar", "", func() (string, v1.Image, error) { return images.Toolbox(busybox, "/usr/sbin/in.tftpd") }},
		{"kube-proxy.tar", "", func() (string, v1.Image, error) { return images.KubeProxy(version, k.kubeProxy) }},
		{"calyx.tar", "", func() (string, v1.Image, error) { return images.Calyx(l.opts.BinDir, images.CalyxTag) }},
		{"coredns.tar", "", func() (string, v1.Image, error) { return images.CoreDNS(coredns, dnsVersion) }},
	}
	if l.opts.Conformance {
		e2e, err := e2eImages(ctx, tools, busybox, l.opts.BinDir, l.opts.Progress)
		if err != nil {
			return err
		}
		all = append(all, e2e...)
	}
	out, err := writeImages(filepath.Join(l.opts.Dir, "images"), all, l.opts.Progress)
	if err != nil {
		return err
	}
	for _, w := range out {
		switch filepath.Base(w.path) {
		case "kube-proxy.tar":
			k.kubeProxyImage = w.tag
		case "coredns.tar":
			k.coreDNSImage = w.tag
		}
		k.images = append(k.images, w.path)
	}
	return nil
}

// e2eImages are the images Kubernetes' e2e network tests run.
func e2eImages(ctx context.Context, tools, busybox, binDir string, progress io.Writer) ([]image, error) {
	agnhost, err := kubebin.Ensure(ctx, "agnhost", progress)
	if err != nil {
		return nil, err
	}
	k8s, err := kubebin.ModuleDir(ctx, tools, "k8s.io/kubernetes")
	if err != nil {
		return nil, err
	}
	nginx, err := debpkg.Ensure(ctx, "nginx", progress)
	if err != nil {
		return nil, err
	}
	t := images.E2ETools{Curl: "/usr/bin/curl", Nc: "/bin/nc.openbsd", Dig: "/usr/bin/dig", Nslookup: "/usr/bin/nslookup", Getent: "/usr/bin/getent", Sh: "/bin/dash"}
	porter := filepath.Join(k8s, "test", "images", "agnhost", "porter")
	return []image{
		{"agnhost.tar", "", func() (string, v1.Image, error) { return images.Agnhost(agnhost, busybox, porter, t) }},
		{"glibc-dns-testing.tar", "", func() (string, v1.Image, error) { return images.GlibcDNSTesting(busybox, t) }},
		{"nginx.tar", "", func() (string, v1.Image, error) { return images.Nginx(filepath.Join(nginx, "usr", "sbin", "nginx")) }},
		{"pause-e2e.tar", images.PauseE2ETag, func() (string, v1.Image, error) { return images.Pause(binDir) }},
	}, nil
}

// written is an image's tarball and name.
type written struct{ path, tag string }

// writeImages builds every image into dir, and says what it wrote.
func writeImages(dir string, all []image, progress io.Writer) ([]written, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	begin := time.Now()
	var out []written
	for _, b := range all {
		tag, img, err := b.build()
		if err != nil {
			return nil, fmt.Errorf("building the image %s: %w", b.file, err)
		}
		if b.tag != "" {
			tag = b.tag
		}
		path := filepath.Join(dir, b.file)
		if err := images.Write(path, tag, img); err != nil {
			return nil, err
		}
		out = append(out, written{path, tag})
	}
	fmt.Fprintf(progress, "  %d images built in %s: %s\n", len(all), time.Since(begin).Round(time.Millisecond), dir)
	return out, nil
}

// ConformanceKit writes what a run of the e2e network tests against a
// cluster of one's own (kind: test/kind/e2e.sh) needs into dir: the
// suite, the images its tests run (images/*.tar, for `kind load
// image-archive`) and the selection's focus, one regexp per line.
func ConformanceKit(ctx context.Context, dir, binDir string, progress io.Writer) error {
	suite, err := kubebin.Ensure(ctx, "e2e-network.test", progress)
	if err != nil {
		return err
	}
	busybox, err := debpkg.Ensure(ctx, "busybox-static", progress)
	if err != nil {
		return err
	}
	tools, err := kubebin.ToolsDir()
	if err != nil {
		return err
	}
	all, err := e2eImages(ctx, tools, filepath.Join(busybox, "bin", "busybox"), binDir, progress)
	if err != nil {
		return err
	}
	if _, err := writeImages(filepath.Join(dir, "images"), all, progress); err != nil {
		return err
	}
	b, err := os.ReadFile(suite)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "e2e-network.test"), b, 0o755); err != nil {
		return err
	}
	var focus strings.Builder
	for _, t := range conformance.Selection {
		focus.WriteString(conformance.Focus([]string{t}) + "\n")
	}
	return os.WriteFile(filepath.Join(dir, "focus.txt"), []byte(focus.String()), 0o644)
}
