package main

import (
	"flag"

	"github.com/calyx-net/calyx/agent/installcni"
)

// cniAccountFlags are the flags of the CNI plugins' token, which
// install-cni requests and the agent keeps fresh, both with the pod's own
// credentials: the same names in both, so that the DaemonSet's two
// containers are configured alike.
func cniAccountFlags(fs *flag.FlagSet) func() installcni.Account {
	var (
		server    = fs.String("server", installcni.ServerFromEnv(), "the API server's URL, for the CNI plugins' token and kubeconfig; default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")
		tokenFile = fs.String("token-file", installcni.TokenFile, "the pod's own service-account token, to request the CNI plugins' token with")
		caFile    = fs.String("ca-file", installcni.CAFile, "the cluster CA")
		namespace = fs.String("cni-account-namespace", env("CALYX_CNI_ACCOUNT_NAMESPACE", ""), "namespace of the CNI plugins' ServiceAccount; default the pod's own, from the namespace file next to --token-file [CALYX_CNI_ACCOUNT_NAMESPACE]")
		name      = fs.String("cni-account", env("CALYX_CNI_ACCOUNT", installcni.PluginAccount), "the CNI plugins' ServiceAccount, whose token goes into their kubeconfig [CALYX_CNI_ACCOUNT]")
		lifetime  = fs.Duration("cni-token-lifetime", durationEnv("CALYX_CNI_TOKEN_LIFETIME", installcni.DefaultTokenLifetime), "validity of the CNI plugins' token; the agent requests a new one after a third of it [CALYX_CNI_TOKEN_LIFETIME]")
	)
	return func() installcni.Account {
		return installcni.Account{
			Server: *server, TokenFile: *tokenFile, CAFile: *caFile,
			Namespace: *namespace, Name: *name, Lifetime: *lifetime,
		}
	}
}
