package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/agent/installcni"
)

// `calyx-agent install-cni` with the paths of a pod of the DaemonSet
// moved into temp dirs and the API server from the kubelet's environment.
func TestInstallCNISubcommand(t *testing.T) {
	root := t.TempDir()
	dir := func(p string) string {
		d := filepath.Join(root, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	src, bin, conf, sa := dir("image"), dir("host/opt/cni/bin"), dir("host/etc/cni/net.d"), dir("sa")
	for _, p := range installcni.Plugins {
		os.WriteFile(filepath.Join(src, p), []byte("#!/bin/sh\n"), 0o755)
	}
	os.WriteFile(filepath.Join(sa, "token"), []byte("t"), 0o600)
	os.WriteFile(filepath.Join(sa, "ca.crt"), []byte("ca"), 0o600)
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	args := []string{"install-cni", "--src-dir", src, "--cni-bin-dir", bin, "--cni-conf-dir", conf,
		"--token-file", filepath.Join(sa, "token"), "--ca-file", filepath.Join(sa, "ca.crt")}
	for i := range 2 {
		if code := run(args); code != 0 {
			t.Fatalf("run %d: exit %d", i, code)
		}
	}
	var got []string
	for _, d := range []string{bin, conf} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			got = append(got, e.Name())
		}
	}
	if diff := cmp.Diff([]string{"calyx", "calyx-ipam", "loopback", "portmap", "10-calyx.conflist", "calyx-kubeconfig"}, got); diff != "" {
		t.Errorf("installed (-want +got):\n%s", diff)
	}
	kc, _ := os.ReadFile(filepath.Join(conf, "calyx-kubeconfig"))
	if want := `"server": "https://[fd00::1]:443"`; !contains(kc, want) {
		t.Errorf("kubeconfig lacks %s:\n%s", want, kc)
	}
	if code := run([]string{"install-cni", "extra"}); code != 2 {
		t.Errorf("install-cni with an argument: exit %d, want 2", code)
	}
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }
