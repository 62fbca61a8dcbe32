// Command calyx-agent is calyx's node agent, run on every node by the
// DaemonSet: it registers the node, keeps tunl0, the calyx routes and the
// nftables table ip calyx in sync with the cluster, and serves /readyz,
// /livez and /metrics.
//
// Every flag can also be set by the environment variable in brackets in
// its help; a flag given on the command line wins.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/calyx-net/calyx/agent"
	"github.com/calyx-net/calyx/agent/installcni"
	"github.com/calyx-net/calyx/agent/routes"
	"github.com/calyx-net/calyx/agent/statedir"
	"github.com/calyx-net/calyx/ipam/socket"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// env returns the environment variable's value, or def.
func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "install-cni" {
		return installCNI(args[1:])
	}
	if len(args) > 0 && args[0] == "ippool-init" {
		return ippoolInit(args[1:])
	}
	fs := flag.NewFlagSet("calyx-agent", flag.ContinueOnError)
	var (
		nodeName      = fs.String("node-name", env("NODENAME", ""), "name of this node's Node object; default the host name [NODENAME]")
		kubeconfig    = fs.String("kubeconfig", env("KUBECONFIG", ""), "kubeconfig file; empty means the in-cluster configuration [KUBECONFIG]")
		underlay      = fs.String("underlay", env("CALYX_UNDERLAY", "first-found"), "how to find the underlay NIC and address: first-found, interface=REGEX or can-reach=IP [CALYX_UNDERLAY]")
		datapath      = fs.String("ipip-datapath", env("CALYX_IPIP_DATAPATH", "auto"), "tunl0's datapath: auto, kernel (the ipip module) or ebpf (tc programs) [CALYX_IPIP_DATAPATH]")
		ipamSocket    = fs.String("ipam-socket", env("CALYX_IPAM_SOCKET", socket.DefaultPath), "unix socket serving calyx-ipam to the CNI plugin (the conflist's ipam.agent_socket); empty: none, the plugin runs calyx-ipam [CALYX_IPAM_SOCKET]")
		stateDir      = fs.String("state-dir", env("CALYX_STATE_DIR", statedir.Default), "where to write the nodename and mtu files the CNI plugin reads [CALYX_STATE_DIR]")
		protosDir     = fs.String("rt-protos-dir", env("CALYX_RT_PROTOS_DIR", routes.ProtocolNamesDir), "iproute2 directory to name route protocol 202 \"calyx\" in; empty skips it [CALYX_RT_PROTOS_DIR]")
		healthAddr    = fs.String("health-address", env("CALYX_HEALTH_ADDRESS", ":9099"), "address serving /readyz and /livez [CALYX_HEALTH_ADDRESS]")
		metricsAddr   = fs.String("metrics-address", env("CALYX_METRICS_ADDRESS", ":9091"), "address serving /metrics; empty or equal to --health-address serves it there [CALYX_METRICS_ADDRESS]")
		resync        = fs.Duration("resync-period", durationEnv("CALYX_RESYNC_PERIOD", 30*time.Second), "full sync interval when nothing happens [CALYX_RESYNC_PERIOD]")
		forwarding    = fs.Bool("enable-ip-forwarding", boolEnv("CALYX_ENABLE_IP_FORWARDING", true), "set net.ipv4.ip_forward=1, which routing pod traffic needs [CALYX_ENABLE_IP_FORWARDING]")
		logLevel      = fs.String("log-level", env("CALYX_LOG_LEVEL", "info"), "debug, info, warn or error [CALYX_LOG_LEVEL]")
		logFormat     = fs.String("log-format", env("CALYX_LOG_FORMAT", "text"), "text or json [CALYX_LOG_FORMAT]")
		cniKubeconfig = fs.String("cni-kubeconfig", env("CALYX_CNI_KUBECONFIG", ""), "the CNI plugins' kubeconfig that install-cni wrote, whose token to replace before it expires; empty: none [CALYX_CNI_KUBECONFIG]")
		cniAccount    = cniAccountFlags(fs)
	)
	gcConfig := gcFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	gc := gcConfig()
	if err := gc.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "calyx-agent takes no arguments, got %q\n", fs.Args())
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "--log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	opts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		fmt.Fprintf(os.Stderr, "--log-format %q: want text or json\n", *logFormat)
		return 2
	}
	slog.SetDefault(log)

	a, err := agent.New(agent.Config{
		NodeName:         strings.TrimSpace(*nodeName),
		Kubeconfig:       *kubeconfig,
		Underlay:         *underlay,
		Datapath:         *datapath,
		StateDir:         *stateDir,
		IPAMSocket:       *ipamSocket,
		ProtocolNamesDir: *protosDir,
		HealthAddr:       *healthAddr,
		MetricsAddr:      *metricsAddr,
		ResyncPeriod:     *resync,
		EnableForwarding: *forwarding,
		GC:               gc,
		// tunl0's datapath: agent.RealDatapath (agent/tunnel's New) is
		// the default.
		Logger: log,
	})
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *cniKubeconfig != "" {
		acct := cniAccount()
		tokens, err := acct.Tokens()
		if err != nil {
			log.Error("--cni-kubeconfig: cannot request the CNI plugins' token", "err", err)
			return 2
		}
		r := &installcni.Refresher{Path: *cniKubeconfig, Server: acct.Server, CAFile: acct.CAFile, Tokens: tokens, Log: log}
		go r.Run(ctx)
	}
	if err := a.Run(ctx); err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	return 0
}

func durationEnv(name string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not a duration (30s, 1m); using %s\n", name, v, def)
		return def
	}
	return d
}

func boolEnv(name string, def bool) bool {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q is not true or false; using %v\n", name, v, def)
		return def
	}
	return b
}
