package agent

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/calyx-net/calyx/agent/testnet"
	"github.com/calyx-net/calyx/api/v1alpha1"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

// Bad configuration makes an agent not ready, says why in /readyz and in
// one log line, and keeps it running: no crash loop, and it recovers by
// itself when the cause goes away.
func TestBadConfig(t *testing.T) {
	cp := cptest.Start(t)
	c := newCluster(t, cp.Config) // no IPPool yet
	ul := testnet.NewUnderlay(t)

	// An API server address nobody listens on: a port this test held and
	// released, on the loopback where the test's control plane runs too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAPI := rest.CopyConfig(cp.Config)
	deadAPI.Host = "https://" + ln.Addr().String()
	ln.Close()

	tests := []struct {
		name     string
		opts     agentOpts
		wantBody []string // lines /readyz must contain
		wantLog  string
	}{
		{
			name:     "unknown interface",
			opts:     agentOpts{underlay: "interface=^eth9$"},
			wantBody: []string{"underlay: underlay interface=^eth9$: no interface matches and has an IPv4 address (interfaces: lo, ens160); set --underlay to interface=REGEX or can-reach=IP"},
			wantLog:  `level=ERROR msg="not ready" agent=bad-iface node=bad-iface check=underlay reason="underlay interface=^eth9$: no interface matches`,
		},
		{
			name:     "invalid interface regex",
			opts:     agentOpts{underlay: "interface=ens("},
			wantBody: []string{"underlay: underlay method \"interface=ens(\": not a regular expression"},
			wantLog:  `check=underlay reason="underlay method \"interface=ens(\": not a regular expression`,
		},
		{
			name:     "unreachable API server",
			opts:     agentOpts{rest: deadAPI},
			wantBody: []string{"apiserver: the API server does not answer:", "connection refused; check KUBECONFIG and that kube-apiserver is up"},
			wantLog:  `check=apiserver reason="the API server does not answer:`,
		},
		{
			name: "no IPPool",
			wantBody: []string{
				"ippool: no IPPool exists: create one (apiVersion calyx.dev/v1alpha1, kind IPPool, spec.cidr such as 192.168.0.0/16) so that nodes can claim blocks",
				"tunnel-address: waiting for an IPPool to take tunl0's address from",
			},
			wantLog: `check=ippool reason="no IPPool exists`,
		},
	}
	agents := map[string]*runningAgent{}
	for i, tt := range tests {
		name := []string{"bad-iface", "bad-regex", "bad-api", "no-pool"}[i]
		ip := []string{"10.10.100.11", "10.10.100.12", "10.10.100.13", "10.10.100.14"}[i]
		c.addNode(t, name, ip)
		node := ul.AddNode(t, "cx-bad", ip+"/24")
		agents[tt.name] = startAgent(t, cp.Config, node, name, tt.opts)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := agents[tt.name]
			var body string
			eventually(t, 10*time.Second, "the reason in /readyz", func() error {
				var code int
				code, body = a.readyz(t)
				if code != http.StatusServiceUnavailable {
					return errNotYet
				}
				for _, w := range tt.wantBody {
					if !strings.Contains(body, w) {
						return errNotYet
					}
				}
				return nil
			})
			t.Logf("/readyz:\n%s", body)
			if !strings.Contains(a.logs.String(), tt.wantLog) {
				t.Errorf("no log line with %q", tt.wantLog)
			}
			select {
			case <-a.ended:
				t.Error("the agent stopped")
			default:
			}
		})
	}

	t.Run("ready once a pool exists, without a restart", func(t *testing.T) {
		a := agents["no IPPool"]
		c.addPool(t, "default", "192.168.0.0/16", v1alpha1.IPIPModeAlways)
		start := time.Now()
		a.waitReady(t, 5*time.Second)
		t.Logf("ready %s after the pool was created", time.Since(start).Round(time.Millisecond))
		if n := strings.Count(a.logs.String(), `check=ippool reason="no IPPool exists`); n != 1 {
			t.Errorf("the missing pool was logged %d times, want once", n)
		}
	})
}
