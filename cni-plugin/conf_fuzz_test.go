package cniplugin

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/calyx-net/calyx/deploy"
)

// confFields are the netconf fields LoadNetConf judges; a refusal for a
// value that decodes (code 7) must name the one it refuses.
var confFields = []string{"mtu", "veth_prefix", `"ipam"`}

// LoadNetConf on any bytes: it never panics; it refuses with the spec's
// code 6 (does not decode) or 7 (naming the field); what it accepts is
// usable (an MTU the kernel takes, a veth prefix that leaves room for the
// hash in 15 bytes of valid interface name, an IPAM type) and encodes
// back into a netconf that parses to the same values.
func FuzzLoadNetConf(f *testing.F) {
	f.Add(deployedCalyxEntry(f))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"calyx","ipam":{"type":"calyx-ipam"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"calyx","mtu":-1,"ipam":{"type":"x"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"calyx","veth_prefix":"c\u0000","ipam":{"type":"x"}}`))
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"calyx","ipam":{"type":"x"},"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.1.2.3/32"}]}}`))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"n","type":"calyx","ipam":{"type":"x"},"prevResult":{"cniVersion":"0.3.1","ips":[{"version":"4","address":"1.2.3.4/24","gateway":"x"}]}}`))
	f.Add([]byte(`{"mtu":1e400}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := LoadNetConf(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a CNI error", err)
			}
			switch e.Code {
			case types.ErrDecodingFailure:
			case types.ErrInvalidNetworkConfig:
				if !containsAny(e.Msg, confFields) {
					t.Fatalf("refusal %q names none of the fields %v", e.Msg, confFields)
				}
			default:
				t.Fatalf("code %d (%v), want 6 or 7", e.Code, err)
			}
			return
		}
		checkUsable(t, conf)

		again, err := LoadNetConf(marshalNetConf(t, conf))
		if err != nil {
			t.Fatalf("accepted %q, but not its re-encoding: %v", data, err)
		}
		if diff := cmp.Diff(conf, again, cmpopts.IgnoreFields(types.PluginConf{}, "PrevResult")); diff != "" {
			t.Fatalf("re-encoding changes the config (-first +again):\n%s", diff)
		}
	})
}

func checkUsable(t *testing.T, c *NetConf) {
	t.Helper()
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > maxMTU) {
		t.Fatalf("accepted mtu %d", c.MTU)
	}
	if c.IPAM.Type == "" || c.StateDir == "" || c.VethPrefix == "" {
		t.Fatalf("accepted a config without ipam type, state_dir or veth_prefix: %+v", c)
	}
	// The longest name calyx makes from the prefix must be one the
	// kernel and the CNI library take.
	name := HostVethName(c.VethPrefix, PodArgs{Namespace: "ns", Name: "pod"}, "")
	if len(name) > ifNameMax {
		t.Fatalf("veth_prefix %q makes the %d-byte name %q", c.VethPrefix, len(name), name)
	}
	if e := utils.ValidateInterfaceName(name); e != nil {
		t.Fatalf("veth_prefix %q makes the invalid interface name %q: %v", c.VethPrefix, name, e)
	}
	if strings.ContainsFunc(name, unicode.IsControl) {
		t.Fatalf("veth_prefix %q makes a name with a control character: %q", c.VethPrefix, name)
	}
}

// marshalNetConf encodes conf as a netconf: types.PluginConf's own
// MarshalJSON, promoted to NetConf, would drop calyx's fields.
func marshalNetConf(t *testing.T, conf *NetConf) []byte {
	t.Helper()
	b, err := json.Marshal(&conf.PluginConf)
	if err != nil {
		t.Fatalf("encoding the accepted config: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	m["mtu"], m["state_dir"], m["veth_prefix"] = conf.MTU, conf.StateDir, conf.VethPrefix
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ParsePodArgs on any CNI_ARGS: it never panics, returns values a
// re-encoding reads back unchanged, and agrees with what a runtime's
// canonical "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name" says whatever else
// surrounds it.
func FuzzParsePodArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tftp-server;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=123", "", "")
	f.Add("K8S_POD_NAME=../../x;IgnoreUnknown=1", "default", "x")
	f.Add(";;;=;;;", "a", "b")
	f.Add(" K8S_POD_NAME =x", "", "")
	f.Add("K8S_POD_NAMESPACE=a=b", "ns", "name")
	f.Fuzz(func(t *testing.T, args, ns, name string) {
		p := ParsePodArgs(args)
		for _, v := range []string{p.Namespace, p.Name} {
			if strings.Contains(v, ";") || v != strings.TrimSpace(v) {
				t.Fatalf("ParsePodArgs(%q) = %+v: a value holds ';' or surrounding space", args, p)
			}
		}
		if again := ParsePodArgs(encodePodArgs(p)); again != p {
			t.Fatalf("ParsePodArgs(%q) = %+v, but its re-encoding %q reads %+v", args, p, encodePodArgs(p), again)
		}
		// A runtime's own keys, last, win over anything before them.
		if strings.ContainsAny(ns+name, ";") || ns != strings.TrimSpace(ns) || name != strings.TrimSpace(name) {
			return
		}
		canonical := args + ";K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name
		if got, want := ParsePodArgs(canonical), (PodArgs{ns, name}); got != want {
			t.Fatalf("ParsePodArgs(%q) = %+v, want %+v", canonical, got, want)
		}
	})
}

func encodePodArgs(p PodArgs) string {
	return "K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name
}

// deployedCalyxEntry is the calyx entry of deploy/10-calyx.conflist as
// libcni hands it to the plugin.
func deployedCalyxEntry(f *testing.F) []byte {
	b, err := deploy.CalyxEntry()
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
