package fault

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/calyx-net/calyx/lab"
)

// TestAPIServerRestartDuringAdds restarts kube-apiserver in the middle of
// 50 concurrent CNI ADDs on two nodes, as a control-plane upgrade during a
// deployment's scale-up does. Every ADD either succeeds or tells the
// runtime to try again later (CNI code 11); no address is held twice; the
// runtime's retries (DEL, then ADD again) succeed once the API is back; and
// DEL leaves nothing allocated.
func TestAPIServerRestartDuringAdds(t *testing.T) {
	const n = 50
	l := sharedLab(t)
	c := l.Client()
	ctx := context.Background()

	before, _ := podAllocations(t, l)
	var sbs []*lab.Sandbox
	for i := range n {
		node := node2
		if i%2 == 1 {
			node = node3
		}
		sb, err := c.NewSandbox("burst", fmt.Sprintf("b%02d", i), node)
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	t.Cleanup(func() {
		for _, sb := range sbs {
			c.CNIDel(context.Background(), sb)
			c.RemoveSandbox(sb)
		}
	})

	type outcome struct {
		err error
		// phase is when the ADD returned: before kube-apiserver was
		// stopped, while it was down (or starting), or after it was ready.
		phase string
	}
	outcomes := make([]outcome, n)
	var phase atomic.Value
	phase.Store("API up")
	var succeeded atomic.Int32
	var wg sync.WaitGroup
	begin := time.Now()
	for i, sb := range sbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.CNIAdd(ctx, sb)
			if err == nil {
				succeeded.Add(1)
			}
			outcomes[i] = outcome{err: err, phase: phase.Load().(string)}
		}()
	}
	// Stop the API server once the burst is well under way.
	if _, ok := pollUntil(60*time.Second, 5*time.Millisecond, func() bool { return succeeded.Load() >= 5 }); !ok {
		t.Fatalf("fewer than 5 of %d ADDs succeeded in 60 s with the API server up", n)
	}
	okBeforeStop := succeeded.Load()
	phase.Store("API down or starting")
	stoppedAt := time.Now()
	l.StopAPIServer()
	time.Sleep(2 * time.Second)
	if err := l.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	phase.Store("API back")
	downFor := time.Since(stoppedAt)
	wg.Wait()
	t.Logf("kube-apiserver stopped %s into the burst, after %d ADDs had succeeded; back and ready after %s",
		stoppedAt.Sub(begin).Round(time.Millisecond), okBeforeStop, downFor.Round(time.Millisecond))

	codes := map[string]int{}
	var failed []*lab.Sandbox
	for i, o := range outcomes {
		if o.err == nil {
			codes[o.phase+": success"]++
			continue
		}
		failed = append(failed, sbs[i])
		var e *types.Error
		if !errors.As(o.err, &e) {
			t.Errorf("ADD of %s failed without a CNI error (the runtime cannot tell whether to retry): %v", sbs[i].Name, o.err)
			codes[o.phase+": no CNI error"]++
			continue
		}
		codes[fmt.Sprintf("%s: code %d", o.phase, e.Code)]++
		if e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD of %s failed with CNI code %d, want %d (try again later): %v", sbs[i].Name, e.Code, types.ErrTryAgainLater, o.err)
		}
	}
	t.Logf("outcomes of %d ADDs: %v", n, codes)
	if len(failed) == 0 {
		t.Fatalf("no ADD ran while kube-apiserver was down: the test proved nothing; start the restart earlier")
	}

	assertNoDuplicates(t, l, sbs)

	// The runtime's retry: DEL the failed sandbox, then ADD again.
	retryBegin := time.Now()
	retried := 0
	for _, sb := range failed {
		if err := c.CNIDel(ctx, sb); err != nil {
			t.Errorf("DEL of %s after its failed ADD, with the API server back: %v", sb.Name, err)
		}
		if err := c.CNIAdd(ctx, sb); err != nil {
			t.Errorf("retried ADD of %s with the API server back: %v", sb.Name, err)
			continue
		}
		retried++
	}
	t.Logf("%d failed ADDs retried (DEL, then ADD) with the API server back: %d succeeded, in %s", len(failed), retried, time.Since(retryBegin).Round(time.Millisecond))
	after := assertNoDuplicates(t, l, sbs)
	for _, sb := range sbs {
		if got := after[sb.ContainerID]; len(got) != 1 || got[0] != sb.IP {
			t.Errorf("%s: ADD returned %s, IPAM holds %v for it; want exactly that one address", sb.Name, sb.IP, got)
		}
	}

	// DEL every sandbox: nothing may stay allocated or wired.
	for _, sb := range sbs {
		if err := c.CNIDel(ctx, sb); err != nil {
			t.Errorf("DEL of %s: %v", sb.Name, err)
		}
		if err := c.RemoveSandbox(sb); err != nil {
			t.Error(err)
		}
	}
	final, _ := podAllocations(t, l)
	var leaked []string
	for h, addrs := range final {
		if _, ok := before[h]; !ok {
			leaked = append(leaked, fmt.Sprintf("%s %v", h, addrs))
		}
	}
	sort.Strings(leaked)
	if len(leaked) > 0 {
		t.Errorf("allocations left after every DEL:\n%s", strings.Join(leaked, "\n"))
	}
	for _, node := range []string{node2, node3} {
		out, err := c.Output(ctx, node, "ip", "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, sb := range sbs {
			if sb.Node == node && sb.HostIface != "" && strings.Contains(out, " "+sb.HostIface+"@") {
				t.Errorf("host veth %s of %s is still on %s after DEL", sb.HostIface, sb.Name, node)
			}
		}
	}
	t.Logf("after DEL of all %d: %d allocations leaked", n, len(leaked))
}

// assertNoDuplicates checks that no address is allocated twice in the
// cluster and that no sandbox's container holds more than one, and returns
// the sandboxes' addresses by container ID.
func assertNoDuplicates(t *testing.T, l *lab.Lab, sbs []*lab.Sandbox) map[string][]string {
	t.Helper()
	allocs, blocks := podAllocations(t, l)
	holders := map[string][]string{}
	for h, addrs := range allocs {
		for _, a := range addrs {
			holders[a] = append(holders[a], h)
		}
	}
	// Tunnel addresses too: a pod must never get a node's tunl0 address.
	for _, b := range blocks {
		for _, a := range b.Spec.Allocations {
			if a.Type != "pod" {
				addr := addrAt(t, b.Spec.CIDR, a.Ordinal)
				holders[addr] = append(holders[addr], a.Handle)
			}
		}
	}
	for addr, hs := range holders {
		if len(hs) > 1 {
			t.Errorf("%s is allocated %d times: %v", addr, len(hs), hs)
		}
	}
	byID := map[string][]string{}
	for _, sb := range sbs {
		for h, addrs := range allocs {
			if strings.HasSuffix(h, sb.ContainerID) {
				byID[sb.ContainerID] = append(byID[sb.ContainerID], addrs...)
			}
		}
		if len(byID[sb.ContainerID]) > 1 {
			t.Errorf("%s holds %d addresses: %v", sb.Name, len(byID[sb.ContainerID]), byID[sb.ContainerID])
		}
	}
	seen := map[string]string{}
	for _, sb := range sbs {
		if sb.IP == "" {
			continue
		}
		if other, ok := seen[sb.IP]; ok {
			t.Errorf("ADD gave %s to both %s and %s", sb.IP, other, sb.Name)
		}
		seen[sb.IP] = sb.Name
	}
	return byID
}
