package plugin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/util/validation"

	cniplugin "github.com/calyx-net/calyx/cni-plugin"
	"github.com/calyx-net/calyx/deploy"
)

// parseConf on any bytes: it never panics; it refuses with code 6 (does
// not decode) or 7 with details that name the field; what it accepts has
// a name, a kubeconfig, timeouts within bounds and pool names the API
// can hold, and encodes back into a netconf that parses to the same.
func FuzzParseConf(f *testing.F) {
	f.Add(deployedEntry(f))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network","ipam":{"type":"calyx-ipam","kubeconfig":"/k","timeout":"11m"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"k8s-pod-network","ipam":{"kubeconfig":"/k","max_blocks_per_node":65537,"pools":[""]}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"kubeconfig":"/k","lock_timeout":"-1s","pools":["192.168.0.0/16","default-ipv4-ippool"]}}`))
	f.Add([]byte(`{"name":"n","ipam":{"kubeconfig":"/k","timeout":"9223372036854775807ns"}}`))
	f.Add([]byte(`{"name":"n","ipam":{"kubeconfig":"/k"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`))
	f.Add([]byte(`{"name":"n","ipam":[[[[1]]]]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseConf(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a CNI error", err)
			}
			switch e.Code {
			case types.ErrDecodingFailure:
			case types.ErrInvalidNetworkConfig:
				if !strings.Contains(e.Details, `"name"`) && !strings.Contains(e.Details, "ipam.") {
					t.Fatalf("refusal %q names no field", e.Error())
				}
			default:
				t.Fatalf("code %d (%v), want 6 or 7", e.Code, err)
			}
			return
		}
		c := conf.IPAM
		switch {
		case conf.Name == "" || c.Kubeconfig == "":
			t.Fatalf("accepted a config without name or kubeconfig: %+v", conf)
		case c.timeout <= 0 || c.timeout > 10*time.Minute || c.lockTimeout <= 0 || c.lockTimeout > 10*time.Minute:
			t.Fatalf("accepted timeouts %v, %v", c.timeout, c.lockTimeout)
		case c.MaxBlocksPerNode < 0 || c.MaxBlocksPerNode > 1<<16:
			t.Fatalf("accepted max_blocks_per_node %d", c.MaxBlocksPerNode)
		case c.NodenameFile == "" || c.LockFile == "":
			t.Fatalf("accepted a config without nodename_file or lock_file: %+v", c)
		}
		for _, p := range c.Pools {
			if p == "" || len(p) > validation.DNS1123SubdomainMaxLength {
				t.Fatalf("accepted pool %q", p)
			}
		}

		again, err := parseConf(marshalConf(t, conf))
		if err != nil {
			t.Fatalf("accepted %q, but not its re-encoding: %v", data, err)
		}
		if diff := cmp.Diff(conf, again, cmp.AllowUnexported(Conf{})); diff != "" {
			t.Fatalf("re-encoding changes the config (-first +again):\n%s", diff)
		}
	})
}

// marshalConf encodes conf as a netconf: types.NetConf's MarshalJSON,
// promoted to NetConf, would drop the ipam section.
func marshalConf(t *testing.T, conf *NetConf) []byte {
	t.Helper()
	b, err := json.Marshal(&conf.NetConf)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["ipam"] = conf.IPAM
	if conf.ValidAttachments != nil {
		m["cni.dev/valid-attachments"] = conf.ValidAttachments
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// parseArgs on any CNI_ARGS: it never panics; it refuses with code 4 and
// a message naming CNI_ARGS or the key; what it accepts are names
// Kubernetes can hold, read back unchanged from their re-encoding, and
// the same pod the calyx plugin names its host veth after (else the
// interface and the allocation would describe different pods).
func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tftp-server;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=123")
	f.Add("K8S_POD_NAME=../../x;IgnoreUnknown=1")
	f.Add("K8S_POD_NAMESPACE=default;K8S_POD_NAME=x; K8S_POD_NAME=y")
	f.Add(";;;=;;;")
	f.Add("K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + strings.Repeat("a", 254))
	f.Add("K8S_POD_NAMESPACE=" + strings.Repeat("n", 64))
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseArgs(s)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("parseArgs(%q): %v, want a CNI error with code 4", s, err)
			}
			if !strings.Contains(e.Msg, "CNI_ARGS") {
				t.Fatalf("refusal %q does not name CNI_ARGS", e.Msg)
			}
			return
		}
		if a.Namespace != "" && len(validation.IsDNS1123Label(a.Namespace)) > 0 {
			t.Fatalf("accepted namespace %q", a.Namespace)
		}
		if a.Name != "" && len(validation.IsDNS1123Subdomain(a.Name)) > 0 {
			t.Fatalf("accepted pod name %q", a.Name)
		}
		if len(a.UID) > 128 {
			t.Fatalf("accepted a %d-character pod UID", len(a.UID))
		}
		enc := "K8S_POD_NAMESPACE=" + a.Namespace + ";K8S_POD_NAME=" + a.Name + ";K8S_POD_UID=" + a.UID
		if a.Namespace == "" || a.Name == "" {
			enc = ""
		}
		if again, err := parseArgs(enc); enc != "" && (err != nil || again != a) {
			t.Fatalf("parseArgs(%q) = %+v, but its re-encoding %q reads %+v, %v", s, a, enc, again, err)
		}
		if p := cniplugin.ParsePodArgs(s); p.Namespace != a.Namespace || p.Name != a.Name {
			t.Fatalf("CNI_ARGS %q: calyx-ipam records pod %s/%s, the calyx plugin names its veth after %s/%s",
				s, a.Namespace, a.Name, p.Namespace, p.Name)
		}
	})
}

// deployedEntry is the calyx entry of deploy/10-calyx.conflist as libcni
// hands it to the plugins.
func deployedEntry(f *testing.F) []byte {
	b, err := deploy.CalyxEntry()
	if err != nil {
		f.Fatal(err)
	}
	return b
}
