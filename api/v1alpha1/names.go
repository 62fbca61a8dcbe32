package v1alpha1

// The annotations and labels calyx reads and writes on API objects: one
// place to find them, next to the types they go with.

// Node annotations the agent writes at start-up and every agent (and
// calyxctl) reads.
const (
	// AnnotationIPv4Address is the node's underlay address with its prefix
	// length (10.10.100.208/24): the outer address of IP-in-IP packets, and
	// the subnet CrossSubnet compares against.
	AnnotationIPv4Address = "calyx.dev/ipv4-address"
	// AnnotationTunnelAddress is tunl0's address (192.168.154.192).
	AnnotationTunnelAddress = "calyx.dev/ipv4-tunnel-address"
)

// AnnotationConntrackHelper on a Service asks every node to attach the
// kernel's conntrack helper of that name (tftp, ftp) to connections to the
// Service. TFTP through a DNAT needs it: the server answers from a new
// port and from the pod IP, which a client that keeps the ClusterIP
// (tftp-hpa) never accepts unless the helper expects that reply.
const AnnotationConntrackHelper = "calyx.dev/conntrack-helper"

// Pod and Namespace annotations the IPAM reads on every ADD, as Calico's
// cni.projectcalico.org/ipv4pools and cni.projectcalico.org/ipAddrs.
const (
	// AnnotationIPv4Pools on a Pod or its Namespace is a JSON list of
	// IPPool names or CIDRs (["blue-pool"], ["10.50.0.0/16"]) the pod's
	// address comes from, tried in order; the Pod's wins over its
	// Namespace's, and both over the conflist's ipam.pools.
	AnnotationIPv4Pools = "calyx.dev/ipv4pools"
	// AnnotationIPAddrs on a Pod is a JSON list with the one IPv4 address
	// the pod gets (["192.168.29.67"]): it wins over every pool choice.
	AnnotationIPAddrs = "calyx.dev/ipAddrs"
)

// Labels on IPAMBlock, IPAMHandle and IPAMAffinity objects, so that a
// node's blocks and handles can be listed without reading everyone else's.
const (
	LabelNode = "calyx.dev/node"
	LabelPool = "calyx.dev/pool"
)
