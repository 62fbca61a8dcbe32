package calyxctl

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/ipam"
)

// IPAMShow writes the pools' and (with blocks) the blocks' usage. JSON and
// YAML always carry both.
func IPAMShow(ctx context.Context, cfg *rest.Config, w io.Writer, format string, blocks bool) error {
	m, err := ipam.NewForConfig(cfg, ipam.Options{})
	if err != nil {
		return fmt.Errorf("connecting to the API server: %w", err)
	}
	u, err := m.Usage(ctx)
	if err != nil {
		return fmt.Errorf("reading IPAM usage: %w (are calyx's CRDs installed? kubectl get crd | grep calyx.dev)", err)
	}
	// By address, not by object name (192-168-183-… before 192-168-28-…).
	slices.SortFunc(u.Blocks, func(a, b ipam.BlockUsage) int {
		pa, ea := netip.ParsePrefix(a.CIDR)
		pb, eb := netip.ParsePrefix(b.CIDR)
		if ea != nil || eb != nil {
			return strings.Compare(a.CIDR, b.CIDR)
		}
		return desired.ComparePrefix(pa, pb)
	})
	return render(w, format, u, func(w io.Writer) { usageTable(w, u, blocks) })
}

func usageTable(w io.Writer, u ipam.Usage, blocks bool) {
	fmt.Fprintln(w, "POOL\tCIDR\tSIZE\tUSED\tFREE\tBLOCKS")
	for _, p := range u.Pools {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\n", p.Name, p.CIDR, p.Size, p.Used, p.Free, p.Blocks)
	}
	if !blocks {
		return
	}
	fmt.Fprintln(w) // a line without cells: the blocks get their own columns
	fmt.Fprintln(w, "BLOCK\tNODE\tPOOL\tUSED\tFREE\tBORROWED")
	for _, b := range u.Blocks {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\n", b.CIDR, orNone(b.Node), orNone(b.Pool), b.Used, b.Free, orNone(strings.Join(b.Borrowed, ",")))
	}
}

// Problem kinds ipam check reports: what a garbage collector would release.
const (
	// StalePod is a pod address whose Pod no longer exists.
	StalePod = "pod-gone"
	// StaleTunnel is a tunnel address of a Node that no longer exists.
	StaleTunnel = "node-gone"
	// OrphanBlock is a block affine to a Node that no longer exists.
	OrphanBlock = "block-of-deleted-node"
	// DuplicateHandle is a handle holding more than one address: a pod or
	// a tunnel has exactly one.
	DuplicateHandle = "duplicate-handle"
	// DanglingHandle is an IPAMHandle index entry whose allocation is gone.
	DanglingHandle = "dangling-handle"
)

// Problem is one finding of ipam check.
type Problem struct {
	Kind    string `json:"kind"`
	Block   string `json:"block,omitempty"`
	Address string `json:"address,omitempty"`
	Handle  string `json:"handle,omitempty"`
	Detail  string `json:"detail"`
}

// CheckIPAM finds allocations whose pod or node is gone, blocks of deleted
// nodes, and handles that hold several addresses or point at nothing.
// Problems are sorted by kind, block and address.
func CheckIPAM(s *Snapshot) []Problem {
	nodes := map[string]bool{}
	for _, n := range s.Nodes {
		nodes[n.Name] = true
	}
	pods := map[string]bool{}
	for _, p := range s.Pods {
		pods[p.Namespace+"/"+p.Name] = true
	}
	var out []Problem
	type where struct{ block, addr string }
	byHandle := map[string][]where{}
	owned := map[string]map[int]string{} // block → ordinal → handle
	for _, b := range s.Blocks {
		cidr, err := netip.ParsePrefix(b.Spec.CIDR)
		owned[b.Name] = map[int]string{}
		if b.Spec.Node != "" && !nodes[b.Spec.Node] {
			out = append(out, Problem{Kind: OrphanBlock, Block: b.Spec.CIDR,
				Detail: fmt.Sprintf("block is affine to node %s, which does not exist", b.Spec.Node)})
		}
		for _, a := range b.Spec.Allocations {
			owned[b.Name][a.Ordinal] = a.Handle
			addr := "#" + strconv.Itoa(a.Ordinal)
			if err == nil {
				at, _ := v1alpha1.AddrAt(cidr.Masked(), a.Ordinal)
				addr = at.String()
			}
			byHandle[a.Handle] = append(byHandle[a.Handle], where{b.Spec.CIDR, addr})
			switch {
			case a.Type == v1alpha1.AllocationTunnel:
				node := a.Node
				if node == "" {
					node = strings.TrimPrefix(a.Handle, "tunnel-")
				}
				if !nodes[node] {
					out = append(out, Problem{Kind: StaleTunnel, Block: b.Spec.CIDR, Address: addr, Handle: a.Handle,
						Detail: fmt.Sprintf("tunnel address of node %s, which does not exist", node)})
				}
			case a.Namespace != "" && a.Pod != "":
				if key := a.Namespace + "/" + a.Pod; !pods[key] {
					out = append(out, Problem{Kind: StalePod, Block: b.Spec.CIDR, Address: addr, Handle: a.Handle,
						Detail: fmt.Sprintf("pod %s (container %s) does not exist", key, short(a.ContainerID))})
				}
			}
		}
	}
	for h, ws := range byHandle {
		if len(ws) < 2 {
			continue
		}
		var addrs []string
		for _, w := range ws {
			addrs = append(addrs, w.addr)
		}
		slices.Sort(addrs)
		out = append(out, Problem{Kind: DuplicateHandle, Block: ws[0].block, Address: strings.Join(addrs, ","), Handle: h,
			Detail: fmt.Sprintf("handle holds %d addresses, want 1", len(ws))})
	}
	blockCIDR := map[string]string{}
	for _, b := range s.Blocks {
		blockCIDR[b.Name] = b.Spec.CIDR
	}
	for _, h := range s.Handles {
		for _, o := range h.Spec.Ordinals {
			if owned[h.Spec.Block][o] == h.Spec.Handle {
				continue
			}
			block := blockCIDR[h.Spec.Block]
			if block == "" {
				block = h.Spec.Block
			}
			out = append(out, Problem{Kind: DanglingHandle, Block: block, Address: "#" + strconv.Itoa(o), Handle: h.Spec.Handle,
				Detail: fmt.Sprintf("IPAMHandle %s points at ordinal %d of block %s, which the handle does not hold", h.Name, o, h.Spec.Block)})
		}
	}
	slices.SortFunc(out, func(a, b Problem) int {
		return strings.Compare(a.Kind+"\x00"+a.Block+"\x00"+a.Address+"\x00"+a.Handle, b.Kind+"\x00"+b.Block+"\x00"+b.Address+"\x00"+b.Handle)
	})
	return out
}

// IPAMCheck writes CheckIPAM's problems and reports how many there are.
func IPAMCheck(ctx context.Context, c *Clients, w io.Writer, format string) (int, error) {
	s, err := c.Read(ctx, true)
	if err != nil {
		return 0, err
	}
	ps := CheckIPAM(s)
	if ps == nil {
		ps = []Problem{}
	}
	return len(ps), render(w, format, ps, func(w io.Writer) {
		if len(ps) == 0 {
			fmt.Fprintln(w, "no problems: every allocation has its pod or node, every block its node, every handle one address")
			return
		}
		fmt.Fprintln(w, "KIND\tBLOCK\tADDRESS\tHANDLE\tDETAIL")
		for _, p := range ps {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Kind, orNone(p.Block), orNone(p.Address), orNone(p.Handle), p.Detail)
		}
	})
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return orNone(id)
}
