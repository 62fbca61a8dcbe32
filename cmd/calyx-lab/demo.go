package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/conformance"
)

func cmdDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var c common
	c.register(fs)
	keep := fs.Bool("keep", false, "leave the lab up afterwards")
	outDir := fs.String("out", filepath.Join(os.TempDir(), "calyx-demo"), "where to write clientNode.pcap and serverNode.pcap")
	datapath := fs.String("ipip-datapath", "auto", "the agents' tunl0 datapath: auto, kernel or ebpf")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	if _, err := lab.ReadState(c.dir); err == nil {
		return fmt.Errorf("a lab is already up in %s: run `calyx-lab down` first, the demo builds its own", c.dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return lab.Demo(ctx, lab.DemoOptions{
		Lab:    lab.Options{Dir: c.dir, BinDir: c.binDir, Datapath: *datapath},
		Keep:   *keep,
		OutDir: *outDir,
		Out:    os.Stdout,
	})
}

func cmdTFTPServer(args []string) error {
	fs := flag.NewFlagSet("tftp-server", flag.ContinueOnError)
	root := fs.String("root", ".", "directory to serve")
	listen := fs.String("listen", ":69", "UDP address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return lab.ServeTFTP(*listen, *root, os.Stdout)
}

func cmdTFTPGet(args []string) error {
	fs := flag.NewFlagSet("tftp-get", flag.ContinueOnError)
	server := fs.String("server", "", "server address (host or host:port)")
	file := fs.String("file", "", "file to download")
	out := fs.String("out", "", "where to write it (default stdout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server == "" || *file == "" {
		return fmt.Errorf("--server and --file are required")
	}
	w := os.Stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	n, err := lab.GetTFTP(*server, *file, w)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "received %s: %d bytes\n", *file, n)
	return nil
}

func cmdConformance(args []string) error {
	fs := flag.NewFlagSet("conformance", flag.ContinueOnError)
	var c common
	c.register(fs)
	bounded := fs.Bool("bounded", false, "only the granular pod checks (what make test runs), not the whole selection")
	reportDir := fs.String("report-dir", filepath.Join(os.TempDir(), "calyx-conformance"), "where the suite's JUnit report and output go")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	if _, err := lab.ReadState(c.dir); err == nil {
		return fmt.Errorf("a lab is already up in %s: run `calyx-lab down` first, the conformance run builds its own", c.dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	tests := conformance.Selection
	if *bounded {
		tests = conformance.Bounded
	}
	_, err := lab.Conformance(ctx, lab.ConformanceOptions{
		Lab: lab.Options{Dir: c.dir, BinDir: c.binDir}, Tests: tests, ReportDir: *reportDir, Out: os.Stdout,
	})
	return err
}

func cmdConformanceKit(args []string) error {
	fs := flag.NewFlagSet("conformance-kit", flag.ContinueOnError)
	var c common
	c.register(fs)
	out := fs.String("out", "", "directory to write the suite, the images and the focus into")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("--out DIR is required")
	}
	if err := lab.ConformanceKit(context.Background(), *out, c.binDir, os.Stderr); err != nil {
		return err
	}
	fmt.Printf("wrote %s: e2e-network.test, images/*.tar (kind load image-archive), focus.txt\n", *out)
	return nil
}
