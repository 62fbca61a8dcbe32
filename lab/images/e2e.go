package images

import (
	"fmt"
	"path"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The images Kubernetes' e2e network tests run, under the exact names the
// tests ask for (test/utils/image/manifest.go at the tools module's pin),
// and the cluster DNS kubeadm deploys.
const (
	AgnhostTag            = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	GlibcDNSTestingTag    = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	NginxTag              = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	PauseE2ETag           = "registry.k8s.io/pause:3.10.2"
	CoreDNSRepository     = "registry.k8s.io/coredns/coredns"
	e2ePath               = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	nsswitchHostsFilesDNS = "passwd: files\ngroup: files\nhosts: files dns\n"
)

// E2ETools are the host's programs the e2e images carry, as the tests
// call them: curl; netcat-openbsd's nc (the Conntrack tests use its -W and
// -p, which busybox's lacks); dig and nslookup (bind9-dnsutils); getent;
// and dash as /bin/sh: busybox's sh runs its own applets before PATH's
// programs, so its nc would answer "nc -u" with a usage message.
type E2ETools struct {
	Curl, Nc, Dig, Nslookup, Getent, Sh string
}

// Agnhost is the e2e tests' agnhost, as upstream's image holds it: the
// agnhost program (built from the tools module) as the entrypoint with
// "pause" by default, a shell and the tools the tests run in it
// (busybox's sh, seq, date, tr, grep, sleep; the E2ETools in /usr/bin,
// ahead of busybox's in PATH), and porter's TLS pair, from agnhost's
// source directory, at / where porter reads it.
func Agnhost(agnhost, busybox, porterDir string, tools E2ETools) (string, v1.Image, error) {
	files, err := e2eToolFiles(busybox, tools, agnhost)
	if err != nil {
		return "", nil, fmt.Errorf("agnhost image: %w", err)
	}
	files = append(files,
		File{Path: "agnhost", Source: agnhost, Mode: 0o755},
		File{Path: "agnhost-2", Link: "agnhost"},
		File{Path: "localhost.crt", Source: filepath.Join(porterDir, "localhost.crt"), Mode: 0o644},
		File{Path: "localhost.key", Source: filepath.Join(porterDir, "localhost.key"), Mode: 0o644},
		File{Path: "uploads", Dir: true},
	)
	img, err := Build(files, Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{e2ePath}})
	return AgnhostTag, img, err
}

// GlibcDNSTesting is the DNS tests' glibc prober: a shell, dig and getent
// with glibc's resolver, as upstream's Debian image has them.
func GlibcDNSTesting(busybox string, tools E2ETools) (string, v1.Image, error) {
	files, err := e2eToolFiles(busybox, tools)
	if err != nil {
		return "", nil, fmt.Errorf("glibc-dns-testing image: %w", err)
	}
	img, err := Build(files, Config{Env: []string{e2ePath}, Cmd: []string{"sh"}})
	return GlibcDNSTestingTag, img, err
}

// e2eToolFiles are busybox's applets in /bin, the tools (and extra
// binaries) with their libraries, and an /etc where the resolver looks
// in /etc/hosts, then DNS.
func e2eToolFiles(busybox string, tools E2ETools, extra ...string) ([]File, error) {
	bb, err := busyboxFiles(busybox)
	if err != nil {
		return nil, err
	}
	var files []File
	for _, f := range bb {
		if f.Path != "bin/sh" || tools.Sh == "" {
			files = append(files, f)
		}
	}
	if tools.Sh != "" {
		files = append(files, File{Path: "bin/sh", Source: tools.Sh, Mode: 0o755})
	}
	bins := map[string]string{"curl": tools.Curl, "nc": tools.Nc, "dig": tools.Dig, "nslookup": tools.Nslookup, "getent": tools.Getent}
	var all []string
	for name, src := range bins {
		if src == "" {
			continue
		}
		files = append(files, File{Path: path.Join("usr/bin", name), Source: src, Mode: 0o755})
		all = append(all, src)
	}
	if tools.Sh != "" {
		all = append(all, tools.Sh)
	}
	libs, err := Libraries(append(all, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("%w (curl, netcat-openbsd and bind9-dnsutils ship the tools)", err)
	}
	files = append(files, libs...)
	return append(files,
		File{Path: "etc/nsswitch.conf", Data: []byte(nsswitchHostsFilesDNS)},
		File{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		File{Path: "etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n")},
		File{Path: "tmp", Dir: true, Mode: 0o777},
	), nil
}

// nginxConf serves a page on :80 and writes nothing outside /tmp: the
// tests that run nginx need a running pod with an address, nothing more.
const nginxConf = `worker_processes 1;
error_log stderr;
pid /tmp/nginx.pid;
events { worker_connections 64; }
http {
	access_log /dev/stdout;
	client_body_temp_path /tmp/body;
	proxy_temp_path /tmp/proxy;
	fastcgi_temp_path /tmp/fastcgi;
	uwsgi_temp_path /tmp/uwsgi;
	scgi_temp_path /tmp/scgi;
	server {
		listen 80;
		location / { return 200 "nginx\n"; }
	}
}
`

// Nginx is the e2e tests' nginx: Debian's nginx (at the path given) with
// its libraries and a configuration of its own, in the foreground.
func Nginx(nginx string) (string, v1.Image, error) {
	files, err := WithLibraries(nginx)
	if err != nil {
		return "", nil, fmt.Errorf("nginx image: %w (Debian's nginx package ships it)", err)
	}
	files = append(files,
		File{Path: "etc/nginx/nginx.conf", Data: []byte(nginxConf)},
		File{Path: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		File{Path: "etc/group", Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		File{Path: "tmp", Dir: true, Mode: 0o777},
		File{Path: "var/log/nginx", Dir: true},
		File{Path: "var/lib/nginx", Dir: true},
	)
	img, err := Build(files, Config{Entrypoint: []string{nginx, "-c", "/etc/nginx/nginx.conf", "-g", "daemon off;"}})
	return NginxTag, img, err
}

// CoreDNS is kubeadm's cluster DNS image, named as kubeadm names it, with
// the coredns program (built from the tools module) and its libraries.
func CoreDNS(coredns, version string) (string, v1.Image, error) {
	files, err := Libraries(coredns)
	if err != nil {
		return "", nil, fmt.Errorf("coredns image: %w", err)
	}
	files = append(files, File{Path: "coredns", Source: coredns, Mode: 0o755})
	img, err := Build(files, Config{Entrypoint: []string{"/coredns"}})
	return CoreDNSRepository + ":" + version, img, err
}
