// Command image writes calyx's container image as a tarball that `docker
// load` and `kind load image-archive` accept, without a Docker daemon:
// the static binaries of `make build` in one layer on an empty base
// (lab/images builds it, as it builds the lab's other images).
//
//	go run ./hack/image --bin-dir bin --tag ghcr.io/calyx-net/calyx:dev --out bin/calyx-image.tar
//
// The layer has fixed timestamps and owners, so the same binaries give
// the same image digest.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/calyx-net/calyx/lab/images"
)

func main() {
	binDir := flag.String("bin-dir", "bin", "directory of the static binaries (make build)")
	tag := flag.String("tag", images.CalyxTag, "the image's name and tag, as the DaemonSet names it")
	out := flag.String("out", "bin/calyx-image.tar", "tarball to write")
	flag.Parse()
	if err := write(*binDir, *tag, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (%s): docker load -i %s, or kind load image-archive %s\n", *out, *tag, *out, *out)
}

func write(binDir, tag, out string) error {
	tag, img, err := images.Calyx(binDir, tag)
	if err != nil {
		return err
	}
	return images.Write(out, tag, img)
}
