package images

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// KubeProxy is kube-proxy's image for Kubernetes version (v1.37.2), the
// tag KubeProxyRepository:version: the kube-proxy binary at the path
// given, at /usr/local/bin/kube-proxy, and the host's iptables, which
// kube-proxy's iptables mode runs from PATH: the xtables multi-binaries,
// their extension modules, the libraries of all of them, and the
// iptables, -save and -restore names (and ip6tables') for the flavour
// the host's own iptables runs, besides the explicit -nft and -legacy
// ones.
func KubeProxy(version, kubeProxy string) (string, v1.Image, error) {
	tag := KubeProxyRepository + ":" + version
	if _, err := name.NewTag(tag); err != nil {
		return "", nil, fmt.Errorf("kube-proxy version %q: %w (want e.g. v1.37.2)", version, err)
	}
	files := []File{{Path: "usr/local/bin/kube-proxy", Source: kubeProxy, Mode: 0o755}}
	ipt, err := iptablesFiles()
	if err != nil {
		return "", nil, fmt.Errorf("kube-proxy image: %w", err)
	}
	libs, err := Libraries(kubeProxy)
	if err != nil {
		return "", nil, fmt.Errorf("kube-proxy image: %w", err)
	}
	files = append(append(files, ipt...), libs...)
	// iptables-legacy takes its lock in /run when no volume is mounted
	// there.
	files = append(files, File{Path: "run", Dir: true})
	img, err := Build(files, Config{
		Entrypoint: []string{"/usr/local/bin/kube-proxy"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	return tag, img, err
}

// xtables is the host's iptables: its multi-binaries by flavour, and the
// one `iptables` runs.
type xtables struct {
	multi  map[string]string // "nft", "legacy" → /usr/sbin/xtables-nft-multi
	chosen string
}

var flavours = []string{"nft", "legacy"}

// hostXtables follows the host's iptables through its links
// (/usr/sbin/iptables → /etc/alternatives/iptables → iptables-nft →
// xtables-nft-multi) to the multi-binary, and finds its siblings.
func hostXtables() (xtables, error) {
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		ipt, err = exec.LookPath("/usr/sbin/iptables")
	}
	if err != nil {
		return xtables{}, fmt.Errorf("iptables is not installed: install iptables (kube-proxy's iptables mode runs it)")
	}
	chosen, err := filepath.EvalSymlinks(ipt)
	if err != nil {
		return xtables{}, fmt.Errorf("resolving %s: %w", ipt, err)
	}
	x := xtables{multi: map[string]string{}, chosen: chosen}
	for _, fl := range flavours {
		p := filepath.Join(filepath.Dir(chosen), "xtables-"+fl+"-multi")
		if _, err := os.Stat(p); err == nil {
			x.multi[fl] = p
		}
	}
	if x.multi["nft"] != chosen && x.multi["legacy"] != chosen {
		return xtables{}, fmt.Errorf("%s resolves to %s, not an xtables multi-binary: install iptables 1.8 or later", ipt, chosen)
	}
	return x, nil
}

// iptablesFiles is the host's iptables for an image: the multi-binaries
// at their host paths, the names in /usr/sbin, the extension modules and
// every library these load.
func iptablesFiles() ([]File, error) {
	x, err := hostXtables()
	if err != nil {
		return nil, err
	}
	var multis []string
	for _, fl := range flavours {
		if m, ok := x.multi[fl]; ok {
			multis = append(multis, m)
		}
	}
	files, err := WithLibraries(multis...)
	if err != nil {
		return nil, err
	}
	files = append(files, x.links()...)
	modules, moduleFiles, err := xtablesModules(files)
	if err != nil {
		return nil, err
	}
	// The modules are dlopen'ed: nothing in the binaries names their
	// libraries (libnetfilter_conntrack for connlabel, libm for
	// statistic…).
	modLibs, err := Libraries(moduleFiles...)
	if err != nil {
		return nil, err
	}
	return append(append(files, modules...), modLibs...), nil
}

// links are the iptables names in /usr/sbin, relative to where the
// multi-binaries are, as Debian's are.
func (x xtables) links() []File {
	var files []File
	link := func(name, target string) {
		rel, err := filepath.Rel("/usr/sbin", target)
		if err != nil {
			rel = target
		}
		files = append(files, File{Path: "usr/sbin/" + name, Link: rel})
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			link(family+suffix, x.chosen)
			for _, fl := range flavours {
				if m, ok := x.multi[fl]; ok {
					link(family+"-"+fl+suffix, m)
				}
			}
		}
	}
	return files
}

// xtablesModules is the extension modules directory of the libxtables
// among files, entry by entry (symlinks kept), and its regular files.
//
// libxtables dlopens the modules from the directory compiled into it
// (XTABLES_LIBDIR), so the image must hold them exactly there; reading
// that string out of the library finds it on any distribution, where a
// guess from the library's own directory would only be right on some.
func xtablesModules(files []File) ([]File, []string, error) {
	var libxtables string
	for _, f := range files {
		if matched, _ := filepath.Match("libxtables.so*", filepath.Base(f.Source)); matched {
			libxtables = f.Source
		}
	}
	if libxtables == "" {
		return nil, nil, fmt.Errorf("the xtables multi-binaries load no libxtables: reinstall iptables")
	}
	dir, err := xtablesModuleDir(libxtables)
	if err != nil {
		return nil, nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("iptables modules: %w", err)
	}
	var modules []File
	var regular []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return nil, nil, err
			}
			modules = append(modules, File{Path: p[1:], Link: target})
		case e.Type().IsRegular():
			modules = append(modules, File{Path: p[1:], Source: p})
			regular = append(regular, p)
		}
	}
	return modules, regular, nil
}

// xtablesModuleDir is the absolute directory named in libxtables that
// ends in /xtables and exists here.
func xtablesModuleDir(libxtables string) (string, error) {
	b, err := os.ReadFile(libxtables)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", libxtables, err)
	}
	for _, s := range bytes.Split(b, []byte{0}) {
		if !bytes.HasPrefix(s, []byte("/")) || !bytes.HasSuffix(s, []byte("/xtables")) {
			continue
		}
		if fi, err := os.Stat(string(s)); err == nil && fi.IsDir() {
			return string(s), nil
		}
	}
	return "", fmt.Errorf("%s names no iptables modules directory that exists here: reinstall libxtables12 and iptables", libxtables)
}
