// Package fault breaks a running lab the ways production breaks a cluster
// (the API server restarts, an agent crashes, a node is deleted, someone
// edits a node's routes and firewall by hand, strangers send crafted
// packets) and checks what a user would check afterwards. Each test logs
// the figure it measured.
//
// One lab serves the whole package: it comes up with the first test that
// needs it and goes down after the last. The lab's namespaces have fixed
// names, so run the package under the machine's lab lock:
//
//	flock /tmp/calyx-lab.lock go test -count=1 -v ./test/fault/
package fault

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/calyx-net/calyx/agent/desired"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/labtest"
)

// The lab's workers and their underlay addresses.
const (
	node2, node2IP = "learn-k8s-2", "10.10.100.208"
	node3, node3IP = "learn-k8s-3", "10.10.100.209"
)

// shared is the package's lab, up on first use.
var shared labtest.Shared

func TestMain(m *testing.M) {
	code := run(m)
	os.Exit(code)
}

func run(m *testing.M) int {
	flag.Parse()
	dir, err := labtest.Binaries("calyx-fault-bin-", os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shared.Options.BinDir = dir
	code := m.Run()
	if err := shared.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

func sharedLab(t *testing.T) *lab.Lab { return shared.Get(t) }

// addPod adds a pod (network namespace, CNI ADD, Pod object) deleted when
// t ends.
func addPod(t *testing.T, l *lab.Lab, namespace, name, node string) *lab.PodState {
	t.Helper()
	c := l.Client()
	p, err := c.AddPod(context.Background(), lab.PodSpec{Namespace: namespace, Name: name, Node: node})
	if err != nil {
		t.Fatalf("adding pod %s/%s on %s: %v", namespace, name, node, err)
	}
	t.Cleanup(func() {
		if err := c.DelPod(context.Background(), p.Key()); err != nil {
			t.Errorf("deleting pod %s: %v", p.Key(), err)
		}
	})
	return p
}

// netlinkIn is a netlink handle in a lab namespace, closed when t ends.
func netlinkIn(t *testing.T, netnsName string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromName(netnsName)
	if err != nil {
		t.Fatalf("opening network namespace %s: %v", netnsName, err)
	}
	h, err := netlink.NewHandleAt(ns)
	ns.Close()
	if err != nil {
		t.Fatalf("netlink in %s: %v", netnsName, err)
	}
	t.Cleanup(h.Close)
	return h
}

// calyxRoutes are the routes the agent owns (proto calyx) in a node.
func calyxRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: desired.RouteProtocol, Table: 254}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
}

// pollUntil checks cond every interval until it holds or timeout passes,
// and says how long that took.
func pollUntil(timeout, interval time.Duration, cond func() bool) (time.Duration, bool) {
	begin := time.Now()
	for {
		if cond() {
			return time.Since(begin), true
		}
		if time.Since(begin) > timeout {
			return time.Since(begin), false
		}
		time.Sleep(interval)
	}
}

// metric reads one sample of a node agent's /metrics: name with the
// labels given as `key="value"` pairs (all of them must be on the line).
func metric(t *testing.T, node, name string, labels ...string) float64 {
	t.Helper()
	text, err := lab.AgentMetrics(context.Background(), node)
	if err != nil {
		t.Fatalf("reading %s's agent metrics: %v", node, err)
	}
	v, ok := sample(text, name, labels...)
	if !ok {
		t.Fatalf("%s's agent metrics have no %s%v", node, name, labels)
	}
	return v
}

// sample finds a sample in Prometheus text exposition.
func sample(text, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		// Label values may hold spaces; the value is the last field.
		i := strings.LastIndex(line, " ")
		if i < 0 {
			continue
		}
		series, value := line[:i], line[i+1:]
		metric, rest, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				match = false
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err == nil {
			return v, true
		}
	}
	return 0, false
}

// addrAt is the address at ordinal o of block cidr.
func addrAt(t *testing.T, cidr string, o int) string {
	t.Helper()
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		t.Fatalf("block cidr %q: %v", cidr, err)
	}
	a := p.Addr().As4()
	n := binary.BigEndian.Uint32(a[:]) + uint32(o)
	binary.BigEndian.PutUint32(a[:], n)
	return netip.AddrFrom4(a).String()
}

// podAllocations maps each pod allocation's handle to its addresses, from
// the IPAMBlocks.
func podAllocations(t *testing.T, l *lab.Lab) (map[string][]string, []v1alpha1.IPAMBlock) {
	t.Helper()
	blocks, err := l.Calyx.CalyxV1alpha1().IPAMBlocks().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing IPAMBlocks: %v", err)
	}
	out := map[string][]string{}
	for _, b := range blocks.Items {
		for _, a := range b.Spec.Allocations {
			if a.Type != v1alpha1.AllocationPod {
				continue
			}
			out[a.Handle] = append(out[a.Handle], addrAt(t, b.Spec.CIDR, a.Ordinal))
		}
	}
	return out, blocks.Items
}
