package calyxctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/api/v1alpha1"
	plugin "github.com/calyx-net/calyx/cni-plugin"
)

// Places of a hop, left to right in the diagram.
const (
	PlaceSrcPod  = "source-pod"
	PlaceSrcNode = "source-node"
	PlaceDstNode = "destination-node"
	PlaceDstPod  = "destination-pod"
)

// TraceOptions are facts the API does not hold.
type TraceOptions struct {
	// VethPrefix is the CNI plugin's host-side veth prefix ("cali").
	VethPrefix string
	// NIC is the nodes' underlay interface name, when known (ens160).
	NIC string
}

// Endpoint is one end of a trace.
type Endpoint struct {
	Pod        string `json:"pod"`
	IP         string `json:"ip"`
	Node       string `json:"node"`
	NodeIP     string `json:"nodeIP"`
	TunnelAddr string `json:"tunnelAddress,omitempty"`
	HostIface  string `json:"hostIface"`
}

// Hop is one point a packet passes.
type Hop struct {
	Place   string `json:"place"`
	Node    string `json:"node"`
	Device  string `json:"device,omitempty"`
	Address string `json:"address,omitempty"`
	What    string `json:"what"`
}

// Path is the way a packet from one pod to another takes.
type Path struct {
	From     Endpoint `json:"from"`
	To       Endpoint `json:"to"`
	SameNode bool     `json:"sameNode"`
	// Encapsulated is true when the packet crosses the underlay in IP-in-IP.
	Encapsulated bool   `json:"encapsulated"`
	Hops         []Hop  `json:"hops"`
	Problem      string `json:"problem,omitempty"`
}

// Trace is the path from pod src to pod dst (NAMESPACE/NAME), worked out
// from the API objects with the agent's own desired-state function and
// the CNI plugin's veth naming.
func Trace(s *Snapshot, src, dst string, opts TraceOptions) (Path, error) {
	if opts.VethPrefix == "" {
		opts.VethPrefix = "cali"
	}
	from, err := endpoint(s, src, opts)
	if err != nil {
		return Path{}, err
	}
	to, err := endpoint(s, dst, opts)
	if err != nil {
		return Path{}, err
	}
	nic := opts.NIC
	if nic == "" {
		nic = "NIC"
	}
	p := Path{From: from, To: to, SameNode: from.Node == to.Node}
	add := func(place, node, dev, addr, format string, args ...any) {
		p.Hops = append(p.Hops, Hop{Place: place, Node: node, Device: dev, Address: addr, What: fmt.Sprintf(format, args...)})
	}
	add(PlaceSrcPod, from.Node, "eth0", from.IP, "pod %s sends %s → %s by its default route: default via 169.254.1.1 dev eth0", from.Pod, from.IP, to.IP)
	add(PlaceSrcNode, from.Node, from.HostIface, "", "host side of %s's veth on %s; proxy ARP answers for 169.254.1.1", from.Pod, from.Node)
	lastHop := func() {
		add(PlaceDstNode, to.Node, "", "", "route on %s: %s dev %s scope link (the CNI plugin's)", to.Node, to.IP, to.HostIface)
		add(PlaceDstNode, to.Node, to.HostIface, "", "host side of %s's veth on %s", to.Pod, to.Node)
		add(PlaceDstPod, to.Node, "eth0", to.IP, "pod %s receives %s → %s", to.Pod, from.IP, to.IP)
	}
	if p.SameNode {
		lastHop()
		return p, nil
	}

	st := desired.Compute(desired.Input{Pools: s.Pools, Blocks: s.Blocks, Nodes: s.Nodes, Node: from.Node, Local: desired.Local{Iface: opts.NIC}})
	dstIP, _ := netip.ParseAddr(to.IP)
	var route *desired.Route
	for i, r := range st.Routes {
		if r.Dst.Contains(dstIP) && (route == nil || r.Dst.Bits() > route.Dst.Bits()) {
			route = &st.Routes[i]
		}
	}
	switch {
	case route == nil:
		p.Problem = fmt.Sprintf("%s has no calyx route to %s: %s", from.Node, to.IP, orNone(strings.Join(st.Notes, "; ")))
		add(PlaceSrcNode, from.Node, "", "", "no calyx route to %s on %s: the packet follows the node's default route and is lost", to.IP, from.Node)
		return p, nil
	case route.Kind == desired.Blackhole:
		p.Problem = fmt.Sprintf("%s routes %s to a blackhole: its block is affine to %s but the pod is on %s", from.Node, to.IP, from.Node, to.Node)
		add(PlaceSrcNode, from.Node, "", "", "route on %s: %s: dropped", from.Node, route)
		return p, nil
	}
	add(PlaceSrcNode, from.Node, "", "", "route on %s: %s", from.Node, route)
	if route.Via.String() != to.NodeIP {
		p.Problem = fmt.Sprintf("the route sends %s to %s (%s), but the pod is on %s (%s)", to.IP, route.Node, route.Via, to.Node, orNone(to.NodeIP))
	}
	if route.Kind == desired.Tunnel {
		p.Encapsulated = true
		add(PlaceSrcNode, from.Node, desired.TunnelDevice, from.TunnelAddr, "IP-in-IP encapsulation: outer %s → %s protocol 4 (ipip), inner %s → %s", from.NodeIP, route.Via, from.IP, to.IP)
		add(PlaceSrcNode, from.Node, nic, from.NodeIP, "leaves %s on the underlay: %s → %s proto 4", from.Node, from.NodeIP, route.Via)
		add(PlaceDstNode, to.Node, nic, to.NodeIP, "arrives on %s; IP-in-IP from a cluster node is decapsulated", to.Node)
		add(PlaceDstNode, to.Node, desired.TunnelDevice, to.TunnelAddr, "inner packet %s → %s, as tcpdump on tunl0 shows it", from.IP, to.IP)
	} else {
		add(PlaceSrcNode, from.Node, nic, from.NodeIP, "leaves %s unencapsulated (same subnet): %s → %s via %s", from.Node, from.IP, to.IP, route.Via)
		add(PlaceDstNode, to.Node, nic, to.NodeIP, "arrives on %s", to.Node)
	}
	lastHop()
	return p, nil
}

func endpoint(s *Snapshot, key string, opts TraceOptions) (Endpoint, error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || ns == "" || name == "" {
		return Endpoint{}, fmt.Errorf("%q is not NAMESPACE/POD: write default/tftp-client", key)
	}
	var pod *corev1.Pod
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			pod = p
		}
	}
	if pod == nil {
		return Endpoint{}, fmt.Errorf("no pod %s: kubectl get pods -A lists them", key)
	}
	e := Endpoint{Pod: key, IP: pod.Status.PodIP, Node: pod.Spec.NodeName,
		HostIface: plugin.HostVethName(opts.VethPrefix, plugin.PodArgs{Namespace: ns, Name: name}, "")}
	if e.IP == "" {
		// The kubelet may not have reported it yet; IPAM knows.
		for _, b := range s.Blocks {
			cidr, err := netip.ParsePrefix(b.Spec.CIDR)
			if err != nil {
				continue
			}
			for _, a := range b.Spec.Allocations {
				if a.Namespace == ns && a.Pod == name {
					addr, _ := v1alpha1.AddrAt(cidr, a.Ordinal)
					e.IP = addr.String()
				}
			}
		}
	}
	if e.IP == "" || e.Node == "" {
		return Endpoint{}, fmt.Errorf("pod %s has no IP or node yet: wait until it is running", key)
	}
	for _, n := range s.Nodes {
		if n.Name != e.Node {
			continue
		}
		if p, err := netip.ParsePrefix(n.Annotations[v1alpha1.AnnotationIPv4Address]); err == nil {
			e.NodeIP = p.Addr().String()
		}
		e.TunnelAddr = n.Annotations[v1alpha1.AnnotationTunnelAddress]
	}
	if e.NodeIP == "" {
		return Endpoint{}, fmt.Errorf("node %s of pod %s has no %s: is calyx-agent running there?", e.Node, key, v1alpha1.AnnotationIPv4Address)
	}
	return e, nil
}

// WriteTraceText writes p hop by hop.
func WriteTraceText(w io.Writer, p Path) error {
	mode := "same node"
	if !p.SameNode {
		mode = "across the underlay, unencapsulated"
		if p.Encapsulated {
			mode = "across the underlay in IP-in-IP"
		}
	}
	fmt.Fprintf(w, "%s (%s on %s %s) → %s (%s on %s %s), %s\n", p.From.Pod, p.From.IP, p.From.Node, p.From.NodeIP,
		p.To.Pod, p.To.IP, p.To.Node, p.To.NodeIP, mode)
	return render(w, Table, nil, func(w io.Writer) {
		fmt.Fprintln(w, "#\tNODE\tDEVICE\tADDRESS\tWHAT")
		for i, h := range p.Hops {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", i+1, h.Node, orNone(h.Device), orNone(h.Address), h.What)
		}
		if p.Problem != "" {
			fmt.Fprintf(w, "problem: %s\n", p.Problem)
		}
	})
}

// TraceCommand reads the cluster and writes the path from src to dst as
// text, JSON or YAML, or as an SVG diagram into svgPath. It reports
// whether the path has a problem.
func TraceCommand(ctx context.Context, c *Clients, w io.Writer, format, svgPath, src, dst string, opts TraceOptions) (bool, error) {
	s, err := c.Read(ctx, true)
	if err != nil {
		return false, err
	}
	p, err := Trace(s, src, dst, opts)
	if err != nil {
		return false, err
	}
	if svgPath != "" {
		if err := WriteSVGFile(svgPath, p); err != nil {
			return false, err
		}
		fmt.Fprintf(w, "wrote %s\n", svgPath)
		return p.Problem != "", nil
	}
	if format == Table || format == "" {
		return p.Problem != "", WriteTraceText(w, p)
	}
	return p.Problem != "", render(w, format, p, nil)
}
