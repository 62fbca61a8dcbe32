// Package kubebin provides the Kubernetes binaries calyx's tests and lab run
// for real. They are built from the k8s.io/kubernetes module pinned in the
// tools module (hack/tools), once, and cached outside the repository under a
// name that carries the version, so a pin change builds afresh.
package kubebin

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ToolsDirEnv overrides where the tools module is looked for.
const ToolsDirEnv = "CALYX_TOOLS_DIR"

// CacheDir is where built binaries are kept:
// ${XDG_CACHE_HOME:-$HOME/.cache}/calyx.
func CacheDir() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("finding the cache dir: set XDG_CACHE_HOME or HOME: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "calyx"), nil
}

// ToolsDir finds the tools module: $CALYX_TOOLS_DIR, else hack/tools in the
// first parent of the working directory or of the executable that has one.
func ToolsDir() (string, error) {
	if d := os.Getenv(ToolsDirEnv); d != "" {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err != nil {
			return "", fmt.Errorf("%s=%s has no go.mod: point it at calyx's hack/tools: %w", ToolsDirEnv, d, err)
		}
		return d, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			cand := filepath.Join(dir, "hack", "tools")
			if _, err := os.Stat(filepath.Join(cand, "go.mod")); err == nil {
				return cand, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("cannot find calyx's hack/tools module from %v: run from inside the calyx checkout or set %s", starts, ToolsDirEnv)
}

// Version is the k8s.io/kubernetes version the tools module pins.
func Version(toolsDir string) (string, error) {
	return ModuleVersion(toolsDir, "k8s.io/kubernetes")
}

// ModuleVersion is the version of module the tools module requires.
func ModuleVersion(toolsDir, module string) (string, error) {
	b, err := os.ReadFile(filepath.Join(toolsDir, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("reading the tools module: %w", err)
	}
	re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(module) + `\s+(v\S+)`)
	m := re.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s/go.mod does not require %s", toolsDir, module)
	}
	return string(m[1]), nil
}

// Programs built from the tools module besides k8s.io/kubernetes/cmd/NAME:
// a package path, or "test:" and a test package for `go test -c`.
var programs = map[string]string{
	// kubeadm's cluster DNS, with the plugins its Corefile uses.
	"coredns": "github.com/calyx-net/calyx/hack/tools/coredns",
	// The e2e tests' do-everything server and client.
	"agnhost": "k8s.io/kubernetes/test/images/agnhost",
	// Kubernetes' e2e suite with the sig-network specs (hack/tools/e2e).
	"e2e-network.test": "test:github.com/calyx-net/calyx/hack/tools/e2e",
}

// programModules are the modules of programs not from k8s.io/kubernetes.
var programModules = map[string]string{"coredns": "github.com/coredns/coredns"}

// Ensure returns the path of the named binary (kube-apiserver, kube-proxy,
// kube-controller-manager, …, or one of programs), building it first if
// the cache lacks it. Builds take minutes, so it says so on progress and
// reports how far it is. Concurrent callers, in this process or others,
// build it once.
func Ensure(ctx context.Context, name string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	tools, err := ToolsDir()
	if err != nil {
		return "", err
	}
	version, err := Version(tools)
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	// A program of another module is cached under that module's version.
	bin := filepath.Join(cache, name+"-"+version)
	if m := programModules[name]; m != "" {
		v, err := ModuleVersion(tools, m)
		if err != nil {
			return "", err
		}
		bin = filepath.Join(cache, name+"-"+v)
	}
	err = FillOnce(filepath.Join(cache, ".build.lock"), func() bool { return isExecutable(bin) }, func() error {
		return build(ctx, tools, name, version, bin, progress)
	})
	if err != nil {
		return "", err
	}
	return bin, nil
}

// FillOnce runs fill unless done reports it has run, holding the lock
// file (created with its directory) meanwhile: processes side by side fill
// the cache once, and a second test package waits for the first build
// instead of starting another that needs as much memory again.
func FillOnce(lock string, done func() bool, fill func() error) error {
	if done() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		return fmt.Errorf("creating the cache dir: %w", err)
	}
	unlock, err := LockFile(lock)
	if err != nil {
		return err
	}
	defer unlock()
	if done() {
		return nil
	}
	return fill()
}

// LockFile takes an exclusive lock on path, creating it, and returns the
// function that releases it: what fills the cache takes it, so that
// processes side by side fill it once.
func LockFile(path string) (func(), error) {
	lock, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the build lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	return func() { syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); lock.Close() }, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// ldflags stamp the version into the binary so that /version and
// `kubectl version` report what it really is.
func ldflags(version string) string {
	major, minor := "", ""
	if parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3); len(parts) >= 2 {
		major, minor = parts[0], parts[1]
	}
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", pkg+".gitVersion="+version,
			"-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean",
		)
	}
	return strings.Join(flags, " ")
}

func build(ctx context.Context, tools, name, version, bin string, progress io.Writer) error {
	pkg, ok := programs[name]
	if !ok {
		pkg = "k8s.io/kubernetes/cmd/" + name
	}
	pkg, test := strings.CutPrefix(pkg, "test:")
	start := time.Now()
	// The cache name carries the program's own version (coredns-v1.14.6),
	// which for a program of another module is not Kubernetes'.
	fmt.Fprintf(progress, "building %s from %s: first run only, it takes a few minutes and ~3 GB of memory; cached as %s\n", filepath.Base(bin), tools, bin)

	// The number of packages to compile gives the progress a denominator.
	listArgs := []string{"list", "-deps", pkg}
	if test {
		listArgs = []string{"list", "-deps", "-test", pkg}
	}
	list := exec.CommandContext(ctx, "go", listArgs...)
	list.Dir = tools
	var listErr bytes.Buffer
	list.Stderr = &listErr
	out, err := list.Output()
	if err != nil {
		return fmt.Errorf("listing %s's packages (is the Go module proxy reachable?): %w\n%s", pkg, err, listErr.String())
	}
	total := bytes.Count(out, []byte("\n"))

	tmp := bin + ".tmp"
	if test {
		// go test -c names no package it compiles: compile the test's
		// imports with go build -v first (progress), then link.
		if err := buildTestImports(ctx, tools, name, pkg, total, start, progress); err != nil {
			return err
		}
		link := exec.CommandContext(ctx, "go", "test", "-c", "-vet=off", "-trimpath", "-ldflags", ldflags(version), "-o", tmp, pkg)
		link.Dir = tools
		if out, err := link.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("building %s: %w\n%s", name, err, out)
		}
	} else {
		cmd := exec.CommandContext(ctx, "go", "build", "-v", "-trimpath", "-ldflags", ldflags(version), "-o", tmp, pkg)
		cmd.Dir = tools
		if err := runCounting(ctx, cmd, name, total, start, progress); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, bin); err != nil {
		return fmt.Errorf("caching %s: %w", name, err)
	}
	fmt.Fprintf(progress, "built %s in %s\n", filepath.Base(bin), time.Since(start).Round(time.Second))
	return nil
}

// buildTestImports compiles what the test package pkg imports, showing
// progress, so that `go test -c` after it only compiles pkg and links.
func buildTestImports(ctx context.Context, tools, name, pkg string, total int, start time.Time, progress io.Writer) error {
	list := exec.CommandContext(ctx, "go", "list", "-f", `{{join .Imports "\n"}}{{"\n"}}{{join .TestImports "\n"}}`, pkg)
	list.Dir = tools
	out, err := list.Output()
	if err != nil {
		return fmt.Errorf("listing %s's imports: %w", pkg, err)
	}
	var imports []string
	for _, imp := range strings.Fields(string(out)) {
		if imp != "C" && !slices.Contains(imports, imp) {
			imports = append(imports, imp)
		}
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-v", "-trimpath"}, imports...)...)
	cmd.Dir = tools
	return runCounting(ctx, cmd, name, total, start, progress)
}

// runCounting runs a `go build -v` or `go install -v`, which names each
// package as it compiles it on stderr, and reports the count every 10 s.
// total may be 0 when it is not known.
func runCounting(ctx context.Context, cmd *exec.Cmd, name string, total int, start time.Time, progress io.Writer) error {
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	var compiled atomic.Int64
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			compiled.Add(1)
			tail = append(tail, sc.Text())
			if len(tail) > 30 {
				tail = tail[1:]
			}
		}
	}()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	waitErr := make(chan error, 1)
	go func() { <-done; waitErr <- cmd.Wait() }()
	of := ""
	if total > 0 {
		of = fmt.Sprintf(" of ~%d", total)
	}
	for {
		select {
		case <-tick.C:
			fmt.Fprintf(progress, "  %s: compiled %d%s packages (%s)\n", name, compiled.Load(), of, time.Since(start).Round(time.Second))
		case err := <-waitErr:
			if err != nil {
				return fmt.Errorf("building %s failed: %w\n%s", name, err, strings.Join(tail, "\n"))
			}
			return nil
		case <-ctx.Done():
			<-waitErr
			return fmt.Errorf("building %s: %w", name, ctx.Err())
		}
	}
}

// ModuleDir is the directory of module's source in the module cache, as
// the tools module requires it (its test data, agnhost's TLS pair, …).
func ModuleDir(ctx context.Context, toolsDir, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", module)
	cmd.Dir = toolsDir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("finding %s's source (go list -m): %w", module, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("%s is not in the module cache: run `go mod download` in %s", module, toolsDir)
	}
	return dir, nil
}
