package main

import (
	"flag"

	"github.com/calyx-net/calyx/agent/ipamgc"
)

// gcFlags defines the IPAM garbage collector's flags on fs; the returned
// function reads them after fs.Parse.
func gcFlags(fs *flag.FlagSet) func() ipamgc.Config {
	enabled := fs.Bool("gc-enabled", boolEnv("CALYX_GC_ENABLED", true), "campaign to be the cluster's IPAM garbage collector (one agent wins a Lease in kube-system) [CALYX_GC_ENABLED]")
	grace := fs.Duration("gc-grace", durationEnv("CALYX_GC_GRACE", ipamgc.DefaultGrace), "how long a pod address stays without its pod before the garbage collector releases it; addresses of deleted nodes have no grace [CALYX_GC_GRACE]")
	interval := fs.Duration("gc-interval", durationEnv("CALYX_GC_INTERVAL", ipamgc.DefaultInterval), "time between the garbage collector's passes [CALYX_GC_INTERVAL]")
	return func() ipamgc.Config {
		return ipamgc.Config{Enabled: *enabled, Grace: *grace, Interval: *interval}
	}
}
