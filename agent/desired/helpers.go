package desired

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// helperProtocols are the helpers calyx attaches, with the protocol each
// one tracks.
var helperProtocols = map[string]corev1.Protocol{
	"tftp": corev1.ProtocolUDP,
	"ftp":  corev1.ProtocolTCP,
}

// Helper is one conntrack helper attachment: connections to Addr:Port
// over Protocol get the kernel's helper Name.
type Helper struct {
	// Name is the kernel helper: tftp or ftp.
	Name string
	// Protocol is udp or tcp, as nft writes it.
	Protocol string
	// Addr is the ClusterIP; not valid for a NodePort, which matches any
	// of the node's own addresses.
	Addr netip.Addr
	Port uint16
	// Service is NAMESPACE/NAME, for rule comments and logs.
	Service string
}

// String renders the match as nft would read it.
func (h Helper) String() string {
	dst := "local"
	if h.Addr.IsValid() {
		dst = h.Addr.String()
	}
	return fmt.Sprintf("%s %s:%d/%s (%s)", h.Name, dst, h.Port, h.Protocol, h.Service)
}

// helpers are the conntrack helper attachments the Services ask for, and
// notes for annotations calyx cannot honour.
func helpers(svcs []*corev1.Service) (out []Helper, notes []string) {
	for _, s := range svcs {
		v, ok := s.Annotations[v1alpha1.AnnotationConntrackHelper]
		if !ok {
			continue
		}
		key := s.Namespace + "/" + s.Name
		name := strings.ToLower(strings.TrimSpace(v))
		proto, known := helperProtocols[name]
		if !known {
			notes = append(notes, fmt.Sprintf("service %s: %s %q is not a helper calyx attaches (tftp, ftp): ignored", key, v1alpha1.AnnotationConntrackHelper, v))
			continue
		}
		var addrs []netip.Addr
		ips := s.Spec.ClusterIPs
		if len(ips) == 0 && s.Spec.ClusterIP != "" {
			ips = []string{s.Spec.ClusterIP}
		}
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil && a.Is4() {
				addrs = append(addrs, a)
			}
		}
		matched := false
		for _, p := range s.Spec.Ports {
			pp := p.Protocol
			if pp == "" {
				pp = corev1.ProtocolTCP
			}
			if pp != proto || p.Port <= 0 || p.Port > 65535 {
				continue
			}
			matched = true
			l4 := strings.ToLower(string(proto))
			for _, a := range addrs {
				out = append(out, Helper{Name: name, Protocol: l4, Addr: a, Port: uint16(p.Port), Service: key})
			}
			if p.NodePort > 0 && p.NodePort <= 65535 {
				out = append(out, Helper{Name: name, Protocol: l4, Port: uint16(p.NodePort), Service: key})
			}
		}
		if !matched {
			notes = append(notes, fmt.Sprintf("service %s: helper %s tracks %s, and the service has no %s port: nothing attached", key, name, proto, proto))
		}
	}
	slices.SortFunc(out, compareHelpers)
	out = slices.Compact(out)
	return out, notes
}

func compareHelpers(a, b Helper) int {
	return cmp.Or(
		a.Addr.Compare(b.Addr),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.Name, b.Name),
		cmp.Compare(a.Service, b.Service),
	)
}
