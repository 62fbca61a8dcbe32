// Command calyx-bench runs calyx's benchmark suite against its references
// on this machine and prints one markdown table.
//
//	calyx-bench [-parts cni,podstart,burst,converge,datapath,ipam,scale] [-runs 3] [-o file]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/calyx-net/calyx/bench"
)

func main() {
	fs := flag.NewFlagSet("calyx-bench", flag.ExitOnError)
	parts := fs.String("parts", strings.Join(bench.PartNames(), ","), "parts to run, comma-separated")
	runs := fs.Int("runs", 3, "runs per part (scale runs fewer, the datapath two more); the median is quoted with min–max")
	out := fs.String("o", "", "also write the results to this markdown file")
	binDir := fs.String("bin-dir", "bin", "directory of the built calyx binaries (make build)")
	refDir := fs.String("ref-cni-dir", "/usr/lib/cni", "directory of the reference CNI plugins ptp and host-local (Debian's containernetworking-plugins)")
	profile := fs.Bool("profile", true, "sample the machine with perf record during the datapath's last 4-stream TCP and UDP tests of calyx and plain (needs perf)")
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var sel []string
	if *parts != "" {
		sel = strings.Split(*parts, ",")
	}
	res, err := bench.Run(ctx, bench.Options{Parts: sel, Runs: *runs, BinDir: *binDir, RefCNIDir: *refDir, Profile: *profile, Progress: os.Stderr})
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-bench: %v\n", err)
		os.Exit(1)
	}
	md := res.Markdown()
	fmt.Print(md)
	switch {
	case *out != "" && ctx.Err() != nil:
		// An interrupted run's table is partial: the last complete one stays.
		fmt.Fprintf(os.Stderr, "calyx-bench: interrupted; %s left as it was\n", *out)
		os.Exit(1)
	case *out != "":
		doc := "# calyx benchmark results\n\nWritten by `make bench` (`calyx-bench`); see [README.md](README.md) for what each part measures and how.\n\n" + md
		if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "calyx-bench: writing %s: %v\n", *out, err)
			os.Exit(1)
		}
	}
	if len(res.Errors) > 0 {
		for _, e := range res.Errors {
			fmt.Fprintf(os.Stderr, "calyx-bench: %v\n", e)
		}
		os.Exit(1)
	}
}
