package plugin

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/calyx-net/calyx/ipam"
)

// fakeAnnotator answers from maps and counts the namespace reads.
type fakeAnnotator struct {
	pods, namespaces map[string]map[string]string
	nsReads          int
}

func (f *fakeAnnotator) PodAnnotations(_ context.Context, ns, name, _ string) (map[string]string, error) {
	return f.pods[ns+"/"+name], nil
}

func (f *fakeAnnotator) NamespaceAnnotations(_ context.Context, name string) (map[string]string, error) {
	f.nsReads++
	return f.namespaces[name], nil
}

func TestRequestFor(t *testing.T) {
	const pools, addrs = "calyx.dev/ipv4pools", "calyx.dev/ipAddrs"
	a := &fakeAnnotator{
		pods: map[string]map[string]string{
			"blue/plain":     nil,
			"blue/own-pools": {pools: `["green-pool", "10.60.0.0/16"]`},
			"blue/pinned":    {addrs: `["192.168.29.67"]`, pools: `["green-pool"]`},
			"default/plain":  {"unrelated": "x"},
			"ns-addrs/plain": nil,
		},
		namespaces: map[string]map[string]string{
			"blue":     {pools: `["blue-pool"]`},
			"ns-addrs": {addrs: `["192.168.29.67"]`}, // a Namespace cannot pin one address
		},
	}
	for _, tc := range []struct {
		pod     podArgs
		want    podRequest
		nsReads int
	}{
		{podArgs{Namespace: "blue", Name: "plain"}, podRequest{ipam.Request{Pools: []string{"blue-pool"}}, "annotation calyx.dev/ipv4pools of namespace blue"}, 1},
		{podArgs{Namespace: "blue", Name: "own-pools"}, podRequest{ipam.Request{Pools: []string{"green-pool", "10.60.0.0/16"}}, "annotation calyx.dev/ipv4pools of pod blue/own-pools"}, 0},
		{podArgs{Namespace: "blue", Name: "pinned"}, podRequest{ipam.Request{Addr: netip.MustParseAddr("192.168.29.67")}, "annotation calyx.dev/ipAddrs of pod blue/pinned"}, 0},
		{podArgs{Namespace: "default", Name: "plain"}, podRequest{}, 1},
		{podArgs{Namespace: "default", Name: "not-in-the-api"}, podRequest{}, 1},
		{podArgs{Namespace: "ns-addrs", Name: "plain"}, podRequest{}, 1},
		{podArgs{}, podRequest{}, 0}, // not a Kubernetes pod
	} {
		t.Run(tc.pod.Namespace+"/"+tc.pod.Name, func(t *testing.T) {
			a.nsReads = 0
			got, err := requestFor(context.Background(), a, tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(podRequest{}), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if a.nsReads != tc.nsReads {
				t.Errorf("read the namespace %d times, want %d", a.nsReads, tc.nsReads)
			}
		})
	}
}

// Every bad annotation is a CNI error 7 that names the annotation and the
// object it is on.
func TestBadAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name, key, value, want string
	}{
		{"pools not JSON", "calyx.dev/ipv4pools", `blue-pool`, `invalid annotation calyx.dev/ipv4pools of pod default/p: "blue-pool" is not a JSON list of pool names or CIDRs, such as ["blue-pool"]: invalid character 'b' looking for beginning of value`},
		{"pools not a list", "calyx.dev/ipv4pools", `"blue-pool"`, `invalid annotation calyx.dev/ipv4pools of pod default/p: "\"blue-pool\"" is not a JSON list of pool names or CIDRs, such as ["blue-pool"]: json: cannot unmarshal string into Go value of type []string`},
		{"no pool", "calyx.dev/ipv4pools", `[]`, `invalid annotation calyx.dev/ipv4pools of pod default/p: "[]" names no pool: name one, or remove the annotation`},
		{"empty pool name", "calyx.dev/ipv4pools", `[""]`, `invalid annotation calyx.dev/ipv4pools of pod default/p: "[\"\"]" has an invalid entry "": name an IPPool or give its CIDR`},
		{"address not JSON", "calyx.dev/ipAddrs", `192.168.29.67`, `invalid annotation calyx.dev/ipAddrs of pod default/p: "192.168.29.67" is not a JSON list of addresses, such as ["192.168.29.67"]: invalid character '.' after top-level value`},
		{"IPv6", "calyx.dev/ipAddrs", `["fd00::5"]`, `invalid annotation calyx.dev/ipAddrs of pod default/p: fd00::5 is not an IPv4 address: calyx pods are IPv4`},
		{"two addresses", "calyx.dev/ipAddrs", `["192.168.29.67", "192.168.29.68"]`, `invalid annotation calyx.dev/ipAddrs of pod default/p: "[\"192.168.29.67\", \"192.168.29.68\"]" has 2 addresses: calyx gives a pod exactly one IPv4 address`},
		{"no address", "calyx.dev/ipAddrs", `[]`, `invalid annotation calyx.dev/ipAddrs of pod default/p: "[]" has 0 addresses: calyx gives a pod exactly one IPv4 address`},
		{"not an address", "calyx.dev/ipAddrs", `["tftp-server"]`, `invalid annotation calyx.dev/ipAddrs of pod default/p: "tftp-server" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &fakeAnnotator{pods: map[string]map[string]string{"default/p": {tc.key: tc.value}}}
			_, err := requestFor(context.Background(), a, podArgs{Namespace: "default", Name: "p"})
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("err = %v, want a CNI error 7", err)
			}
			if e.Msg != tc.want {
				t.Errorf("message\n got %s\nwant %s", e.Msg, tc.want)
			}
		})
	}
}

// fakeCache is a Cache from maps; a pod's key holds its UID.
type fakeCache struct {
	pods       map[string]struct{ uid, pools string }
	namespaces map[string]string
}

func (f fakeCache) Pod(ns, name string) (string, map[string]string, bool) {
	p, ok := f.pods[ns+"/"+name]
	return p.uid, map[string]string{"calyx.dev/ipv4pools": p.pools}, ok
}

func (f fakeCache) Namespace(name string) (map[string]string, bool) {
	p, ok := f.namespaces[name]
	return map[string]string{"calyx.dev/ipv4pools": p}, ok
}

func TestCachedAnnotator(t *testing.T) {
	const pools = "calyx.dev/ipv4pools"
	api := &fakeAnnotator{
		pods: map[string]map[string]string{
			"blue/web-0":  {pools: `["api-pool"]`},
			"blue/cached": {pools: `["api-pool"]`},
		},
		namespaces: map[string]map[string]string{"new": {pools: `["api-ns-pool"]`}},
	}
	c := CachedAnnotator{
		Cache: fakeCache{
			pods: map[string]struct{ uid, pools string }{
				"blue/cached": {"uid-1", `["cache-pool"]`},
				// The cache still has the predecessor of a recreated pod.
				"blue/web-0": {"uid-old", `["cache-pool"]`},
			},
			namespaces: map[string]string{"blue": `["cache-ns-pool"]`},
		},
		API: api,
	}
	for _, tc := range []struct {
		name string
		pod  podArgs
		want podRequest
	}{
		{"cached pod, the sandbox's UID", podArgs{"blue", "cached", "uid-1"},
			podRequest{ipam.Request{Pools: []string{"cache-pool"}}, "annotation calyx.dev/ipv4pools of pod blue/cached"}},
		{"runtime passed no UID: the API answers", podArgs{"blue", "cached", ""},
			podRequest{ipam.Request{Pools: []string{"api-pool"}}, "annotation calyx.dev/ipv4pools of pod blue/cached"}},
		{"recreated pod the cache has not seen: the API answers", podArgs{"blue", "web-0", "uid-new"},
			podRequest{ipam.Request{Pools: []string{"api-pool"}}, "annotation calyx.dev/ipv4pools of pod blue/web-0"}},
		{"pod not cached, namespace cached", podArgs{"blue", "other", "uid-2"},
			podRequest{ipam.Request{Pools: []string{"cache-ns-pool"}}, "annotation calyx.dev/ipv4pools of namespace blue"}},
		{"namespace not cached: the API answers", podArgs{"new", "p", "uid-3"},
			podRequest{ipam.Request{Pools: []string{"api-ns-pool"}}, "annotation calyx.dev/ipv4pools of namespace new"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := requestFor(context.Background(), c, tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(podRequest{}), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("requestFor(%+v) (-want +got):\n%s", tc.pod, diff)
			}
		})
	}
}
