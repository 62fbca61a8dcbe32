package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/images"
)

// TestUpgradeKeepsTraffic rolls calyx-node to a new image, node by node as
// its RollingUpdate does (install-cni runs again, each agent restarts),
// while a pod on learn-k8s-2 and a pod on learn-k8s-3 ping each other 50
// times a second. Traffic may lose at most what falls in the time a node's
// agent is not ready (the datapath is in the kernel: it should lose
// nothing), and the pods added before the upgrade are deleted cleanly
// after it: their DEL runs with what the new calyx-node installed.
func TestUpgradeKeepsTraffic(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	c := l.Client()
	a, err := c.AddPod(ctx, lab.PodSpec{Namespace: "upgrade", Name: "a", Node: "learn-k8s-2"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AddPod(ctx, lab.PodSpec{Namespace: "upgrade", Name: "b", Node: "learn-k8s-3"})
	if err != nil {
		t.Fatal(err)
	}
	// The new version: the same binaries under a new tag, on every node.
	const next = "ghcr.io/calyx-net/calyx:next"
	for _, n := range nodes {
		if out, err := c.Output(ctx, n.name, "ctr", "images", "tag", images.CalyxTag, next); err != nil {
			t.Fatalf("tagging the calyx image on %s: %v\n%s", n.name, err, out)
		}
	}
	pings := startPings(t, c, a, b)
	notReady := watchAgents(ctx, c)
	begin := time.Now()
	if _, err := c.Kubectl(ctx, nil, "-n", "kube-system", "set", "image", "daemonset/calyx-node", "install-cni="+next, "calyx-agent="+next); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "daemonset/calyx-node", "--timeout=3m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rollout := time.Since(begin)
	time.Sleep(time.Second)
	away := notReady()
	results := pings()
	t.Logf("calyx-node rolled to %s on 3 nodes in %s; agents not ready for %v", next, rollout.Round(time.Millisecond), away)
	allowed := 0
	for _, d := range away {
		allowed += int(d / pingInterval)
	}
	for _, r := range results {
		t.Logf("ping %s: %d sent, %d received, %d lost (allowed: %d, the packets of the agents' absence)", r.what, r.sent, r.received, r.sent-r.received, allowed)
		if r.sent < 100 || r.sent-r.received > allowed {
			t.Errorf("ping %s: %d of %d lost during the upgrade, want at most %d", r.what, r.sent-r.received, r.sent, allowed)
		}
	}
	before := len(allocations(t, l))
	for _, p := range []*lab.PodState{a, b} {
		if err := c.DelPod(ctx, p.Key()); err != nil {
			t.Fatalf("deleting %s, added before the upgrade: %v", p.Key(), err)
		}
		if out, err := c.Output(ctx, p.Node, "ip", "link", "show", p.HostIface); err == nil {
			t.Errorf("%s's veth %s is still on %s:\n%s", p.Key(), p.HostIface, p.Node, out)
		}
	}
	if after := len(allocations(t, l)); after != before-2 {
		t.Errorf("%d pod addresses allocated after deleting both pods, want %d", after, before-2)
	}
}

// TestAgentOutage deletes calyx-node on learn-k8s-3 with no replacement,
// as between the uninstall of one DaemonSet and the install of the next:
// pods are still added and deleted there (the plugins' credential is not
// the agent pod's, and calyx-ipam runs as a binary when the agent's socket
// does not answer), and a new pod there is reached from learn-k8s-2.
func TestAgentOutage(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	c := l.Client()
	old, err := c.AddPod(ctx, lab.PodSpec{Namespace: "outage", Name: "before", Node: "learn-k8s-3"})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := c.AddPod(ctx, lab.PodSpec{Namespace: "outage", Name: "peer", Node: "learn-k8s-2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ExcludeAgent(ctx, "learn-k8s-3"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.IncludeAgent(context.Background()); err != nil {
			t.Errorf("calyx-node back on every node: %v", err)
		}
	}()
	if p, _ := c.CalyxNodePod(ctx, "learn-k8s-3"); p != nil {
		t.Fatalf("calyx-node %s still runs on learn-k8s-3", p.Name)
	}
	begin := time.Now()
	added, err := c.AddPod(ctx, lab.PodSpec{Namespace: "outage", Name: "during", Node: "learn-k8s-3"})
	if err != nil {
		t.Fatalf("adding a pod on learn-k8s-3 without calyx-node: %v", err)
	}
	t.Logf("a pod on learn-k8s-3 without calyx-node: Ready with %s in %s", added.IP, time.Since(begin).Round(time.Millisecond))
	if out, err := c.Exec(ctx, peer.Key(), "ping", "-c", "2", "-W", "2", added.IP); err != nil {
		t.Errorf("ping from %s to the new pod on learn-k8s-3: %v\n%s", peer.Key(), err, out)
	}
	before := len(allocations(t, l))
	for _, p := range []*lab.PodState{old, added} {
		begin := time.Now()
		if err := c.DelPod(ctx, p.Key()); err != nil {
			t.Fatalf("deleting %s without calyx-node on its node: %v", p.Key(), err)
		}
		t.Logf("%s deleted without calyx-node in %s", p.Key(), time.Since(begin).Round(time.Millisecond))
	}
	if after := len(allocations(t, l)); after != before-2 {
		t.Errorf("%d pod addresses allocated after deleting both pods on learn-k8s-3, want %d: DEL without the agent did not release them", after, before-2)
	}
	if err := c.DelPod(ctx, peer.Key()); err != nil {
		t.Error(err)
	}
}

const pingInterval = 20 * time.Millisecond

type pingResult struct {
	what           string
	sent, received int
}

// startPings pings b from a and a from b until the returned function is
// called, which returns what each ping counted.
func startPings(t *testing.T, c *lab.Client, a, b *lab.PodState) func() []pingResult {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var results []pingResult
	for _, dir := range [][2]*lab.PodState{{a, b}, {b, a}} {
		from, to := dir[0], dir[1]
		cmd, err := c.Command(ctx, from.Key(), "ping", "-i", fmt.Sprint(pingInterval.Seconds()), "-W", "1", to.IP)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		cmd.Stdout = &out
		// SIGINT, as Ctrl-C: ping prints its statistics.
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd.Wait()
			sent, received := pingCounts(out.String())
			mu.Lock()
			results = append(results, pingResult{from.Node + " → " + to.Node, sent, received})
			mu.Unlock()
		}()
	}
	return func() []pingResult {
		cancel()
		wg.Wait()
		return results
	}
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

func pingCounts(out string) (sent, received int) {
	m := pingStats.FindStringSubmatch(out)
	if m == nil {
		return 0, 0
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// watchAgents polls every node's agent's /readyz every 50 ms until the
// returned function is called, which returns how long each was not ready.
func watchAgents(ctx context.Context, c *lab.Client) func() map[string]time.Duration {
	ctx, cancel := context.WithCancel(ctx)
	away := map[string]time.Duration{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				for _, n := range nodes {
					if ok, _ := lab.AgentReady(ctx, n.name); !ok {
						away[n.name] += now.Sub(last)
					}
				}
				last = now
			}
		}
	}()
	return func() map[string]time.Duration {
		cancel()
		<-done
		return away
	}
}
