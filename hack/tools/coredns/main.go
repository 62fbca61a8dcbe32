// Command coredns is CoreDNS with the plugins kubeadm's Corefile uses: the
// lab's cluster DNS, as kubeadm deploys it (registry.k8s.io/coredns/coredns
// at the version kubeadm v1.37 pins). Built like the Kubernetes binaries,
// from this module, so that no registry is needed. Importing a plugin
// registers it; CoreDNS's own directive list orders them.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
