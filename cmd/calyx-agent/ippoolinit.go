package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/deploy/poolinit"
)

// ippoolInit is `calyx-agent ippool-init`, the calyx-ippool-init Job:
// the default IPPool from a file, once the CRD is served.
func ippoolInit(args []string) int {
	fs := flag.NewFlagSet("calyx-agent ippool-init", flag.ContinueOnError)
	var (
		file       = fs.String("file", "/etc/calyx/ippool.yaml", "the IPPool to create, in YAML")
		kubeconfig = fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig file; empty means the in-cluster configuration [KUBECONFIG]")
		timeout    = fs.Duration("timeout", 5*time.Minute, "how long to wait for the IPPool CRD")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b, err := os.ReadFile(*file)
	if err != nil {
		log.Error("reading the IPPool", "err", fmt.Errorf("%w (is the calyx-default-ippool ConfigMap mounted?)", err))
		return 1
	}
	pool, err := poolinit.Parse(b)
	if err != nil {
		log.Error("ippool-init failed", "err", err)
		return 1
	}
	var cfg *rest.Config
	if *kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		log.Error("no API server configuration; set --kubeconfig", "err", err)
		return 1
	}
	cs, err := calyxclient.NewForConfig(cfg)
	if err != nil {
		log.Error("creating the calyx client", "err", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := poolinit.Create(ctx, log, cs, pool); err != nil {
		log.Error("ippool-init failed", "err", err)
		return 1
	}
	return 0
}
