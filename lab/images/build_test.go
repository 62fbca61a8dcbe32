package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBuild(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	all := func(string) bool { return true }
	cases := []struct {
		name    string
		files   []File
		want    []layerEntry
		wantErr string
	}{{
		name: "each kind, parents first, in the order given, modes defaulted",
		files: []File{
			{Path: "usr/sbin/tool", Source: src},
			{Path: "usr/sbin/alias", Link: "tool"},
			{Path: "etc/motd", Data: []byte("hi\n")},
			{Path: "etc/secret", Data: []byte("s"), Mode: 0o600},
			{Path: "srv/tftp", Dir: true},
			{Path: "run/empty"},
		},
		want: []layerEntry{
			{Name: "usr/", Mode: 0o755},
			{Name: "usr/sbin/", Mode: 0o755},
			{Name: "usr/sbin/tool", Mode: 0o750, Data: "#!/bin/sh\n"},
			{Name: "usr/sbin/alias", Mode: 0o777, Link: "tool"},
			{Name: "etc/", Mode: 0o755},
			{Name: "etc/motd", Mode: 0o644, Data: "hi\n"},
			{Name: "etc/secret", Mode: 0o600, Data: "s"},
			{Name: "srv/", Mode: 0o755},
			{Name: "srv/tftp/", Mode: 0o755},
			{Name: "run/", Mode: 0o755},
			{Name: "run/empty", Mode: 0o644},
		},
	}, {
		name:  "the same file twice is one",
		files: []File{{Path: "lib/libc.so.6", Source: src}, {Path: "lib/libc.so.6", Source: src}},
		want:  []layerEntry{{Name: "lib/", Mode: 0o755}, {Name: "lib/libc.so.6", Mode: 0o750, Data: "#!/bin/sh\n"}},
	}, {
		name:    "one path, two contents",
		files:   []File{{Path: "etc/passwd", Data: []byte("a")}, {Path: "etc/passwd", Data: []byte("b")}},
		wantErr: "etc/passwd is listed twice, differently",
	}, {
		name:    "absolute path",
		files:   []File{{Path: "/etc/passwd"}},
		wantErr: "want a clean relative path",
	}, {
		name:    "escaping path",
		files:   []File{{Path: "../etc/passwd"}},
		wantErr: "want a clean relative path",
	}, {
		name:    "unclean path",
		files:   []File{{Path: "usr//bin"}},
		wantErr: "want a clean relative path",
	}, {
		name:    "two kinds",
		files:   []File{{Path: "bin/sh", Link: "busybox", Data: []byte("x")}},
		wantErr: "set one of Source, Data, Link and Dir",
	}, {
		name:    "a file where a directory is",
		files:   []File{{Path: "bin/sh", Data: []byte("x")}, {Path: "bin", Data: []byte("y")}},
		wantErr: "bin is a directory already",
	}, {
		name:    "a directory where a file is",
		files:   []File{{Path: "bin", Data: []byte("y")}, {Path: "bin/sh", Data: []byte("x")}},
		wantErr: "bin is not a directory",
	}, {
		name:    "missing source",
		files:   []File{{Path: "usr/bin/nothing", Source: "/nonexistent/nothing"}},
		wantErr: "/nonexistent/nothing for usr/bin/nothing",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := Build(c.files, Config{})
			if wantError(t, err, c.wantErr) {
				return
			}
			if diff := cmp.Diff(c.want, layerEntries(t, img, all)); diff != "" {
				t.Errorf("layer (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildConfig(t *testing.T) {
	cfg := Config{
		Entrypoint: []string{"/bin/sh"},
		Cmd:        []string{"-c", "true"},
		Env:        []string{"PATH=/bin"},
		WorkingDir: "/srv",
		Labels:     map[string]string{"a": "b"},
	}
	img, err := Build([]File{{Path: "bin/sh", Data: []byte{}}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := writeAndRead(t, "localhost/x:y", img).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	got := Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, Labels: c.Labels}
	if diff := cmp.Diff(cfg, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s, want linux/<GOARCH>", cf.OS, cf.Architecture)
	}
}

// Write replaces the file whole, and leaves nothing else behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(out, []byte("an older image"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Build([]File{{Path: "x", Data: []byte("x")}}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(out, "localhost/x:y", img); err != nil {
		t.Fatal(err)
	}
	if err := Write(out, "not a tag", img); err == nil || !strings.Contains(err.Error(), `image tag "not a tag"`) {
		t.Errorf("Write with a bad tag: %v, want an error naming it", err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if diff := cmp.Diff([]string{out}, append(names, hidden...)); diff != "" {
		t.Errorf("files in the directory (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o644 || fi.Size() < 512 {
		t.Errorf("%s: %v, %v; want a readable tarball", out, fi, err)
	}
}
