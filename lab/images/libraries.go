package images

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
)

// WithLibraries is the binaries, each at its host path in the image, and
// the shared libraries they load (Libraries). A static binary comes
// alone.
func WithLibraries(binaries ...string) ([]File, error) {
	abs, err := absolute(binaries)
	if err != nil {
		return nil, err
	}
	var files []File
	for _, b := range abs {
		files = append(files, File{Path: b[1:], Source: b})
	}
	libs, err := Libraries(abs...)
	if err != nil {
		return nil, err
	}
	return append(files, libs...), nil
}

// Libraries is the shared libraries the binaries (executables or
// libraries) load, the dynamic loader included, each at the path the
// host's loader resolves it to: those are the paths the loader searches
// in the image too. Symlinked libraries are copied as the resolved file
// under the name the binary asks for.
//
// The answer is glibc's ldd, not a search of our own over the ELF's
// DT_NEEDED: ldd is the loader itself telling where it would look
// (ld.so.cache, glibc-hwcaps subdirectories, RUNPATH, $ORIGIN), which a
// reimplementation would get subtly wrong; ldd runs only host binaries
// we trust, and is part of libc-bin, always installed.
func Libraries(binaries ...string) ([]File, error) {
	abs, err := absolute(binaries)
	if err != nil {
		return nil, err
	}
	var dynamic []string
	for _, b := range abs {
		d, err := isDynamic(b)
		if err != nil {
			return nil, err
		}
		if d {
			dynamic = append(dynamic, b)
		}
	}
	if len(dynamic) == 0 {
		return nil, nil
	}
	needs, err := ldd(dynamic)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var files []File
	for _, b := range dynamic {
		for _, lib := range needs[b] {
			if !seen[lib] {
				seen[lib] = true
				files = append(files, File{Path: lib[1:], Source: lib})
			}
		}
	}
	return files, nil
}

// absolute is paths made absolute: the image holds each at the same
// path as the host, and ldd names binaries as it was given them.
func absolute(paths []string) ([]string, error) {
	abs := make([]string, len(paths))
	for i, p := range paths {
		var err error
		if abs[i], err = filepath.Abs(p); err != nil {
			return nil, err
		}
	}
	return abs, nil
}

// isDynamic tells whether bin loads shared libraries: it names an
// interpreter, or (a static PIE has a dynamic section too) it needs a
// library.
func isDynamic(bin string) (bool, error) {
	f, err := elf.Open(bin)
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%s does not exist: install the package that ships it (apt-file search %s), or give its path", bin, filepath.Base(bin))
	}
	if err != nil {
		return false, fmt.Errorf("%s: %w (want an ELF binary)", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return false, fmt.Errorf("%s: reading its dynamic section: %w", bin, err)
	}
	return len(needed) > 0, nil
}

// ldd is the libraries each binary loads, by absolute path, as ldd
// prints them: one run for all, since a run costs a few milliseconds
// and an image may hold a hundred iptables modules.
func ldd(bins []string) (map[string][]string, error) {
	out, err := exec.Command("ldd", bins...).Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("ldd, which lists the libraries of %s, is not installed: install libc-bin", strings.Join(bins, ", "))
	}
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", strings.Join(bins, " "), err, stderr)
	}
	return parseLDD(bins, string(out))
}

// parseLDD reads ldd's output: with several binaries, each one's list
// follows a "path:" line; a list has one tab-indented line per library:
//
//	linux-vdso.so.1 (0x…)                              in the kernel: no file
//	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)
//	/lib64/ld-linux-x86-64.so.2 (0x…)                  the loader
//	libwrap.so.0 => not found
func parseLDD(bins []string, out string) (map[string][]string, error) {
	needs := map[string][]string{}
	cur := bins[0]
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if !strings.HasPrefix(line, "\t") {
			cur = strings.TrimSuffix(line, ":")
			continue
		}
		line = strings.TrimSpace(line)
		lib, where, resolved := strings.Cut(line, " => ")
		if !resolved {
			where = line
		}
		if strings.HasPrefix(where, "not found") {
			return nil, fmt.Errorf("%s needs %s, which the loader cannot find: install the package that ships it (apt-file search %s)", cur, lib, lib)
		}
		if p := strings.Fields(where); len(p) > 0 && strings.HasPrefix(p[0], "/") {
			needs[cur] = append(needs[cur], p[0])
		}
	}
	return needs, nil
}
