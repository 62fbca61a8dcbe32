package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/calyx-net/calyx/agent/installcni"
)

// installCNI is `calyx-agent install-cni`, the DaemonSet's init
// container: the plugins, the conflist and the plugins' kubeconfig, with
// a newly requested token of their own account, onto the host.
func installCNI(args []string) int {
	fs := flag.NewFlagSet("calyx-agent install-cni", flag.ContinueOnError)
	var (
		srcDir      = fs.String("src-dir", "/opt/calyx/cni/bin", "the image's directory of CNI plugins to install")
		binDir      = fs.String("cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory, as mounted in this container")
		confDir     = fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI config directory, as mounted in this container")
		hostConfDir = fs.String("host-cni-conf-dir", "/etc/cni/net.d", "the CNI config directory as the host sees it, where the plugins read their kubeconfig")
		account     = cniAccountFlags(fs)
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "install-cni takes no arguments, got %q\n", fs.Args())
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	acct := account()
	tokens, err := acct.Tokens()
	if err != nil {
		log.Error("install-cni cannot request the CNI plugins' token", "err", err)
		return 1
	}
	// The kubelet restarts a failed init container with a backoff of its
	// own: one bounded try is enough here.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	changed, err := installcni.Install(ctx, installcni.Config{
		SrcDir: *srcDir, BinDir: *binDir, ConfDir: *confDir, HostConfDir: *hostConfDir,
		Server: acct.Server, CAFile: acct.CAFile, Tokens: tokens,
	})
	if err != nil {
		log.Error("install-cni failed", "err", err)
		return 1
	}
	if len(changed) == 0 {
		log.Info("CNI plugins, conflist and kubeconfig already current; nothing changed")
		return 0
	}
	log.Info("CNI installed", "changed", changed)
	return 0
}
