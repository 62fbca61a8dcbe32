package cniplugin

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
)

func TestHostVethName(t *testing.T) {
	// Expected values computed independently:
	//   printf default.tftp-server | sha1sum  → c170cc94aee…
	tests := []struct {
		name        string
		prefix      string
		pod         PodArgs
		containerID string
		want        string
	}{
		{"kubernetes pod", "cali", PodArgs{"default", "tftp-server"}, "0123456789abcdef", "calic170cc94aee"},
		{"kubernetes pod, other name", "cali", PodArgs{"default", "tftp-client"}, "0123456789abcdef", "cali46a46e56cfb"},
		{"configurable prefix", "lab", PodArgs{"default", "tftp-server"}, "x", "labc170cc94aee"},
		{"outside kubernetes", "cali", PodArgs{}, "0123456789abcdef", "cali0123456789a"},
		{"only a namespace", "cali", PodArgs{Namespace: "default"}, "0123456789abcdef", "cali0123456789a"},
		{"short container ID", "cali", PodArgs{}, "abc", "caliabc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := HostVethName(tt.prefix, tt.pod, tt.containerID)
			if got != tt.want {
				t.Errorf("HostVethName(%q, %+v, %q) = %q, want %q", tt.prefix, tt.pod, tt.containerID, got, tt.want)
			}
			if len(got) > ifNameMax {
				t.Errorf("%q is longer than the kernel's %d bytes", got, ifNameMax)
			}
		})
	}
}

func TestParsePodArgs(t *testing.T) {
	tests := []struct {
		args string
		want PodArgs
	}{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tftp-server;K8S_POD_INFRA_CONTAINER_ID=abc", PodArgs{"default", "tftp-server"}},
		{"K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns", PodArgs{"ns", "p"}},
		{"", PodArgs{}},
		{"garbage;K8S_POD_NAME=p", PodArgs{Name: "p"}},
	}
	for _, tt := range tests {
		if got := ParsePodArgs(tt.args); got != tt.want {
			t.Errorf("ParsePodArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
		}
	}
}

func TestLoadNetConf(t *testing.T) {
	tests := []struct {
		name     string
		json     string
		wantCode uint // 0: valid
		want     NetConf
	}{
		{
			name: "defaults",
			json: `{"cniVersion":"1.1.0","name":"n","type":"calyx","ipam":{"type":"calyx-ipam"}}`,
			want: NetConf{MTU: 0, StateDir: "/var/lib/calyx", VethPrefix: "cali"},
		},
		{
			name: "everything set",
			json: `{"cniVersion":"1.1.0","name":"n","type":"calyx","mtu":1400,"state_dir":"/run/n1","veth_prefix":"lab","ipam":{"type":"host-local"}}`,
			want: NetConf{MTU: 1400, StateDir: "/run/n1", VethPrefix: "lab"},
		},
		{name: "malformed JSON", json: `{"name":"n",`, wantCode: types.ErrDecodingFailure},
		{name: "mtu of the wrong type", json: `{"name":"n","mtu":"1400","ipam":{"type":"x"}}`, wantCode: types.ErrDecodingFailure},
		{name: "negative mtu", json: `{"name":"n","mtu":-1,"ipam":{"type":"x"}}`, wantCode: types.ErrInvalidNetworkConfig},
		{name: "mtu below IPv4's minimum", json: `{"name":"n","mtu":67,"ipam":{"type":"x"}}`, wantCode: types.ErrInvalidNetworkConfig},
		{name: "mtu above 65535", json: `{"name":"n","mtu":65536,"ipam":{"type":"x"}}`, wantCode: types.ErrInvalidNetworkConfig},
		{name: "prefix too long", json: `{"name":"n","veth_prefix":"calyx","ipam":{"type":"x"}}`, wantCode: types.ErrInvalidNetworkConfig},
		{name: "prefix with a slash", json: `{"name":"n","veth_prefix":"a/b","ipam":{"type":"x"}}`, wantCode: types.ErrInvalidNetworkConfig},
		{name: "no ipam", json: `{"name":"n"}`, wantCode: types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := LoadNetConf([]byte(tt.json))
			if tt.wantCode != 0 {
				if code := errCode(err); code != tt.wantCode {
					t.Fatalf("error %v has code %d, want %d", err, code, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := NetConf{MTU: conf.MTU, StateDir: conf.StateDir, VethPrefix: conf.VethPrefix}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("conf (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolveMTU(t *testing.T) {
	tests := []struct {
		name     string
		confMTU  int
		file     *string // nil: no file
		want     int
		wantCode uint
	}{
		{name: "netconf wins", confMTU: 1400, file: ptr("1430\n"), want: 1400},
		{name: "agent's file", file: ptr("1430\n"), want: 1430},
		{name: "no file: default", want: 1480},
		{name: "garbage in the file", file: ptr("lots"), wantCode: types.ErrInvalidNetworkConfig},
		{name: "out of range in the file", file: ptr("20"), wantCode: types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.file != nil {
				if err := os.WriteFile(filepath.Join(dir, StateMTU), []byte(*tt.file), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			conf := &NetConf{MTU: tt.confMTU, StateDir: dir}
			got, err := conf.ResolveMTU()
			if tt.wantCode != 0 {
				if code := errCode(err); code != tt.wantCode {
					t.Fatalf("error %v has code %d, want %d", err, code, tt.wantCode)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ResolveMTU() = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// errCode is the CNI error code of err, 0 when it carries none.
func errCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}
