package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/calyx-net/calyx/agent/installcni"
)

// installCNI is `calyx-agent install-cni`, the DaemonSet's init
// container: the plugins, the conflist and the plugins' kubeconfig onto
// the host.
func installCNI(args []string) int {
	fs := flag.NewFlagSet("calyx-agent install-cni", flag.ContinueOnError)
	var (
		srcDir      = fs.String("src-dir", "/opt/calyx/cni/bin", "the image's directory of CNI plugins to install")
		binDir      = fs.String("cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory, as mounted in this container")
		confDir     = fs.String("cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI config directory, as mounted in this container")
		hostConfDir = fs.String("host-cni-conf-dir", "/etc/cni/net.d", "the CNI config directory as the host sees it, where the plugins read their kubeconfig")
		server      = fs.String("server", installcni.ServerFromEnv(), "the API server's URL; default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")
		tokenFile   = fs.String("token-file", installcni.TokenFile, "the pod's service-account token")
		caFile      = fs.String("ca-file", installcni.CAFile, "the cluster CA")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "install-cni takes no arguments, got %q\n", fs.Args())
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	changed, err := installcni.Install(installcni.Config{
		SrcDir: *srcDir, BinDir: *binDir, ConfDir: *confDir, HostConfDir: *hostConfDir,
		Server: *server, TokenFile: *tokenFile, CAFile: *caFile,
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
