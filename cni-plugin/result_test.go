package cniplugin

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
)

func TestBuildResult(t *testing.T) {
	w := &Wiring{HostName: "calic170cc94aee", ContName: "eth0", MTU: 1430, IP: net.IPv4(192, 168, 29, 67).To4()}
	links := Links{HostMAC: "ee:ee:ee:ee:ee:ee", ContMAC: "02:00:00:00:00:01"}
	ipam := &current.Result{DNS: types.DNS{Nameservers: []string{"10.96.0.10"}}}

	tests := []struct {
		name string
		prev string // prevResult JSON, "" when calyx is first
		want string
	}{
		{
			name: "first in the chain",
			want: `{"cniVersion":"1.1.0","interfaces":[
				{"name":"calic170cc94aee","mac":"ee:ee:ee:ee:ee:ee","mtu":1430},
				{"name":"eth0","mac":"02:00:00:00:00:01","mtu":1430,"sandbox":"/var/run/netns/pod"}],
				"ips":[{"interface":1,"address":"192.168.29.67/32"}],
				"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
				"dns":{"nameservers":["10.96.0.10"]}}`,
		},
		{
			name: "after another plugin: its result is kept, indexes shift",
			prev: `{"cniVersion":"1.1.0","interfaces":[{"name":"lo","sandbox":"/var/run/netns/pod"}],
				"ips":[{"interface":0,"address":"127.0.0.1/8"}],"dns":{"search":["svc"]}}`,
			want: `{"cniVersion":"1.1.0","interfaces":[
				{"name":"lo","sandbox":"/var/run/netns/pod"},
				{"name":"calic170cc94aee","mac":"ee:ee:ee:ee:ee:ee","mtu":1430},
				{"name":"eth0","mac":"02:00:00:00:00:01","mtu":1430,"sandbox":"/var/run/netns/pod"}],
				"ips":[{"interface":0,"address":"127.0.0.1/8"},{"interface":2,"address":"192.168.29.67/32"}],
				"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
				"dns":{"search":["svc"]}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdin := `{"cniVersion":"1.1.0","name":"n","type":"calyx","ipam":{"type":"x"}`
			if tt.prev != "" {
				stdin += `,"prevResult":` + tt.prev
			}
			conf, err := LoadNetConf([]byte(stdin + "}"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := buildResult(conf, w, links, "/var/run/netns/pod", ipam)
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			b, _ := json.Marshal(res)
			json.Unmarshal(b, &got)
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}
