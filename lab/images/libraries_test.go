package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWithLibraries(t *testing.T) {
	pause := filepath.Join(pauseBinDir(t), "pause")
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		binaries []string
		// want is the paths, all of them or (include) some.
		want    []string
		include bool
		wantErr []string
	}{{
		name:     "a static binary is alone",
		binaries: []string{pause},
		want:     []string{pause[1:]},
	}, {
		name:     "a dynamic one brings its loader and libraries",
		binaries: []string{tftpd},
		want:     []string{"usr/sbin/in.tftpd", interp(t, tftpd), "libwrap.so.0", "libc.so.6"},
		include:  true,
	}, {
		name:     "a missing binary",
		binaries: []string{"/nonexistent/kube-proxy"},
		wantErr:  []string{"/nonexistent/kube-proxy does not exist", "install the package that ships it"},
	}, {
		name:     "not a binary",
		binaries: []string{text},
		wantErr:  []string{text, "want an ELF binary"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files, err := WithLibraries(c.binaries...)
			if wantError(t, err, c.wantErr...) {
				return
			}
			var got []string
			for _, f := range files {
				if f.Source != "/"+f.Path {
					t.Errorf("%s copied from %s, want the same path as on the host", f.Path, f.Source)
				}
				got = append(got, f.Path)
			}
			if c.include {
				got = containing(got, c.want)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("paths (-want +got):\n%s", diff)
			}
		})
	}
}

// containing is, for each of want, the first of got that is it or ends
// in /it (a library's directory depends on the distribution), or "".
func containing(got, want []string) []string {
	var found []string
	for _, w := range want {
		match := ""
		for _, g := range got {
			if g == w || strings.HasSuffix(g, "/"+w) {
				match = w
				break
			}
		}
		found = append(found, match)
	}
	return found
}

func TestParseLDD(t *testing.T) {
	cases := []struct {
		name    string
		bins    []string
		out     string
		want    map[string][]string
		wantErr string
	}{{
		name: "one binary: no header; the vDSO has no file",
		bins: []string{"/usr/sbin/in.tftpd"},
		out: "\tlinux-vdso.so.1 (0x00007ffd)\n" +
			"\tlibwrap.so.0 => /lib/x86_64-linux-gnu/libwrap.so.0 (0x00007f12)\n" +
			"\t/lib64/ld-linux-x86-64.so.2 (0x00007f13)\n",
		want: map[string][]string{"/usr/sbin/in.tftpd": {"/lib/x86_64-linux-gnu/libwrap.so.0", "/lib64/ld-linux-x86-64.so.2"}},
	}, {
		name: "several: a header each",
		bins: []string{"/a", "/b"},
		out: "/a:\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n" +
			"/b:\n\tlinux-vdso.so.1 (0x2)\n\tlibm.so.6 => /lib/libm.so.6 (0x3)\n\tstatically linked\n",
		want: map[string][]string{"/a": {"/lib/libc.so.6"}, "/b": {"/lib/libm.so.6"}},
	}, {
		name:    "a library the loader cannot find",
		bins:    []string{"/usr/sbin/in.tftpd"},
		out:     "\tlibwrap.so.0 => not found\n",
		wantErr: "/usr/sbin/in.tftpd needs libwrap.so.0, which the loader cannot find: install the package that ships it",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseLDD(c.bins, c.out)
			if wantError(t, err, c.wantErr) {
				return
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
