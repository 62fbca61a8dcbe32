package calyxctl

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/api/v1alpha1"
)

func node(name, ip, tunnel string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
	if ip != "" {
		n.Annotations[v1alpha1.AnnotationIPv4Address] = ip
	}
	if tunnel != "" {
		n.Annotations[v1alpha1.AnnotationTunnelAddress] = tunnel
	}
	return n
}

func pod(ns, name, nodeName, ip string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: nodeName}, Status: corev1.PodStatus{PodIP: ip}}
}

func block(cidr, nodeName string, allocs ...v1alpha1.Allocation) *v1alpha1.IPAMBlock {
	return &v1alpha1.IPAMBlock{ObjectMeta: metav1.ObjectMeta{Name: strings.NewReplacer(".", "-", "/", "-").Replace(cidr)},
		Spec: v1alpha1.IPAMBlockSpec{CIDR: cidr, Node: nodeName, Pool: "default", Allocations: allocs}}
}

func podAlloc(o int, ns, name, nodeName string) v1alpha1.Allocation {
	return v1alpha1.Allocation{Ordinal: o, Handle: "k8s-pod-network." + name, Type: v1alpha1.AllocationPod,
		Node: nodeName, Namespace: ns, Pod: name, ContainerID: name + "-container"}
}

func tunnelAlloc(nodeName string) v1alpha1.Allocation {
	return v1alpha1.Allocation{Ordinal: 0, Handle: "tunnel-" + nodeName, Type: v1alpha1.AllocationTunnel, Node: nodeName}
}

var defaultPool = &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "default"},
	Spec: v1alpha1.IPPoolSpec{CIDR: "192.168.0.0/16", BlockSize: 26, IPIPMode: v1alpha1.IPIPModeAlways}}

// demo is the article's cluster: the server on learn-k8s-2, the client on
// learn-k8s-3.
func demo() *Snapshot {
	return &Snapshot{
		Pools: []*v1alpha1.IPPool{defaultPool},
		Blocks: []*v1alpha1.IPAMBlock{
			block("192.168.29.64/26", "learn-k8s-2", tunnelAlloc("learn-k8s-2"), podAlloc(3, "default", "tftp-server", "learn-k8s-2")),
			block("192.168.154.192/26", "learn-k8s-3", tunnelAlloc("learn-k8s-3"), podAlloc(3, "default", "tftp-client", "learn-k8s-3"),
				podAlloc(4, "default", "other", "learn-k8s-3")),
		},
		Nodes: []*corev1.Node{
			node("learn-k8s-2", "10.10.100.208/24", "192.168.29.64"),
			node("learn-k8s-3", "10.10.100.209/24", "192.168.154.192"),
		},
		Pods: []*corev1.Pod{
			pod("default", "tftp-server", "learn-k8s-2", "192.168.29.67"),
			pod("default", "tftp-client", "learn-k8s-3", "192.168.154.195"),
			pod("default", "other", "learn-k8s-3", "192.168.154.196"),
		},
	}
}

func TestDiffRoutes(t *testing.T) {
	pfx := netip.MustParsePrefix
	via := netip.MustParseAddr("10.10.100.208")
	tun := desired.Route{Dst: pfx("192.168.29.64/26"), Kind: desired.Tunnel, Via: via, Dev: "tunl0", Node: "learn-k8s-2"}
	bh := desired.Route{Dst: pfx("192.168.154.192/26"), Kind: desired.Blackhole}
	moved := tun
	moved.Via = netip.MustParseAddr("10.10.100.210")
	stray := desired.Route{Dst: pfx("192.168.1.0/26"), Kind: desired.Blackhole}
	status := func(rows []RouteRow) []string {
		var out []string
		for _, r := range rows {
			out = append(out, r.Status+" "+r.Dst)
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		want, have []desired.Route
		out        []string
	}{
		{"in sync", []desired.Route{tun, bh}, []desired.Route{bh, tun}, []string{"ok 192.168.29.64/26", "ok 192.168.154.192/26"}},
		{"deleted by hand", []desired.Route{tun, bh}, []desired.Route{bh}, []string{"missing 192.168.29.64/26", "ok 192.168.154.192/26"}},
		{"left over", []desired.Route{bh}, []desired.Route{stray, bh}, []string{"extra 192.168.1.0/26", "ok 192.168.154.192/26"}},
		{"other gateway", []desired.Route{tun}, []desired.Route{moved}, []string{"different 192.168.29.64/26"}},
		{"two kernel routes", []desired.Route{tun}, []desired.Route{tun, moved}, []string{"different 192.168.29.64/26"}},
		{"nothing", nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.out, status(DiffRoutes(tc.want, tc.have))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckIPAM(t *testing.T) {
	s := demo()
	clean := func(t *testing.T) {
		if ps := CheckIPAM(s); len(ps) != 0 {
			t.Fatalf("problems on a clean cluster: %+v", ps)
		}
	}
	t.Run("clean", clean)

	s = demo()
	s.Pods = s.Pods[:2]                                                               // "other" deleted without CNI DEL
	s.Blocks = append(s.Blocks, block("192.168.7.0/26", "gone", tunnelAlloc("gone"))) // node deleted
	dup := podAlloc(5, "default", "tftp-client", "learn-k8s-3")
	s.Blocks[1].Spec.Allocations = append(s.Blocks[1].Spec.Allocations, dup)
	s.Handles = []*v1alpha1.IPAMHandle{{ObjectMeta: metav1.ObjectMeta{Name: "h"},
		Spec: v1alpha1.IPAMHandleSpec{Handle: "k8s-pod-network.x", Block: "192-168-29-64-26", Ordinals: []int{9}}}}
	var got []string
	for _, p := range CheckIPAM(s) {
		got = append(got, p.Kind+" "+p.Block+" "+p.Address+" "+p.Handle)
	}
	want := []string{
		"block-of-deleted-node 192.168.7.0/26  ",
		"dangling-handle 192.168.29.64/26 #9 k8s-pod-network.x",
		"duplicate-handle 192.168.154.192/26 192.168.154.195,192.168.154.197 k8s-pod-network.tftp-client",
		"node-gone 192.168.7.0/26 192.168.7.0 tunnel-gone",
		"pod-gone 192.168.154.192/26 192.168.154.196 k8s-pod-network.other",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestNodeInfos(t *testing.T) {
	s := demo()
	s.Nodes = append(s.Nodes, node("new", "10.10.100.210/24", ""), node("bare", "", ""))
	s.Affinities = []*v1alpha1.IPAMAffinity{{Spec: v1alpha1.IPAMAffinitySpec{Node: "learn-k8s-2", Blocks: []string{"192-168-29-64-26"}}}}
	var got []string
	for _, n := range NodeInfos(s) {
		got = append(got, n.Name+" "+n.UnderlayIP+" "+n.TunnelAddress+" "+strings.Join(n.Blocks, ",")+" "+n.Agent)
	}
	want := []string{
		"bare    not-registered",
		"learn-k8s-2 10.10.100.208/24 192.168.29.64 192.168.29.64/26 registered",
		"learn-k8s-3 10.10.100.209/24 192.168.154.192 192.168.154.192/26 registered",
		"new 10.10.100.210/24   no-tunnel-address",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestTrace checks the hops' devices and addresses. The veth names were
// computed independently: printf default.tftp-server | sha1sum | cut -c1-11.
func TestTrace(t *testing.T) {
	hops := func(p Path) []string {
		var out []string
		for _, h := range p.Hops {
			out = append(out, h.Node+" "+h.Device+" "+h.Address)
		}
		return out
	}
	borrowed := demo()
	// tftp-server's address borrowed from learn-k8s-3's block.
	borrowed.Blocks[1].Spec.Allocations = append(borrowed.Blocks[1].Spec.Allocations, podAlloc(10, "default", "tftp-server", "learn-k8s-2"))
	borrowed.Blocks[0].Spec.Allocations = borrowed.Blocks[0].Spec.Allocations[:1]
	borrowed.Pods[0].Status.PodIP = "192.168.154.202"
	noAddr := demo()
	noAddr.Nodes[0] = node("learn-k8s-2", "", "")
	for _, tc := range []struct {
		name     string
		s        *Snapshot
		src, dst string
		hops     []string
		problem  string
		err      string
	}{
		{name: "across nodes", s: demo(), src: "default/tftp-client", dst: "default/tftp-server", hops: []string{
			"learn-k8s-3 eth0 192.168.154.195",
			"learn-k8s-3 cali46a46e56cfb ",
			"learn-k8s-3  ",
			"learn-k8s-3 tunl0 192.168.154.192",
			"learn-k8s-3 ens160 10.10.100.209",
			"learn-k8s-2 ens160 10.10.100.208",
			"learn-k8s-2 tunl0 192.168.29.64",
			"learn-k8s-2  ",
			"learn-k8s-2 calic170cc94aee ",
			"learn-k8s-2 eth0 192.168.29.67",
		}},
		{name: "same node", s: demo(), src: "default/tftp-client", dst: "default/other", hops: []string{
			"learn-k8s-3 eth0 192.168.154.195",
			"learn-k8s-3 cali46a46e56cfb ",
			"learn-k8s-3  ",
			"learn-k8s-3 calibaee662cd2c ",
			"learn-k8s-3 eth0 192.168.154.196",
		}},
		{name: "borrowed address", s: borrowed, src: "default/tftp-client", dst: "default/tftp-server", hops: []string{
			"learn-k8s-3 eth0 192.168.154.195",
			"learn-k8s-3 cali46a46e56cfb ",
			"learn-k8s-3  ",
			"learn-k8s-3 tunl0 192.168.154.192",
			"learn-k8s-3 ens160 10.10.100.209",
			"learn-k8s-2 ens160 10.10.100.208",
			"learn-k8s-2 tunl0 192.168.29.64",
			"learn-k8s-2  ",
			"learn-k8s-2 calic170cc94aee ",
			"learn-k8s-2 eth0 192.168.154.202",
		}},
		{name: "no such pod", s: demo(), src: "default/nope", dst: "default/tftp-server", err: "no pod default/nope"},
		{name: "not NS/POD", s: demo(), src: "tftp-client", dst: "default/tftp-server", err: "is not NAMESPACE/POD"},
		{name: "node without agent", s: noAddr, src: "default/tftp-client", dst: "default/tftp-server", err: "is calyx-agent running there?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Trace(tc.s, tc.src, tc.dst, TraceOptions{NIC: "ens160"})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.hops, hops(p)); diff != "" {
				t.Errorf("hops (-want +got):\n%s", diff)
			}
			if p.Problem != tc.problem {
				t.Errorf("problem %q, want %q", p.Problem, tc.problem)
			}
			var text bytes.Buffer
			if err := WriteTraceText(&text, p); err != nil {
				t.Fatal(err)
			}
			var svg bytes.Buffer
			if err := SVG(&svg, p); err != nil {
				t.Fatal(err)
			}
			wellFormed(t, svg.Bytes())
		})
	}
}

// TestSVGEscapes: names come from the API; the document stays XML.
func TestSVGEscapes(t *testing.T) {
	p := Path{From: Endpoint{Pod: `a/<b>&"c"`, Node: "n1"}, To: Endpoint{Pod: "x/y", Node: "n1"}, SameNode: true,
		Hops: []Hop{{Place: PlaceSrcPod, Node: "n1", Device: "eth0", What: `<script>alert("x")</script>`}}}
	var b bytes.Buffer
	if err := SVG(&b, p); err != nil {
		t.Fatal(err)
	}
	wellFormed(t, b.Bytes())
	if strings.Contains(b.String(), "<script>") {
		t.Errorf("unescaped text in the SVG:\n%s", b.String())
	}
}

func wellFormed(t *testing.T, b []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
	}
}
