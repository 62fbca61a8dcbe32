package node

import (
	"strings"
	"testing"
)

// containerd's verbose sandbox info, trimmed to what PodNetNS reads: 1.6
// and 2.x both carry the OCI spec's namespaces.
func TestNetNSFromInfo(t *testing.T) {
	for _, tc := range []struct {
		name, info, want, wantErr string
	}{
		{"containerd", `{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1234"},{"type":"ipc"}]}}}`, "/var/run/netns/cni-1234", ""},
		{"host network", `{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"}]}}}`, "", "no network namespace path"},
		{"garbage", `not json`, "", "parsing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := netnsFromInfo(tc.info)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one that says %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("netnsFromInfo = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A node's directory may not be under a directory the node overlays:
// overlayfs refuses layers inside each other.
func TestCheckDir(t *testing.T) {
	for dir, ok := range map[string]bool{
		"/run/calyx-lab/nodes/learn-k8s-2": true,
		"/tmp/TestLab1/lab/nodes/n":        true,
		"/var/tmp/lab/nodes/n":             false,
		"/etc":                             false,
		"/optional/lab":                    true,
		"relative/lab":                     false,
	} {
		if err := checkDir(dir); (err == nil) != ok {
			t.Errorf("checkDir(%q) = %v, want ok=%v", dir, err, ok)
		}
	}
}

// Each runtime gets the configuration format it reads, with what root
// without CAP_SYS_RESOURCE needs and the runc it is given.
func TestContainerdConfigs(t *testing.T) {
	for r, want := range map[Runtime][]string{
		Containerd16: {"version = 2", `sandbox_image = "registry.k8s.io/pause:3.10"`, "restrict_oom_score_adj = true", `BinaryName = "/x/runc"`, `bin_dir = "/opt/cni/bin"`, `runtimes.ref]`, `cni_conf_dir = "/etc/cni/ref.d"`},
		Containerd2:  {"version = 3", `sandbox = "registry.k8s.io/pause:3.10"`, "restrict_oom_score_adj = true", `BinaryName = "/x/runc"`, `bin_dirs = ["/opt/cni/bin"]`, `runtimes.ref]`, `cni_conf_dir = "/etc/cni/ref.d"`},
	} {
		files, err := configFiles(Config{Name: "n", Runtime: r, Runc: "/x/runc", CgroupRoot: "/calyx-lab/n", RefCNI: true})
		if err != nil {
			t.Fatal(err)
		}
		text := string(files["etc/containerd/config.toml"].data)
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("%s's config.toml lacks %q:\n%s", r, w, text)
			}
		}
	}
}
