package fault

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/calyx-net/calyx/agent/firewall"
	"github.com/calyx-net/calyx/agent/tunnel"
	"github.com/calyx-net/calyx/lab"
)

// TestDriftRepaired deletes, by hand in a node, what the agent owns: a
// route, tunl0's address, a firewall rule, the whole nftables table. Each
// must be back within a second: the agent watches the kernel, not only the
// API.
func TestDriftRepaired(t *testing.T) {
	const within = time.Second
	l := sharedLab(t)
	c := l.Client()
	ctx := context.Background()
	node := node2
	h := netlinkIn(t, node)
	nsFile, err := os.Open("/var/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer nsFile.Close()
	fw := firewall.New(int(nsFile.Fd()))

	// What is there before anything is deleted.
	routes, err := calyxRoutes(h)
	if err != nil {
		t.Fatal(err)
	}
	var tunnelRoute *netlink.Route
	for i, r := range routes {
		if r.Gw != nil && r.Gw.String() == node3IP {
			tunnelRoute = &routes[i]
		}
	}
	if tunnelRoute == nil {
		t.Fatalf("%s has no calyx route via %s to delete: %v", node, node3IP, routes)
	}
	tun, err := h.LinkByName(tunnel.DeviceName)
	if err != nil {
		t.Fatalf("%s on %s: %v", tunnel.DeviceName, node, err)
	}
	addrs, err := h.AddrList(tun, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 {
		t.Fatalf("%s on %s has addresses %v (%v), want one", tunnel.DeviceName, node, addrs, err)
	}
	tunAddr := addrs[0].IPNet.String()

	routeBack := func() bool {
		rs, err := calyxRoutes(h)
		if err != nil {
			return false
		}
		for _, r := range rs {
			if r.Dst != nil && r.Dst.String() == tunnelRoute.Dst.String() && r.Gw.Equal(tunnelRoute.Gw) && r.LinkIndex == tunnelRoute.LinkIndex {
				return true
			}
		}
		return false
	}
	addrBack := func() bool {
		as, err := h.AddrList(tun, netlink.FAMILY_V4)
		if err != nil {
			return false
		}
		for _, a := range as {
			if a.IPNet.String() == tunAddr {
				return true
			}
		}
		return false
	}
	ruleBack := func(rule string) func() bool {
		return func() bool {
			cs, err := fw.Counters()
			if err != nil {
				return false
			}
			_, ok := cs[rule]
			return ok
		}
	}

	for _, tc := range []struct {
		name string
		// del is what the person types, in the node.
		del  func(t *testing.T) []string
		back func() bool
	}{
		{
			name: "route " + tunnelRoute.Dst.String() + " via " + node3IP,
			del: func(*testing.T) []string {
				return []string{"ip", "route", "del", tunnelRoute.Dst.String(), "proto", "calyx"}
			},
			back: routeBack,
		},
		{
			name: "tunl0 address " + tunAddr,
			del:  func(*testing.T) []string { return []string{"ip", "addr", "del", tunAddr, "dev", tunnel.DeviceName} },
			back: addrBack,
		},
		{
			name: "nft rule " + firewall.RuleIPIPOthers,
			del: func(t *testing.T) []string {
				return []string{"nft", "delete", "rule", "ip", firewall.TableName, "input", "handle", ruleHandle(t, c, node, "input", firewall.RuleIPIPOthers)}
			},
			back: ruleBack(firewall.RuleIPIPOthers),
		},
		{
			name: "nft rule " + firewall.RuleAntiSpoof,
			del: func(t *testing.T) []string {
				return []string{"nft", "delete", "rule", "ip", firewall.TableName, "antispoof", "handle", ruleHandle(t, c, node, "antispoof", firewall.RuleAntiSpoof)}
			},
			back: ruleBack(firewall.RuleAntiSpoof),
		},
		{
			name: "nft table ip " + firewall.TableName,
			del:  func(*testing.T) []string { return []string{"nft", "delete", "table", "ip", firewall.TableName} },
			back: ruleBack(firewall.RuleAntiSpoof),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.back() {
				t.Fatalf("not there before the test deletes it")
			}
			argv := tc.del(t)
			begin := time.Now()
			if _, err := c.Output(ctx, node, argv...); err != nil {
				t.Fatalf("deleting by hand: %v", err)
			}
			deleted := time.Since(begin)
			took, ok := pollUntil(5*time.Second, time.Millisecond, tc.back)
			took += deleted
			if !ok {
				t.Fatalf("`%s` on %s: not back after %s", strings.Join(argv, " "), node, took.Round(time.Millisecond))
			}
			t.Logf("`%s` on %s: back %s after the command started (the command itself took %s)", strings.Join(argv, " "), node, took.Round(100*time.Microsecond), deleted.Round(100*time.Microsecond))
			if took > within {
				t.Errorf("back after %s, want within %s", took.Round(time.Millisecond), within)
			}
		})
	}
	// The agent is still healthy after all that.
	if ok, msg := lab.AgentReady(ctx, node); !ok {
		t.Errorf("the agent on %s is not ready after the repairs: %s", node, msg)
	}
}

// ruleHandle finds a rule's handle the way a person does, with `nft -a`.
func ruleHandle(t *testing.T, c *lab.Client, node, chain, rule string) string {
	t.Helper()
	out, err := c.Output(context.Background(), node, "nft", "-a", "list", "chain", "ip", firewall.TableName, chain)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`# handle (\d+)`)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, rule) {
			if m := re.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	t.Fatalf("no rule %q in chain %s on %s:\n%s", rule, chain, node, out)
	return ""
}
