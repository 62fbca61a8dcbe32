// Package manifests holds what the lab applies besides deploy/calyx.yaml:
// the cluster add-ons a kubeadm cluster has.
package manifests

import (
	_ "embed"
	"text/template"
)

//go:embed kube-proxy.yaml
var kubeProxy string

// KubeProxy is kubeadm's kube-proxy add-on; execute it with APIServer,
// Image and ClusterCIDR.
var KubeProxy = template.Must(template.New("kube-proxy.yaml").Parse(kubeProxy))

//go:embed tftp.yaml
var tftp string

// TFTP is the article's server Deployment, Service and client pod; execute
// it with Content (test.bin, base64), ServerNode, ClientNode, ClusterIP,
// Image and ServerScript (the server container's shell command).
var TFTP = template.Must(template.New("tftp.yaml").Parse(tftp))

//go:embed coredns.yaml
var coreDNS string

// CoreDNS is kubeadm's CoreDNS add-on; execute it with DNSIP and Image.
var CoreDNS = template.Must(template.New("coredns.yaml").Parse(coreDNS))
