package plugin_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

// podObject is a Pod as the API server holds it while its sandbox is made.
func (e *env) podObject(t *testing.T, namespace, name string, ann map[string]string) {
	t.Helper()
	kube := kubernetes.NewForConfigOrDie(e.cp.Config)
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); err != nil {
		if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// No controller-manager makes the namespace's default account here.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "default"}}
	if _, err := kube.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Annotations: ann},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "toolbox"}}},
	}
	if _, err := kube.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// addPod runs ADD for the pod namespace/name, its container ID id.
func (e *env) addPod(conf []byte, namespace, name, id string) (netip.Addr, error) {
	args := e.args("ADD", id)
	args.PluginArgsStr = "K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + name
	r, err := invoke.ExecPluginWithResult(context.Background(), pluginPath, conf, args, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil || len(res.IPs) != 1 {
		return netip.Addr{}, fmt.Errorf("result %v: %v", r, err)
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	return ip, nil
}

func inCIDR(a netip.Addr, cidr string) bool { return netip.MustParsePrefix(cidr).Contains(a) }

// TestAnnotations: calyx-ipam, the binary, reads the pod's and its
// namespace's annotations through the API server and allocates what they
// ask; what it refuses is a CNI error naming the annotation, and leaves
// nothing allocated.
func TestAnnotations(t *testing.T) {
	disabled := pool("old", "10.70.0.0/16", 26)
	disabled.Spec.Disabled = true
	zoned := pool("zoned", "10.80.0.0/16", 26)
	zoned.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"zone": "z"}}
	e := newEnv(t, pool("default", "192.168.0.0/16", 26), pool("blue", "10.50.0.0/16", 26), pool("green", "10.60.0.0/16", 26), disabled, zoned)
	labelsFile := filepath.Join(e.dir, "nodelabels")
	conf := e.conf("1.0.0", map[string]any{"node_labels_file": labelsFile})
	kube := kubernetes.NewForConfigOrDie(e.cp.Config)
	if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "blue", Annotations: map[string]string{v1alpha1.AnnotationIPv4Pools: `["blue"]`}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pools := func(v string) map[string]string { return map[string]string{v1alpha1.AnnotationIPv4Pools: v} }
	addrs := func(v string) map[string]string { return map[string]string{v1alpha1.AnnotationIPAddrs: v} }

	t.Run("allocated", func(t *testing.T) {
		if err := os.WriteFile(labelsFile, []byte(`{"zone": "z"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			namespace, name string
			ann             map[string]string
			want            string // CIDR or address
		}{
			{"blue", "from-namespace", nil, "10.50.0.0/16"},
			{"blue", "own-pool", pools(`["green"]`), "10.60.0.0/16"},
			{"default", "by-cidr", pools(`["10.60.0.0/16", "blue"]`), "10.60.0.0/16"},
			{"default", "zoned", pools(`["zoned"]`), "10.80.0.0/16"},
			{"default", "pinned", addrs(`["192.168.29.67"]`), "192.168.29.67/32"},
		} {
			e.podObject(t, tc.namespace, tc.name, tc.ann)
			got, err := e.addPod(conf, tc.namespace, tc.name, "c-"+tc.name)
			if err != nil {
				t.Errorf("ADD %s/%s: %v", tc.namespace, tc.name, err)
				continue
			}
			if !inCIDR(got, tc.want) {
				t.Errorf("%s/%s got %s, want %s", tc.namespace, tc.name, got, tc.want)
			}
		}
	})

	before := e.used()
	for _, tc := range []struct {
		name   string
		ann    map[string]string
		labels string // the node's labels file; "" for none
		code   uint
		msg    string
	}{
		{"not-json", pools(`blue`), "{}", types.ErrInvalidNetworkConfig, "invalid annotation calyx.dev/ipv4pools of pod default/not-json: \"blue\" is not a JSON list"},
		{"unknown-pool", pools(`["nope"]`), "{}", types.ErrInvalidNetworkConfig, `annotation calyx.dev/ipv4pools of pod default/unknown-pool: unknown IP pool "nope"`},
		{"disabled-pool", pools(`["old"]`), "{}", types.ErrInvalidNetworkConfig, "annotation calyx.dev/ipv4pools of pod default/disabled-pool: IP pool is disabled: old (10.70.0.0/16)"},
		{"ipv6", addrs(`["fd00::5"]`), "{}", types.ErrInvalidNetworkConfig, "invalid annotation calyx.dev/ipAddrs of pod default/ipv6: fd00::5 is not an IPv4 address"},
		{"two-addresses", addrs(`["192.168.29.68", "192.168.29.69"]`), "{}", types.ErrInvalidNetworkConfig, "invalid annotation calyx.dev/ipAddrs of pod default/two-addresses: \"[\\\"192.168.29.68\\\", \\\"192.168.29.69\\\"]\" has 2 addresses"},
		{"outside", addrs(`["172.16.0.1"]`), "{}", types.ErrInvalidNetworkConfig, "annotation calyx.dev/ipAddrs of pod default/outside: address outside the IP pools: 172.16.0.1 is in none of the pools"},
		{"taken", addrs(`["192.168.29.67"]`), "{}", 102, "annotation calyx.dev/ipAddrs of pod default/taken: address in use: 192.168.29.67 is held by pod default/pinned on node learn-k8s-2"},
		{"not-selected", pools(`["zoned"]`), `{"zone": "y"}`, types.ErrInvalidNetworkConfig, "its nodeSelector zone=z does not select node learn-k8s-2"},
		{"labels-unknown", pools(`["zoned"]`), "", types.ErrTryAgainLater, "the node's labels are not known yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(labelsFile)
			if tc.labels != "" {
				if err := os.WriteFile(labelsFile, []byte(tc.labels), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			e.podObject(t, "default", tc.name, tc.ann)
			_, err := e.addPod(conf, "default", tc.name, "c-"+tc.name)
			if code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ADD = %v\nwant code %d saying %q", err, tc.code, tc.msg)
			}
			t.Logf("code %d: %v", code(err), err)
		})
	}
	if after := e.used(); after != before {
		t.Errorf("refused ADDs allocated: %d addresses before, %d after", before, after)
	}
}
