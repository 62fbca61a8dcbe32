package installcni_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/installcni"
)

type env struct {
	cfg installcni.Config
	src string
	// token is what the plugins' account is issued next; err fails the
	// request instead.
	token *string
	err   *error
}

// newEnv lays out an image's plugin directory, empty host CNI
// directories and the cluster CA in temp dirs, with a token issuer that
// hands out e.token.
func newEnv(t *testing.T) env {
	t.Helper()
	root := t.TempDir()
	token, reqErr := "token-1", error(nil)
	e := env{src: filepath.Join(root, "image/opt/calyx/cni/bin"), token: &token, err: &reqErr, cfg: installcni.Config{
		BinDir:      filepath.Join(root, "host/opt/cni/bin"),
		ConfDir:     filepath.Join(root, "host/etc/cni/net.d"),
		HostConfDir: "/etc/cni/net.d",
		Server:      "https://10.96.0.1:443",
		CAFile:      filepath.Join(root, "sa/ca.crt"),
		Tokens: installcni.Tokens{Subject: pluginSubject, Request: func(context.Context) (installcni.Token, error) {
			return installcni.Token{Value: token}, reqErr
		}},
	}}
	e.cfg.SrcDir = e.src
	for _, d := range []string{e.src, e.cfg.BinDir, e.cfg.ConfDir, filepath.Join(root, "sa")} {
		mustMkdir(t, d)
	}
	for _, p := range installcni.Plugins {
		copyFile(t, "/bin/true", filepath.Join(e.src, p))
	}
	mustWrite(t, e.cfg.CAFile, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	return e
}

const pluginSubject = "system:serviceaccount:kube-system:calyx-cni-plugin"

func TestInstall(t *testing.T) {
	e := newEnv(t)
	changed, err := installcni.Install(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, p := range installcni.Plugins {
		want = append(want, filepath.Join(e.cfg.BinDir, p))
	}
	want = append(want, filepath.Join(e.cfg.ConfDir, "calyx-kubeconfig"), filepath.Join(e.cfg.ConfDir, "10-calyx.conflist"))
	if diff := cmp.Diff(want, changed); diff != "" {
		t.Errorf("first run changed (-want +got):\n%s", diff)
	}

	// The binaries run.
	for _, p := range installcni.Plugins {
		if out, err := exec.Command(filepath.Join(e.cfg.BinDir, p)).CombinedOutput(); err != nil {
			t.Errorf("running installed %s: %v %s", p, err, out)
		}
	}
	// The conflist is what a runtime loads, and points the IPAM at the
	// kubeconfig where the host sees it.
	cl, err := libcni.ConfListFromFile(filepath.Join(e.cfg.ConfDir, "10-calyx.conflist"))
	if err != nil {
		t.Fatalf("libcni cannot load the conflist: %v", err)
	}
	var types []string
	for _, p := range cl.Plugins {
		types = append(types, p.Network.Type)
	}
	if diff := cmp.Diff([]string{"calyx", "portmap"}, types); diff != "" {
		t.Errorf("conflist plugins (-want +got):\n%s", diff)
	}
	if !bytes.Contains(cl.Plugins[0].Bytes, []byte(`"kubeconfig":"/etc/cni/net.d/calyx-kubeconfig"`)) {
		t.Errorf("conflist's ipam kubeconfig is not /etc/cni/net.d/calyx-kubeconfig: %s", cl.Plugins[0].Bytes)
	}
	// The kubeconfig is one client-go loads, with the token issued for
	// the plugins' account, readable by root only.
	kc := filepath.Join(e.cfg.ConfDir, "calyx-kubeconfig")
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatalf("client-go cannot load the kubeconfig: %v", err)
	}
	type creds struct{ Host, Token, CA string }
	if diff := cmp.Diff(creds{"https://10.96.0.1:443", "token-1", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
		creds{rc.Host, rc.BearerToken, string(rc.CAData)}); diff != "" {
		t.Errorf("kubeconfig (-want +got):\n%s", diff)
	}
	if fi, _ := os.Stat(kc); fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode %v, want 0600", fi.Mode().Perm())
	}

	// A second run touches nothing: same inodes, same mtimes (and the
	// kubeconfig too when the token issued is the same).
	before := snapshot(t, e.cfg.BinDir, e.cfg.ConfDir)
	time.Sleep(10 * time.Millisecond)
	changed, err = installcni.Install(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 0 {
		t.Errorf("second run changed %v, want nothing", changed)
	}
	if diff := cmp.Diff(before, snapshot(t, e.cfg.BinDir, e.cfg.ConfDir)); diff != "" {
		t.Errorf("second run touched files (-before +after):\n%s", diff)
	}

	// A new token: only the kubeconfig changes.
	*e.token = "token-2"
	changed, err = installcni.Install(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{kc}, changed); diff != "" {
		t.Errorf("after a token rotation, changed (-want +got):\n%s", diff)
	}
}

// Errors say what to do.
func TestInstallErrors(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(*env)
		want    string
	}{
		{"no server", func(e *env) { e.cfg.Server = "" }, "no API server address: set --server, or KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"},
		{"no plugin", func(e *env) { os.Remove(filepath.Join(e.src, "portmap")) }, "is --src-dir the image's plugin directory?"},
		{"token refused", func(e *env) { *e.err = errors.New("requesting a token: forbidden (apply deploy/calyx.yaml)") }, "forbidden (apply deploy/calyx.yaml)"},
		{"no CA", func(e *env) { os.Remove(e.cfg.CAFile) }, "is the pod's service account mounted?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			tt.breakIt(&e)
			_, err := installcni.Install(context.Background(), e.cfg)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// While a loop runs the installed plugin as the kubelet would, install-cni
// replaces it 50 times with alternating versions: every exec runs a whole
// binary, never fails with "text file busy" or "exec format error".
func TestReplaceWhileRunning(t *testing.T) {
	e := newEnv(t)
	versions := [][]byte{readFile(t, "/bin/true"), readFile(t, "/bin/echo")}
	if _, err := installcni.Install(context.Background(), e.cfg); err != nil {
		t.Fatal(err)
	}
	plugin := filepath.Join(e.cfg.BinDir, "calyx")
	// The runner is another process, as the kubelet is: in this one, a
	// fork racing with the write of a temp file would inherit its
	// writable descriptor and fail our own exec with "text file busy"
	// (golang/go#22315), which says nothing about install-cni.
	stop := filepath.Join(t.TempDir(), "stop")
	runner := exec.Command("sh", "-c", `n=0; while [ ! -e "$2" ]; do "$1" >/dev/null || exit 1; n=$((n+1)); done; echo $n`, "sh", plugin, stop)
	var out bytes.Buffer
	runner.Stdout, runner.Stderr = &out, &out
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		for _, p := range installcni.Plugins {
			if err := os.WriteFile(filepath.Join(e.src, p), versions[i%2], 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := installcni.Install(context.Background(), e.cfg); err != nil {
			t.Fatalf("install %d: %v", i, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	mustWrite(t, stop, "")
	if err := runner.Wait(); err != nil {
		t.Fatalf("running the plugin while it was replaced: %v\n%s", err, out.String())
	}
	execs, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	t.Logf("%d execs during 50 replacements", execs)
	if execs < 50 {
		t.Errorf("only %d execs ran during the replacements (%q); the test proves little", execs, out.String())
	}
	// No temporary file is left behind.
	ents, _ := os.ReadDir(e.cfg.BinDir)
	if len(ents) != len(installcni.Plugins) {
		t.Errorf("bin dir has %d entries, want %d: %v", len(ents), len(installcni.Plugins), ents)
	}
}

type fileState struct {
	Ino   uint64
	MTime time.Time
}

func snapshot(t *testing.T, dirs ...string) map[string]fileState {
	t.Helper()
	m := map[string]fileState{}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, ent := range ents {
			fi, err := ent.Info()
			if err != nil {
				t.Fatal(err)
			}
			m[filepath.Join(d, ent.Name())] = fileState{fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime()}
		}
	}
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func mustMkdir(t *testing.T, d string) {
	t.Helper()
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.WriteFile(to, readFile(t, from), 0o755); err != nil {
		t.Fatal(err)
	}
}
