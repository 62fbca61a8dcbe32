// Command calyx-lab runs a multi-node Kubernetes cluster made of network
// namespaces on this machine, with calyx as its pod network, and plays the
// reference scenario (a TFTP download between pods on two nodes) in it.
package main

import (
	"fmt"
	"os"

	"github.com/calyx-net/calyx/lab/node"
)

const usage = `calyx-lab: a Kubernetes cluster in network namespaces, with calyx as its pod network

  calyx-lab up [--workers N] [--runtime NODE=containerd-1.6|containerd-2] [--kernel-node]
                                             start the lab (control plane learn-k8s-1, workers learn-k8s-2…):
                                             kubelet and containerd on every node, calyx from deploy/calyx.yaml
  calyx-lab down                             remove every namespace, process, mount, cgroup and file of the lab
  calyx-lab status                           nodes, their runtimes, agents' and kube-proxies' readiness, pods
  calyx-lab pod add NS/NAME --node NODE [--label k=v] [--image IMAGE] [-- COMMAND ARGS…]
                                             a Pod (toolbox image: busybox and tftpd-hpa) on NODE
  calyx-lab pod del NS/NAME
  calyx-lab service add NS/NAME --selector k=v --port 69/UDP [--cluster-ip IP] [--annotation k=v]
                                             a ClusterIP Service; prints its ClusterIP
  calyx-lab service del NS/NAME
  calyx-lab exec NODE -- COMMAND…            run a command on a node (its network, mount and PID namespaces)
  calyx-lab exec NS/NAME -- COMMAND…         run a host program in a pod's network namespace (kubectl exec
                                             runs the pod's own programs)
  calyx-lab kubectl ARGS…                    the real kubectl, pointed at the lab
  calyx-lab demo [--keep]                    the TFTP journey across two nodes, captured on every hop
  calyx-lab conformance [--bounded]          Kubernetes' own sig-network e2e tests against a lab: a table
  calyx-lab conformance-kit --out DIR        the suite, its images and the selection, for a cluster of one's own

Common flags: --dir (default /run/calyx-lab), --bin-dir (default: this binary's directory).
Run as root: the lab creates network namespaces.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "up":
		err = cmdUp(args)
	case "supervise":
		err = cmdSupervise(args)
	case "down":
		err = cmdDown(args)
	case "status":
		err = cmdStatus(args)
	case "pod":
		err = cmdPod(args)
	case "service":
		err = cmdService(args)
	case "exec":
		cmdExec(args) // exits with the command's code
	case "demo":
		err = cmdDemo(args)
	case "conformance":
		err = cmdConformance(args)
	case "conformance-kit":
		err = cmdConformanceKit(args)
	case "kubectl":
		cmdKubectl(args) // exits with kubectl's code
	case "node-init":
		os.Exit(node.InitMain(args))
	case "tftp-server":
		err = cmdTFTPServer(args)
	case "tftp-get":
		err = cmdTFTPGet(args)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "calyx-lab: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "calyx-lab %s: %v\n", cmd, err)
		os.Exit(1)
	}
}
