package cniplugin_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	ipamplugin "github.com/calyx-net/calyx/ipam/plugin"
)

// TestPlugin is the acceptance of issue 4: the real calyx, IPAM and
// portmap binaries run through libcni with the shipped conflist, in real
// namespaces.
func TestPlugin(t *testing.T) {
	e := newEnv(t, acceptanceIPAM)
	t.Run("ADD wires the pod as specified", func(t *testing.T) { t.Parallel(); testAddWiring(t, e) })
	t.Run("two pods ping each other and the node", func(t *testing.T) { t.Parallel(); testPing(t, e) })
	t.Run("results for every version", func(t *testing.T) { t.Parallel(); testVersions(t, e) })
	t.Run("ADD twice", func(t *testing.T) { t.Parallel(); testAddTwice(t, e) })
	t.Run("DEL twice", func(t *testing.T) { t.Parallel(); testDelTwice(t, e) })
	t.Run("DEL after the netns is gone", func(t *testing.T) { t.Parallel(); testDelNetnsGone(t, e) })
	t.Run("DEL with CNI_NETNS not a netns", func(t *testing.T) { t.Parallel(); testDelNotNetns(t, e) })
	t.Run("an old sandbox's DEL spares the new one", func(t *testing.T) { t.Parallel(); testSandboxRestart(t, e) })
	t.Run("CHECK finds a deleted default route", func(t *testing.T) { t.Parallel(); testCheckRoute(t, e) })
	t.Run("bad input", func(t *testing.T) { t.Parallel(); testBadInput(t, e) })
	t.Run("IPAM exhausted", func(t *testing.T) { t.Parallel(); testExhausted(t, e) })
	t.Run("portmap forwards a host port", func(t *testing.T) { t.Parallel(); testPortmap(t, e) })
	t.Run("shipped loopback brings lo up", func(t *testing.T) { t.Parallel(); testLoopback(t, e) })
	t.Run("STATUS", func(t *testing.T) { t.Parallel(); testStatus(t, e) })
	t.Run("GC", func(t *testing.T) { t.Parallel(); testGC(t, e) })
}

// podIP is the pod's address from an ADD result of any version.
func podIP(t testing.TB, res types.Result) net.IP {
	t.Helper()
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %v", len(r.IPs), r.IPs)
	}
	return r.IPs[0].Address.IP.To4()
}

func mustAdd(t testing.TB, n *node, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) net.IP {
	t.Helper()
	res, err := n.add(list, rt)
	if err != nil {
		t.Fatalf("ADD %s: %v", rt.ContainerID[:8], err)
	}
	return podIP(t, res)
}

func mustDel(t testing.TB, n *node, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	t.Helper()
	if err := n.del(list, rt); err != nil {
		t.Fatalf("DEL %s: %v", rt.ContainerID[:8], err)
	}
}

func testAddWiring(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "tftp-server")
	list := n.conflist("", nil)
	res, err := n.add(list, p.rt())
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ip := podIP(t, res)
	const host = "calic170cc94aee" // cali + sha1("default.tftp-server")[:11]
	contMAC := ipJSON(t, p.netns, "link", "show", "eth0")[0]["address"].(string)

	t.Run("result", func(t *testing.T) {
		raw, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		json.Unmarshal(raw, &got)
		want := map[string]any{
			"cniVersion": list.CNIVersion, // the shipped conflist's
			"interfaces": []any{
				map[string]any{"name": host, "mac": "ee:ee:ee:ee:ee:ee", "mtu": float64(agentMTU)},
				map[string]any{"name": "eth0", "mac": contMAC, "mtu": float64(agentMTU), "sandbox": p.netns.Path()},
			},
			"ips":    []any{map[string]any{"interface": float64(1), "address": ip.String() + "/32"}},
			"routes": []any{map[string]any{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ADD result (-want +got):\n%s", diff)
		}
	})

	t.Run("host side", func(t *testing.T) {
		l := ipJSON(t, n.netns, "-d", "link", "show", host)[0]
		got := map[string]any{
			"kind":      l["linkinfo"].(map[string]any)["info_kind"],
			"address":   l["address"],
			"mtu":       l["mtu"],
			"operstate": l["operstate"],
			"ifalias":   l["ifalias"],
			"addresses": len(ipJSON(t, n.netns, "addr", "show", "dev", host)[0]["addr_info"].([]any)),
		}
		want := map[string]any{
			"kind": "veth", "address": "ee:ee:ee:ee:ee:ee", "mtu": float64(agentMTU),
			"operstate": "UP", "ifalias": p.id, "addresses": 0,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("host veth (-want +got):\n%s", diff)
		}
		wantRoutes := sortedLines(n.baseRoutes + "\n" + ip.String() + " dev " + host + " scope link")
		if diff := cmp.Diff(wantRoutes, sortedLines(n.routes())); diff != "" {
			t.Errorf("node routes (-want +got):\n%s", diff)
		}
		sysctls := map[string]string{
			"ipv4/conf/" + host + "/proxy_arp":    "1",
			"ipv4/neigh/" + host + "/proxy_delay": "0",
			"ipv4/conf/" + host + "/forwarding":   "1",
		}
		got2 := map[string]string{}
		for k := range sysctls {
			got2[k] = sysctl(t, n.netns, k)
		}
		if diff := cmp.Diff(sysctls, got2); diff != "" {
			t.Errorf("host sysctls (-want +got):\n%s", diff)
		}
	})

	t.Run("pod side", func(t *testing.T) {
		l := ipJSON(t, p.netns, "-d", "link", "show", "eth0")[0]
		var addrs []string
		for _, a := range ipJSON(t, p.netns, "-4", "addr", "show", "dev", "eth0")[0]["addr_info"].([]any) {
			a := a.(map[string]any)
			addrs = append(addrs, fmt.Sprintf("%s/%v scope %s", a["local"], a["prefixlen"], a["scope"]))
		}
		got := map[string]any{
			"kind": l["linkinfo"].(map[string]any)["info_kind"], "mtu": l["mtu"], "operstate": l["operstate"],
			"addresses": addrs,
			"routes":    p.ip(t, "-4", "route", "show"),
		}
		want := map[string]any{
			"kind": "veth", "mtu": float64(agentMTU), "operstate": "UP",
			"addresses": []string{ip.String() + "/32 scope global"},
			"routes":    "default via 169.254.1.1 dev eth0\n169.254.1.1 dev eth0 scope link",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("pod eth0 (-want +got):\n%s", diff)
		}
	})

	mustDel(t, n, list, p.rt())
	n.assertClean(t)
}

func testPing(t *testing.T, e *env) {
	n := newNode(t, e)
	list := n.conflist("", nil)
	a, b := newPod(t, "default", "tftp-server"), newPod(t, "default", "tftp-client")
	ipA, ipB := mustAdd(t, n, list, a.rt()), mustAdd(t, n, list, b.rt())
	for _, c := range []struct {
		from     ns.NetNS
		src, dst net.IP
	}{
		{a.netns, ipA, ipB},
		{b.netns, ipB, ipA},
		{a.netns, ipA, nodeAddr},
		{b.netns, ipB, nodeAddr},
		{n.netns, nodeAddr, ipA},
	} {
		if err := ping(c.from, c.src, c.dst); err != nil {
			t.Errorf("ping %s -> %s: %v", c.src, c.dst, err)
		}
	}
	// The pod resolved its gateway through proxy ARP on the host veth.
	if got := a.ip(t, "neigh", "show", "169.254.1.1"); !strings.Contains(got, "lladdr ee:ee:ee:ee:ee:ee") {
		t.Errorf("pod's neighbour entry for 169.254.1.1 = %q, want lladdr ee:ee:ee:ee:ee:ee", got)
	}
	mustDel(t, n, list, a.rt())
	mustDel(t, n, list, b.rt())
	n.assertClean(t)
}

func testVersions(t *testing.T, e *env) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, e)
			p := newPod(t, "default", "web-"+strings.ReplaceAll(v, ".", ""))
			list := n.conflist(v, nil)
			res, err := n.add(list, p.rt())
			if err != nil {
				t.Fatalf("ADD at %s: %v", v, err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			// Decode the JSON a runtime receives with the decoder of its
			// version, and check what it says.
			var buf strings.Builder
			if err := res.PrintTo(&buf); err != nil {
				t.Fatal(err)
			}
			var top map[string]any
			if err := json.Unmarshal([]byte(buf.String()), &top); err != nil {
				t.Fatal(err)
			}
			if top["cniVersion"] != v {
				t.Errorf("result JSON says cniVersion %v, want %s", top["cniVersion"], v)
			}
			ipVersion := top["ips"].([]any)[0].(map[string]any)["version"]
			if wantV := map[string]any{"0.3.1": "4", "0.4.0": "4"}[v]; ipVersion != wantV {
				t.Errorf(`ips[0]["version"] = %v, want %v for %s`, ipVersion, wantV, v)
			}
			parsed, err := version.NewResult(v, []byte(buf.String()))
			if err != nil {
				t.Fatalf("the %s result does not decode as %s: %v\n%s", v, v, err, buf.String())
			}
			r, err := current.NewResultFromResult(parsed)
			if err != nil {
				t.Fatal(err)
			}
			host := "cali" + hostHash(p)
			contMAC := ipJSON(t, p.netns, "link", "show", "eth0")[0]["address"].(string)
			type iface struct{ Name, Mac, Sandbox string }
			var gotIfs []iface
			for _, i := range r.Interfaces {
				gotIfs = append(gotIfs, iface{i.Name, i.Mac, i.Sandbox})
			}
			wantIfs := []iface{{host, "ee:ee:ee:ee:ee:ee", ""}, {"eth0", contMAC, p.netns.Path()}}
			if diff := cmp.Diff(wantIfs, gotIfs); diff != "" {
				t.Errorf("interfaces (-want +got):\n%s", diff)
			}
			if got := fmt.Sprint(r.IPs[0].Address.String(), " on ", *r.IPs[0].Interface); !strings.HasSuffix(got, "/32 on 1") {
				t.Errorf("ips[0] = %s, want <ip>/32 on interface 1", got)
			}
			if got := fmt.Sprint(r.Routes); got != "[{Dst:{IP:0.0.0.0 Mask:00000000} GW:169.254.1.1 MTU:0 AdvMSS:0 Priority:0 Table:<nil> Scope:<nil>}]" {
				t.Errorf("routes = %s, want default via 169.254.1.1", got)
			}
			if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
				if err := n.check(list, p.rt()); err != nil {
					t.Errorf("CHECK at %s: %v", v, err)
				}
			}
			mustDel(t, n, list, p.rt())
			n.assertClean(t)
		})
	}
}

func testAddTwice(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "tftp-server")
	list := n.conflist("", nil)
	first := mustAdd(t, n, list, p.rt())
	second := mustAdd(t, n, list, p.rt())
	if !first.Equal(second) {
		t.Errorf("second ADD gave %s, the first %s", second, first)
	}
	if got, want := n.links(), n.baseLinks+"\ncalic170cc94aee veth"; got != sortedJoin(want) {
		t.Errorf("node links after two ADDs:\n%s\nwant:\n%s", got, sortedJoin(want))
	}
	if got := n.inUse(); !slices.Contains(got, first.String()) || len(addrsOnly(got)) != 1 {
		t.Errorf("allocated after two ADDs: %v, want only %s", got, first)
	}
	if err := n.check(list, p.rt()); err != nil {
		t.Errorf("CHECK after two ADDs: %v", err)
	}
	if err := ping(n.netns, nodeAddr, first); err != nil {
		t.Errorf("node -> pod after two ADDs: %v", err)
	}
	mustDel(t, n, list, p.rt())
	n.assertClean(t)
}

func testDelTwice(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "tftp-server")
	list := n.conflist("", nil)
	mustAdd(t, n, list, p.rt())
	mustDel(t, n, list, p.rt())
	if err := n.del(list, p.rt()); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	n.assertClean(t)
}

func testDelNetnsGone(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "tftp-server")
	list := n.conflist("", nil)
	mustAdd(t, n, list, p.rt())
	removeNetNS(t, p.netns)
	if err := n.del(list, p.rt()); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	n.assertClean(t)
}

// testDelNotNetns: a DEL whose CNI_NETNS is a regular file or another
// kind of namespace cannot find the pod end there; it removes the host
// end by name and releases the address like a DEL after the netns is
// gone, instead of failing forever.
func testDelNotNetns(t *testing.T, e *env) {
	file := filepath.Join(t.TempDir(), "not-a-netns")
	writeFile(t, file, "")
	for _, path := range []string{file, "/proc/self/ns/mnt"} {
		n := newNode(t, e)
		p := newPod(t, "default", "tftp-server")
		list := n.conflist("", nil)
		mustAdd(t, n, list, p.rt())
		rt := p.rt()
		rt.NetNS = path
		if err := n.del(list, rt); err != nil {
			t.Fatalf("DEL with CNI_NETNS %s: %v", path, err)
		}
		n.assertClean(t)
	}
}

// testSandboxRestart: a pod's host veth name comes from its namespace and
// name, so a new sandbox of the same pod takes over the name while the old
// sandbox's DEL may still be pending. That DEL must leave the new wiring.
func testSandboxRestart(t *testing.T, e *env) {
	n := newNode(t, e)
	list := n.conflist("", nil)
	old, cur := newPod(t, "default", "tftp-server"), newPod(t, "default", "tftp-server")
	mustAdd(t, n, list, old.rt())
	ip := mustAdd(t, n, list, cur.rt())
	mustDel(t, n, list, old.rt())
	if err := n.check(list, cur.rt()); err != nil {
		t.Errorf("CHECK of the new sandbox after the old one's DEL: %v", err)
	}
	if err := ping(n.netns, nodeAddr, ip); err != nil {
		t.Errorf("node -> new sandbox: %v", err)
	}
	mustDel(t, n, list, cur.rt())
	n.assertClean(t)
}

func testCheckRoute(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "tftp-server")
	list := n.conflist("", nil)
	mustAdd(t, n, list, p.rt())
	if err := n.check(list, p.rt()); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	p.ip(t, "route", "del", "default")
	err := n.check(list, p.rt())
	if err == nil || !strings.Contains(err.Error(), "default route (default via 169.254.1.1 dev eth0) is missing") {
		t.Errorf("CHECK without the default route: %v; want an error naming it", err)
	}
	mustDel(t, n, list, p.rt())
	n.assertClean(t)
}

func testBadInput(t *testing.T, e *env) {
	tests := []struct {
		name     string
		run      func(t *testing.T, n *node, p *pod) error
		wantCode uint
		wantMsg  string
	}{
		{
			name: "malformed JSON",
			run: func(t *testing.T, n *node, p *pod) error {
				// libcni would refuse to send it; a runtime with a broken
				// config writer would not, so talk to the binary the way
				// libcni does, through its invoke package.
				rt := p.rt()
				return n.do(func() error {
					_, err := invoke.ExecPluginWithResult(context.Background(), filepath.Join(e.bin, "calyx"),
						[]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"calyx",`),
						&invoke.Args{Command: "ADD", ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: rt.IfName, Path: e.bin}, nil)
					return err
				})
			},
			wantCode: types.ErrDecodingFailure,
			wantMsg:  "error unmarshall network config",
		},
		{
			name: "mtu of the wrong JSON type",
			run: func(t *testing.T, n *node, p *pod) error {
				_, err := n.add(n.conflist("", func(c map[string]any) { c["mtu"] = "1400" }), p.rt())
				return err
			},
			wantCode: types.ErrDecodingFailure,
			wantMsg:  "does not decode",
		},
		{
			name: "unsupported cniVersion 0.2.0",
			run: func(t *testing.T, n *node, p *pod) error {
				_, err := n.add(n.conflist("0.2.0", nil), p.rt())
				return err
			},
			wantCode: types.ErrIncompatibleCNIVersion,
			wantMsg:  "incompatible CNI versions",
		},
		{
			name: "unsupported cniVersion 2.0.0",
			run: func(t *testing.T, n *node, p *pod) error {
				_, err := n.add(n.conflist("2.0.0", nil), p.rt())
				return err
			},
			wantCode: types.ErrIncompatibleCNIVersion,
			wantMsg:  "incompatible CNI versions",
		},
		{
			name: "missing CNI_NETNS",
			run: func(t *testing.T, n *node, p *pod) error {
				rt := p.rt()
				rt.NetNS = ""
				_, err := n.add(n.conflist("", nil), rt)
				return err
			},
			wantCode: types.ErrInvalidEnvironmentVariables,
			wantMsg:  "CNI_NETNS",
		},
		{
			name: "nonexistent netns",
			run: func(t *testing.T, n *node, p *pod) error {
				rt := p.rt()
				rt.NetNS = "/var/run/netns/calyx-test-gone-" + randHex(4)
				_, err := n.add(n.conflist("", nil), rt)
				return err
			},
			wantCode: types.ErrInvalidEnvironmentVariables,
			wantMsg:  "does not exist",
		},
		{
			name: "netns is the node's own",
			run: func(t *testing.T, n *node, p *pod) error {
				rt := p.rt()
				rt.NetNS = n.netns.Path()
				_, err := n.add(n.conflist("", nil), rt)
				return err
			},
			wantCode: types.ErrInvalidEnvironmentVariables,
			wantMsg:  "is the namespace the plugin runs in",
		},
		{
			name: "negative mtu",
			run: func(t *testing.T, n *node, p *pod) error {
				_, err := n.add(n.conflist("", func(c map[string]any) { c["mtu"] = -5 }), p.rt())
				return err
			},
			wantCode: types.ErrInvalidNetworkConfig,
			wantMsg:  "mtu -5 is out of range",
		},
		{
			name: "mtu above 65535",
			run: func(t *testing.T, n *node, p *pod) error {
				_, err := n.add(n.conflist("", func(c map[string]any) { c["mtu"] = 70000 }), p.rt())
				return err
			},
			wantCode: types.ErrInvalidNetworkConfig,
			wantMsg:  "mtu 70000 is out of range",
		},
		{
			name: "garbage in the agent's mtu file",
			run: func(t *testing.T, n *node, p *pod) error {
				writeFile(t, filepath.Join(n.stateDir, "mtu"), "jumbo\n")
				_, err := n.add(n.conflist("", nil), p.rt())
				return err
			},
			wantCode: types.ErrInvalidNetworkConfig,
			wantMsg:  `holds "jumbo"`,
		},
		{
			name: "interface name taken in the pod",
			run: func(t *testing.T, n *node, p *pod) error {
				err := p.netns.Do(func(ns.NetNS) error {
					return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
				})
				if err != nil {
					t.Fatal(err)
				}
				_, err = n.add(n.conflist("", nil), p.rt())
				if got := p.ip(t, "-o", "-d", "link", "show", "eth0"); !strings.Contains(got, "bridge") {
					t.Errorf("the pod's own eth0 was changed: %s", got)
				}
				return err
			},
			wantCode: types.ErrInvalidEnvironmentVariables,
			wantMsg:  "eth0 already exists in the pod",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, e)
			p := newPod(t, "default", "bad")
			err := tt.run(t, n, p)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if code := cniCode(err); code != tt.wantCode {
				t.Errorf("error code %d, want %d: %v", code, tt.wantCode, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			n.assertClean(t)
		})
	}
}

func testExhausted(t *testing.T, e *env) {
	var n *node
	switch e.ipam {
	case ipamHostLocal:
		// A /30 less network, broadcast and gateway: one address.
		n = newNode(t, e, withIPAM(map[string]any{"ranges": []any{[]any{map[string]any{"subnet": "10.245.0.0/30"}}}}))
	case ipamCalyx:
		pool := "one-address-" + randHex(3)
		e.createPool(t, pool, "10.246.0.7/32", 32)
		n = newNode(t, e, withIPAM(map[string]any{"pools": []any{pool}}))
	}
	list := n.conflist("", nil)
	first := newPod(t, "default", "first")
	ip := mustAdd(t, n, list, first.rt())
	afterFirst := n.links()

	second := newPod(t, "default", "second")
	_, err := n.add(list, second.rt())
	if err == nil {
		t.Fatal("ADD with the pool exhausted succeeded")
	}
	if want := fmt.Sprintf("IPAM plugin %s failed on ADD", e.ipam); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	// IPAM's own code reaches the runtime: calyx-ipam's "no free
	// address", host-local's generic one.
	if want := map[ipamKind]uint{ipamCalyx: ipamplugin.ErrNoFreeAddress, ipamHostLocal: types.ErrInternal}[e.ipam]; cniCode(err) != want {
		t.Errorf("error code %d, want %d: %v", cniCode(err), want, err)
	}
	if got := n.links(); got != afterFirst {
		t.Errorf("links after the failed ADD:\n%s\nwant:\n%s", got, afterFirst)
	}
	if got := addrsOnly(n.inUse()); !cmp.Equal(got, []string{ip.String()}) {
		t.Errorf("allocated after the failed ADD: %v, want only the first pod's %s", got, ip)
	}
	mustDel(t, n, list, first.rt())
	n.assertClean(t)
}

func testPortmap(t *testing.T, e *env) {
	n := newNode(t, e)
	list := n.conflist("", nil)
	web, client := newPod(t, "default", "web"), newPod(t, "default", "client")
	rtWeb := web.rt()
	rtWeb.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
		{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
	}}
	mustAdd(t, n, list, rtWeb)
	mustAdd(t, n, list, client.rt())

	var ln net.Listener
	if err := web.netns.Do(func(ns.NetNS) (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	var got string
	err := client.netns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(nodeAddr.String(), "18080"), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil || !strings.HasPrefix(got, "hello from ") {
		t.Errorf("client -> node:18080 -> web:8080: %q, %v", got, err)
	}
	mustDel(t, n, list, rtWeb)
	mustDel(t, n, list, client.rt())
	n.assertClean(t)
}

// testLoopback: containerd sets up a pod's lo with a network of its own,
// through the same libcni and the loopback binary calyx ships.
func testLoopback(t *testing.T, e *env) {
	n := newNode(t, e)
	p := newPod(t, "default", "lo")
	list := toConfList(t, map[string]any{
		"cniVersion": "1.1.0", "name": "cni-loopback",
		"plugins": []any{map[string]any{"type": "loopback"}},
	})
	rt := p.rt()
	rt.IfName = "lo"
	if _, err := n.add(list, rt); err != nil {
		t.Fatalf("loopback ADD at 1.1.0: %v", err)
	}
	if got := ipJSON(t, p.netns, "link", "show", "lo")[0]["operstate"]; got != "UNKNOWN" {
		t.Errorf("lo operstate %v, want UNKNOWN (up; lo has no carrier state)", got)
	}
	if err := ping(p.netns, net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 1)); err != nil {
		t.Errorf("ping 127.0.0.1 in the pod: %v", err)
	}
	if err := n.del(list, rt); err != nil {
		t.Errorf("loopback DEL: %v", err)
	}
}

// STATUS and GC are CNI 1.1.0's verbs: a runtime calls them when its
// conflist says 1.1.0 (the shipped one says 1.0.0, for containerd 1.x's
// sake; a containerd 2 user may write 1.1.0).
func testStatus(t *testing.T, e *env) {
	n := newNode(t, e, withoutState())
	list := n.conflist("1.1.0", nil)
	err := n.status(list)
	if cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "nodename is missing") {
		t.Errorf("STATUS before the agent is ready: %v; want code 50 naming the nodename file", err)
	}
	writeFile(t, filepath.Join(n.stateDir, "nodename"), n.name)
	if err := n.status(list); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "mtu is missing") {
		t.Errorf("STATUS with only the nodename written: %v; want code 50 naming the mtu file", err)
	}
	writeFile(t, filepath.Join(n.stateDir, "mtu"), "1430")
	if err := n.status(list); err != nil {
		t.Errorf("STATUS with the agent ready: %v", err)
	}
	broken := n.conflist("1.1.0", func(c map[string]any) { c["ipam"].(map[string]any)["type"] = "no-such-ipam" })
	if err := n.status(broken); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "IPAM plugin no-such-ipam is not available") {
		t.Errorf("STATUS with IPAM unavailable: %v; want code 50 naming the IPAM plugin", err)
	}
}

func testGC(t *testing.T, e *env) {
	n := newNode(t, e)
	list := n.conflist("1.1.0", nil)
	keep, stale := newPod(t, "default", "keep"), newPod(t, "default", "stale")
	ipKeep := mustAdd(t, n, list, keep.rt())
	mustAdd(t, n, list, stale.rt())
	if e.ipam == ipamCalyx {
		// An attachment the runtime lost track of: no cache entry, so
		// libcni cannot DEL it; only IPAM's GC frees its address.
		lost := newPod(t, "default", "lost")
		mustAdd(t, n, list, lost.rt())
		if err := os.Remove(filepath.Join(n.dir, "cache", "results", "k8s-pod-network-"+lost.id+"-eth0")); err != nil {
			t.Fatal(err)
		}
		removeNetNS(t, lost.netns)
	}
	// libcni DELs attachments it has cached but the runtime no longer
	// lists, then hands the list to each plugin's GC.
	if err := n.gc(list, keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := addrsOnly(n.inUse()); !cmp.Equal(got, []string{ipKeep.String()}) {
		t.Errorf("allocated after GC: %v, want only %s", got, ipKeep)
	}
	if err := n.check(list, keep.rt()); err != nil {
		t.Errorf("CHECK of the pod GC kept: %v", err)
	}
	mustDel(t, n, list, keep.rt())
	n.assertClean(t)
}

// hostHash is the hash part of the pod's host veth name, computed here
// rather than by the package under test.
func hostHash(p *pod) string {
	sum := sha1.Sum([]byte(p.namespace + "." + p.name))
	return hex.EncodeToString(sum[:])[:11]
}

func sortedLines(s string) []string {
	var out []string
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

func sortedJoin(s string) string { return strings.Join(sortedLines(s), "\n") }

// addrsOnly drops the "handle …" entries of inUse.
func addrsOnly(in []string) []string {
	var out []string
	for _, s := range in {
		if !strings.HasPrefix(s, "handle ") {
			out = append(out, s)
		}
	}
	return out
}
