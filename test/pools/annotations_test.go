package pools

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab"
)

// TestNamespacePool: a namespace annotated with calyx.dev/ipv4pools puts
// its pods in that pool, and a pod's own annotation wins over it.
func TestNamespacePool(t *testing.T) {
	l := sharedLab(t)
	apply(t, l, `apiVersion: calyx.dev/v1alpha1
kind: IPPool
metadata:
  name: pool-blue
spec:
  cidr: 10.80.0.0/16
  blockSize: 26
  allowedUses: [Workload]
  assignmentMode: Manual
---
apiVersion: calyx.dev/v1alpha1
kind: IPPool
metadata:
  name: pool-green
spec:
  cidr: 10.81.0.0/16
  blockSize: 26
  allowedUses: [Workload]
  assignmentMode: Manual
---
apiVersion: v1
kind: Namespace
metadata:
  name: blue
  annotations:
    calyx.dev/ipv4pools: '["pool-blue"]'
`)
	apply(t, l, podYAML("blue", "from-namespace", node2, "")+"---\n"+
		podYAML("blue", "own-choice", node3, `calyx.dev/ipv4pools: '["10.81.0.0/16"]'`)+"---\n"+
		podYAML("default", "plain", node3, ""))
	for key, cidr := range map[string]string{"blue/from-namespace": "10.80.0.0/16", "blue/own-choice": "10.81.0.0/16", "default/plain": "192.168.0.0/16"} {
		p := ready(t, l, key)
		if !prefixHas(cidr, p.IP) {
			t.Errorf("%s got %s, want an address of %s", key, p.IP, cidr)
		}
	}
	// The annotations came from the agents' informers, not from an API
	// read on each pod start (containerd 1.6 on node2, 2.x on node3 both
	// pass the pod's UID).
	for _, node := range []string{node2, node3} {
		m, err := lab.AgentMetrics(t.Context(), node)
		if err != nil {
			t.Fatalf("the agent's metrics on %s: %v", node, err)
		}
		if !strings.Contains(m, `calyx_ipam_annotation_reads_total{kind="pod",source="cache"}`) {
			t.Errorf("%s's agent read no pod's annotations from its cache:\n%s", node, grepLines(m, "calyx_ipam_annotation_reads_total"))
		}
	}
	blue := ready(t, l, "blue/from-namespace")
	if out, err := l.Client().Output(t.Context(), "default/plain", "ping", "-c", "3", "-W", "2", blue.IP); err != nil {
		t.Errorf("a default-pool pod pinging the namespace's pool: %v\n%s", err, out)
	}
}

// pinnedAddr is the TFTP server's address: in the default pool, in a
// block no node claims on its own in the lab.
const pinnedAddr = "192.168.250.77"

// TestPinnedAddress: a StatefulSet's TFTP server pinned with
// calyx.dev/ipAddrs gets its address, is deleted and recreated with the
// same address, and stays reachable there; a second pod asking for the
// address is refused with the error a user reads in kubectl describe pod,
// and gets nothing.
func TestPinnedAddress(t *testing.T) {
	l := sharedLab(t)
	apply(t, l, fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: tftp
  namespace: default
spec:
  serviceName: tftp
  replicas: 1
  selector:
    matchLabels: {app: tftp}
  template:
    metadata:
      labels: {app: tftp}
      annotations:
        calyx.dev/ipAddrs: '["%s"]'
    spec:
%s`, pinnedAddr, specYAML(node2, "      ")))
	apply(t, l, podYAML("default", "tftp-client", node3, ""))
	first := ready(t, l, "default/tftp-0")
	if first.IP != pinnedAddr {
		t.Fatalf("tftp-0 got %s, want the pinned %s", first.IP, pinnedAddr)
	}
	ready(t, l, "default/tftp-client")
	reach := func() {
		t.Helper()
		if out, err := l.Client().Output(t.Context(), "default/tftp-client", "ping", "-c", "3", "-W", "2", pinnedAddr); err != nil {
			t.Errorf("the client pinging the pinned %s: %v\n%s", pinnedAddr, err, out)
		}
	}
	reach()

	// The StatefulSet's controller recreates the pod once the old one is
	// gone, its address released by CNI DEL.
	uid := kubectlJSONPath(t, l, "default", "pod/tftp-0", "{.metadata.uid}")
	kubectl(t, l, "", "delete", "pod", "-n", "default", "tftp-0", "--wait")
	waitFor(t, 2*time.Minute, "a new tftp-0", func() (bool, string) {
		now := kubectlJSONPath(t, l, "default", "pod/tftp-0", "{.metadata.uid}")
		return now != "" && now != uid, now
	})
	again := ready(t, l, "default/tftp-0")
	if again.IP != pinnedAddr {
		t.Errorf("the recreated tftp-0 got %s, want the pinned %s again", again.IP, pinnedAddr)
	}
	reach()

	apply(t, l, podYAML("default", "impostor", node3, fmt.Sprintf(`calyx.dev/ipAddrs: '["%s"]'`, pinnedAddr)))
	refused(t, l, "default", "impostor", node3,
		fmt.Sprintf("annotation calyx.dev/ipAddrs of pod default/impostor: address in use: %s is held by pod default/tftp-0 on node %s", pinnedAddr, node2))
}

// TestBadAnnotations: each bad annotation is a CNI error that names it,
// in kubectl describe pod, and the pod gets no address, veth or route.
func TestBadAnnotations(t *testing.T) {
	l := sharedLab(t)
	cases := []struct{ name, annotation, want string }{
		{"bad-not-json", `calyx.dev/ipv4pools: 'pool-a'`, `invalid annotation calyx.dev/ipv4pools of pod default/bad-not-json: "pool-a" is not a JSON list`},
		{"bad-unknown-pool", `calyx.dev/ipv4pools: '["no-such-pool"]'`, `annotation calyx.dev/ipv4pools of pod default/bad-unknown-pool: unknown IP pool "no-such-pool"`},
		{"bad-ipv6", `calyx.dev/ipAddrs: '["fd00::5"]'`, "invalid annotation calyx.dev/ipAddrs of pod default/bad-ipv6: fd00::5 is not an IPv4 address"},
		{"bad-two-addresses", `calyx.dev/ipAddrs: '["192.168.250.80", "192.168.250.81"]'`, "invalid annotation calyx.dev/ipAddrs of pod default/bad-two-addresses:"},
	}
	var manifests []string
	for _, c := range cases {
		manifests = append(manifests, podYAML("default", c.name, node3, c.annotation))
	}
	apply(t, l, strings.Join(manifests, "---\n"))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { refused(t, l, "default", c.name, node3, c.want) })
	}
}

// kubectlJSONPath reads one field of an object with kubectl, "" when the
// object does not exist.
func kubectlJSONPath(t *testing.T, l *lab.Lab, namespace, object, path string) string {
	t.Helper()
	out, err := l.Client().Kubectl(t.Context(), nil, "get", "-n", namespace, object, "--ignore-not-found", "-o", "jsonpath="+path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
