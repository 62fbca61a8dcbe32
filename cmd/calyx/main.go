// Command calyx is the CNI plugin a container runtime runs for every pod
// ("type": "calyx" in the conflist). The logic lives in cni-plugin.
package main

import (
	"log/slog"
	"os"
	"runtime/debug"

	cniplugin "github.com/calyx-net/calyx/cni-plugin"
	"github.com/calyx-net/calyx/cni-plugin/cnimain"
)

func main() {
	// stdout carries the CNI result; diagnostics go to stderr, which the
	// runtime logs.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	cnimain.Run(cniplugin.Funcs(), cniplugin.Versions, "calyx CNI plugin "+buildVersion())
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(unknown version)"
}
