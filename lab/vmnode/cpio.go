package vmnode

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/calyx-net/calyx/lab/images"
)

// writeCPIO writes files as the "newc" cpio archive the kernel unpacks as
// its initramfs (Documentation/driver-api/early-userspace/buffer-format):
// directories first, then everything in path order, then the trailer.
func writeCPIO(w io.Writer, files []images.File) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	c := &cpio{w: bw, ino: 1, mtime: time.Unix(0, 0)}
	dirs := map[string]bool{}
	var mkdirs func(d string) error
	mkdirs = func(d string) error {
		if d == "." || d == "/" || d == "" || dirs[d] {
			return nil
		}
		if err := mkdirs(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return c.entry(d, 0o040755, nil)
	}
	sorted := append([]images.File(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		p := strings.TrimPrefix(path.Clean(f.Path), "/")
		if err := mkdirs(path.Dir(p)); err != nil {
			return err
		}
		if err := c.file(p, f); err != nil {
			return err
		}
		if f.Dir {
			dirs[p] = true
		}
	}
	if err := c.entry("TRAILER!!!", 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

type cpio struct {
	w     *bufio.Writer
	ino   int
	n     int64
	mtime time.Time
}

func (c *cpio) file(p string, f images.File) error {
	switch {
	case f.Dir:
		return c.entry(p, 0o040000|uint32(orDefault(f.Mode, 0o755)), nil)
	case f.Link != "":
		return c.entry(p, 0o120000|0o777, []byte(f.Link))
	case f.Data != nil:
		return c.entry(p, 0o100000|uint32(orDefault(f.Mode, 0o644)), f.Data)
	}
	b, err := os.ReadFile(f.Source)
	if err != nil {
		return fmt.Errorf("initramfs file %s: %w", p, err)
	}
	mode := f.Mode
	if mode == 0 {
		if fi, err := os.Stat(f.Source); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	return c.entry(p, 0o100000|uint32(mode), b)
}

// entry writes one header, the name and the data, each padded to 4 bytes.
func (c *cpio) entry(name string, mode uint32, data []byte) error {
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, c.mtime.Unix(), len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.ino++
	if err := c.write([]byte(hdr + name + "\x00")); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpio) write(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

func (c *cpio) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func orDefault(m, def fs.FileMode) fs.FileMode {
	if m == 0 {
		return def
	}
	return m
}
