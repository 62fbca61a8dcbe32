package cniplugin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/ipam/plugin/plugintest"
	"github.com/calyx-net/calyx/ipam/socket"
)

// withAgentIPAM gives the node the agent's IPAM socket, run in the test
// process, and names it in the conflist.
func withAgentIPAM(t testing.TB, e *env) (nodeOpt, *plugintest.Server) {
	t.Helper()
	s := plugintest.Start(t, e.cp.Config)
	return withIPAM(map[string]any{"agent_socket": s.Path}), s
}

// TestAgentIPAMSocket: with ipam.agent_socket, ADD, CHECK and DEL go to
// the agent and never start calyx-ipam; when the agent is gone, the same
// conflist falls back to the binary, which sees the agent's allocations.
func TestAgentIPAMSocket(t *testing.T) {
	e := newEnv(t, ipamCalyx)
	opt, srv := withAgentIPAM(t, e)
	n := newNode(t, e, opt)
	list := n.conflist("", nil)

	p1 := newPod(t, "default", "socket-1")
	r1, err := n.add(list, p1.rt())
	if err != nil {
		t.Fatalf("ADD through the agent socket: %v", err)
	}
	if err := n.check(list, p1.rt()); err != nil {
		t.Fatalf("CHECK through the agent socket: %v", err)
	}
	if got := []int{srv.Answered("ADD"), srv.Answered("CHECK")}; got[0] != 1 || got[1] != 1 {
		t.Fatalf("the agent answered ADD %d and CHECK %d times, want 1 and 1: the plugin did not use the socket", got[0], got[1])
	}
	ip1 := resultIP(t, r1)

	// The agent stops (a crash or an upgrade): pods still start, through
	// calyx-ipam, and get another address than the agent's pod.
	srv.Stop()
	p2 := newPod(t, "default", "socket-2")
	r2, err := n.add(list, p2.rt())
	if err != nil {
		t.Fatalf("ADD with the agent gone (fallback to calyx-ipam): %v", err)
	}
	if ip2 := resultIP(t, r2); ip2 == ip1 {
		t.Fatalf("the fallback gave %s again, the address the agent gave pod 1", ip2)
	}
	// The binary releases what the agent allocated.
	for _, p := range []*pod{p1, p2} {
		if err := n.del(list, p.rt()); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	if srv.Answered("ADD") != 1 {
		t.Fatalf("a stopped agent answered")
	}
	n.assertClean(t)
}

// BenchmarkAgentIPAM is one setup of BenchmarkPodLatency alone: ADDs
// through the agent socket, for profiling it.
func BenchmarkAgentIPAM(b *testing.B) {
	e := newEnv(b, ipamCalyx)
	opt, srv := withAgentIPAM(b, e)
	n := newNode(b, e, opt)
	list := n.conflist("", nil)
	var pods []*pod
	for i := range b.N {
		pods = append(pods, newPod(b, "bench", fmt.Sprintf("pod-%d", i)))
	}
	b.ResetTimer()
	for _, p := range pods {
		if _, err := n.add(list, p.rt()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for _, p := range pods {
		if err := n.del(list, p.rt()); err != nil {
			b.Fatal(err)
		}
	}
	n.assertClean(b)
	b.ReportMetric(ms(pct(srv.Took("ADD"), 50)), "agent-ADD-p50-ms")
	b.ReportMetric(ms(pct(srv.Took("DEL"), 50)), "agent-DEL-p50-ms")
}

func resultIP(t testing.TB, r types.Result) string {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD result %v has no address (%v)", r, err)
	}
	return res.IPs[0].Address.IP.String()
}

// TestAgentIPAMAccepted: the agent says an ADD is accepted, so that the
// plugin wires the pod while the allocation is written, only when the
// request is sound; a bad pool is refused before that, so that nothing
// is built for it even for a moment. An allocation that fails after the
// acceptance leaves the node's links and the pools as they were.
func TestAgentIPAMAccepted(t *testing.T) {
	e := newEnv(t, ipamCalyx)
	_, srv := withAgentIPAM(t, e)
	one := "one-address-" + randHex(3)
	e.createPool(t, one, "10.246.1.7/32", 32)
	n := newNode(t, e, withIPAM(map[string]any{"agent_socket": srv.Path}))

	// call sends an ADD or DEL over the socket as the plugin does, with
	// the shipped netconf's ipam.pools set to pools.
	call := func(t *testing.T, command string, p *pod, pools []any) (accepted bool, err error) {
		t.Helper()
		list := n.conflist("", func(c map[string]any) {
			if pools != nil {
				c["ipam"].(map[string]any)["pools"] = pools
			}
		})
		var conf map[string]any
		if err := json.Unmarshal(list.Plugins[0].Bytes, &conf); err != nil {
			t.Fatal(err)
		}
		conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
		stdin, err := json.Marshal(conf)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err = socket.CallAccepted(ctx, srv.Path, socket.Request{
			Command: command, ContainerID: p.id, Netns: p.netns.Path(), IfName: "eth0",
			Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + p.name, StdinData: stdin,
		}, func() { accepted = true })
		return accepted, err
	}

	for _, tc := range []struct {
		name         string
		pools        []any
		wantAccepted bool
		wantCode     uint // 0: allocated
	}{
		{"the default pools", nil, true, 0},
		{"a pool by name", []any{one}, true, 0},
		{"an unknown pool", []any{"no-such-pool"}, false, types.ErrInvalidNetworkConfig},
		{"a CIDR no pool has", []any{"10.99.0.0/16"}, false, types.ErrInvalidNetworkConfig},
		{"the one-address pool, now full", []any{one}, true, plugin.ErrNoFreeAddress},
	} {
		p := newPod(t, "default", "accepted-"+randHex(3))
		accepted, err := call(t, "ADD", p, tc.pools)
		if accepted != tc.wantAccepted || cniCode(err) != tc.wantCode {
			t.Errorf("%s: accepted %v, code %d (%v); want accepted %v, code %d", tc.name, accepted, cniCode(err), err, tc.wantAccepted, tc.wantCode)
		}
		if err == nil && tc.name != "a pool by name" {
			// The one-address pool's pod stays: the last case needs it full.
			if _, err := call(t, "DEL", p, tc.pools); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		}
	}

	// The plugin, in that full pool: it wires while the agent writes, the
	// write fails, and what it built goes.
	list := n.conflist("", func(c map[string]any) { c["ipam"].(map[string]any)["pools"] = []any{one} })
	before := n.links()
	_, err := n.add(list, newPod(t, "default", "no-room").rt())
	if cniCode(err) != plugin.ErrNoFreeAddress {
		t.Fatalf("ADD in a full pool through the agent: code %d (%v), want %d", cniCode(err), err, plugin.ErrNoFreeAddress)
	}
	if got := n.links(); got != before {
		t.Errorf("links after the failed ADD:\n%s\nwant:\n%s", got, before)
	}
	if got, want := addrsOnly(n.inUse()), []string{"10.246.1.7"}; !slices.Equal(got, want) {
		t.Errorf("allocated after the failed ADD: %v, want only %v", got, want)
	}
}
