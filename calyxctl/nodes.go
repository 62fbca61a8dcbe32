package calyxctl

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// Agent states of NodeInfo. The agent publishes nothing but its
// annotations in the API (its /readyz listens on the node's loopback), so
// readiness is read from them: both annotations mean it registered the
// node and got tunl0's address. On the node itself calyxctl asks /readyz.
const (
	AgentRegistered   = "registered"
	AgentNoTunnel     = "no-tunnel-address"
	AgentUnregistered = "not-registered"
	AgentReady        = "ready"
	AgentNotReady     = "not-ready"
)

// DefaultHealthAddress is where the agent serves /readyz on each node.
const DefaultHealthAddress = "127.0.0.1:9099"

// NodeInfo is one row of calyxctl nodes.
type NodeInfo struct {
	Name          string   `json:"name"`
	UnderlayIP    string   `json:"underlayIP"`
	TunnelAddress string   `json:"tunnelAddress"`
	Blocks        []string `json:"blocks"`
	Agent         string   `json:"agent"`
	// NodeReady is the Node's Ready condition as its kubelet reports it.
	NodeReady string `json:"nodeReady"`
	// AgentHealth is the agent's /readyz answer, for the node calyxctl runs
	// on only.
	AgentHealth string `json:"agentHealth,omitempty"`
}

// NodeInfos describes every node, sorted by name. A node's blocks are its
// IPAMAffinity's together with the blocks whose spec.node names it.
func NodeInfos(s *Snapshot) []NodeInfo {
	blockCIDR := map[string]string{}
	blocks := map[string][]string{}
	for _, b := range s.Blocks {
		blockCIDR[b.Name] = b.Spec.CIDR
		if b.Spec.Node != "" {
			blocks[b.Spec.Node] = append(blocks[b.Spec.Node], b.Spec.CIDR)
		}
	}
	for _, a := range s.Affinities {
		for _, name := range a.Spec.Blocks {
			cidr := blockCIDR[name]
			if cidr == "" {
				cidr = name + "(missing)"
			}
			blocks[a.Spec.Node] = append(blocks[a.Spec.Node], cidr)
		}
	}
	out := []NodeInfo{}
	for _, n := range s.Nodes {
		ni := NodeInfo{Name: n.Name, UnderlayIP: n.Annotations[v1alpha1.AnnotationIPv4Address],
			TunnelAddress: n.Annotations[v1alpha1.AnnotationTunnelAddress], NodeReady: "Unknown"}
		bs := blocks[n.Name]
		slices.Sort(bs)
		ni.Blocks = slices.Compact(bs)
		if ni.Blocks == nil {
			ni.Blocks = []string{}
		}
		switch {
		case ni.UnderlayIP != "" && ni.TunnelAddress != "":
			ni.Agent = AgentRegistered
		case ni.UnderlayIP != "":
			ni.Agent = AgentNoTunnel
		default:
			ni.Agent = AgentUnregistered
		}
		for _, c := range n.Status.Conditions {
			if c.Type == "Ready" {
				ni.NodeReady = string(c.Status)
			}
		}
		out = append(out, ni)
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Nodes writes NodeInfos. When calyxctl runs on one of the nodes (a
// node's underlay address is local) and healthAddr is set, that node's
// agent is asked /readyz.
func Nodes(ctx context.Context, c *Clients, w io.Writer, format, healthAddr string) error {
	s, err := c.Read(ctx, false)
	if err != nil {
		return err
	}
	ns := NodeInfos(s)
	if healthAddr != "" {
		if local, err := localNode(s); err == nil {
			for i := range ns {
				if ns[i].Name == local {
					ns[i].Agent, ns[i].AgentHealth = probe(ctx, "http://"+healthAddr+"/readyz")
				}
			}
		}
	}
	return render(w, format, ns, func(w io.Writer) {
		fmt.Fprintln(w, "NODE\tUNDERLAY\tTUNNEL\tBLOCKS\tAGENT\tREADY")
		for _, n := range ns {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, orNone(n.UnderlayIP), orNone(n.TunnelAddress),
				orNone(strings.Join(n.Blocks, ",")), n.Agent, n.NodeReady)
		}
	})
}

// localNode is the node calyxctl runs on, if any.
func localNode(s *Snapshot) (string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // rtnetlink alone: no xfrm_user needed
	if err != nil {
		return "", err
	}
	defer h.Close()
	local, err := localAddrs(h)
	if err != nil {
		return "", err
	}
	return findNode(s, local)
}

// probe asks an agent's /readyz: ready, or not-ready with its reasons.
func probe(ctx context.Context, url string) (string, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return AgentNotReady, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return AgentNotReady, fmt.Sprintf("asking %s: %v (is calyx-agent running?)", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	body := strings.Join(strings.Fields(string(b)), " ")
	if resp.StatusCode != http.StatusOK {
		return AgentNotReady, body
	}
	return AgentReady, body
}
