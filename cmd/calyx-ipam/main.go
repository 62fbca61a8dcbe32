// Command calyx-ipam is the calyx IPAM CNI plugin: pod addresses from the
// node's blocks of the cluster's IP pools, kept in the Kubernetes API.
package main

import (
	"github.com/containernetworking/cni/pkg/version"

	"github.com/calyx-net/calyx/cni-plugin/cnimain"
	"github.com/calyx-net/calyx/ipam/plugin"
)

func main() {
	cnimain.Run(plugin.Funcs(), version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"), "calyx-ipam: block IPAM on the Kubernetes API")
}
