package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	calyxclient "github.com/calyx-net/calyx/api/client/clientset/versioned"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/deploy/poolinit"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// calyx.yaml on a real kube-apiserver: every object passes the server's
// validation (dry run), then applies, and the agent's and the CNI
// plugins' accounts can do what the agent and the IPAM plugin do, and
// nothing that would make a stolen token worth more (secrets, pods).
func TestManifestOnAPIServer(t *testing.T) {
	cp := cptest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kubectlBin, err := kubebin.Ensure(ctx, "kubectl", nil)
	if err != nil {
		t.Fatalf("building kubectl: %v", err)
	}
	kubectl := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
		cmd.Stdin = bytes.NewReader(deploy.Manifest)
		// Warnings go to stderr; answers (can-i's yes/no) to stdout.
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil && stderr.Len() > 0 {
			return string(out) + stderr.String(), err
		}
		return string(out), err
	}

	// A fresh cluster, as a user's: without the CRDs cptest installed.
	if out, err := kubectl("delete", "crd", "--all", "--wait"); err != nil {
		t.Fatalf("deleting the CRDs: %v\n%s", err, out)
	}
	if out, err := kubectl("apply", "--server-side", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	} else {
		t.Logf("dry run:\n%s", out)
	}
	// One `kubectl apply -f`, as the README says, succeeds at once.
	if out, err := kubectl("apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply -f deploy/calyx.yaml: %v\n%s", err, out)
	}

	// What the calyx-ippool-init Job does, with its account's token.
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	tok, err := kube.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "calyx-ippool-init",
		&authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token for calyx-ippool-init: %v", err)
	}
	jobCfg := rest.AnonymousClientConfig(cp.Config)
	jobCfg.BearerToken = tok.Status.Token
	pool, err := poolinit.Parse([]byte(configMap(t, "calyx-default-ippool").Data["ippool.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	for i := range 2 { // the second run finds the pool and leaves it
		if err := poolinit.Create(ctx, log, calyxclient.NewForConfigOrDie(jobCfg), pool.DeepCopy()); err != nil {
			t.Fatalf("run %d of the Job's ippool-init: %v", i, err)
		}
	}
	out, err := kubectl("get", "ippool", "default-ipv4-ippool", "-o", "jsonpath={.spec.cidr} {.spec.blockSize} {.spec.ipipMode} {.spec.natOutgoing}")
	if err != nil {
		t.Fatalf("reading the pool: %v\n%s", err, out)
	}
	if want := "192.168.0.0/16 26 Always true"; out != want {
		t.Errorf("default pool = %q, want %q", out, want)
	}

	const sa = "system:serviceaccount:kube-system:calyx-node"
	tests := []struct {
		verb, resource string
		ns             string // "" cluster-wide; "*" every namespace
		want           bool
	}{
		// The agent: informers and the node annotations.
		{"list", "nodes", "", true},
		{"watch", "nodes", "", true},
		{"patch", "nodes", "", true},
		{"list", "services", "*", true},
		{"watch", "services", "*", true},
		{"watch", "ippools.calyx.dev", "", true},
		{"watch", "ipamblocks.calyx.dev", "", true},
		// The IPAM, in the plugin and for the agent's tunnel address.
		{"get", "ippools.calyx.dev", "", true},
		{"create", "ipamblocks.calyx.dev", "", true},
		{"update", "ipamblocks.calyx.dev", "", true},
		{"create", "ipamhandles.calyx.dev", "", true},
		{"update", "ipamhandles.calyx.dev", "", true},
		{"delete", "ipamhandles.calyx.dev", "", true},
		{"list", "ipamhandles.calyx.dev", "", true},
		{"get", "ipamaffinities.calyx.dev", "", true},
		{"create", "ipamaffinities.calyx.dev", "", true},
		{"update", "ipamaffinities.calyx.dev", "", true},
		// The IPAM garbage collector (agent/ipamgc): pods read, empty
		// blocks and affinities of deleted nodes deleted, and its own
		// Lease, no other.
		{"get", "pods", "*", true},
		{"list", "pods", "*", true},
		{"watch", "pods", "*", true},
		// The IPAM it serves on its socket: the pod's namespace's
		// annotations, from an informer. Reading, never changing.
		{"get", "namespaces", "", true},
		{"list", "namespaces", "", true},
		{"watch", "namespaces", "", true},
		{"update", "namespaces", "", false},
		{"delete", "ipamblocks.calyx.dev", "", true},
		{"list", "ipamaffinities.calyx.dev", "", true},
		{"delete", "ipamaffinities.calyx.dev", "", true},
		{"create", "leases.coordination.k8s.io", "kube-system", true},
		{"get", "leases.coordination.k8s.io/calyx-ipam-gc", "kube-system", true},
		{"update", "leases.coordination.k8s.io/calyx-ipam-gc", "kube-system", true},
		{"update", "leases.coordination.k8s.io/kube-controller-manager", "kube-system", false},
		{"update", "leases.coordination.k8s.io/kube-scheduler", "kube-system", false},
		{"create", "leases.coordination.k8s.io", "default", false},
		// Nothing more.
		{"get", "secrets", "kube-system", false},
		{"list", "secrets", "*", false},
		{"create", "pods", "default", false},
		{"delete", "pods", "*", false},
		{"patch", "pods", "*", false},
		{"update", "services", "*", false},
		{"list", "endpointslices.discovery.k8s.io", "*", false},
		{"update", "nodes", "", false},
		{"delete", "nodes", "", false},
		{"create", "ippools.calyx.dev", "", false},
		{"update", "ippools.calyx.dev", "", false},
		{"create", "serviceaccounts/token", "kube-system", false},
	}
	const (
		jobSA    = "system:serviceaccount:kube-system:calyx-ippool-init"
		pluginSA = "system:serviceaccount:kube-system:calyx-cni-plugin"
	)
	for _, tt := range []struct {
		sa, verb, resource string
		want               bool
	}{
		{jobSA, "create", "ippools.calyx.dev", true},
		{jobSA, "update", "ippools.calyx.dev", false},
		{jobSA, "delete", "ippools.calyx.dev", false},
		{jobSA, "list", "secrets", false},
		{jobSA, "create", "pods", false},
		// The CNI plugins' account: the IPAM binary's calls, no more.
		{pluginSA, "get", "ippools.calyx.dev", true},
		{pluginSA, "update", "ipamblocks.calyx.dev", true},
		{pluginSA, "delete", "ipamhandles.calyx.dev", true},
		{pluginSA, "update", "ipamaffinities.calyx.dev", true},
		{pluginSA, "watch", "ipamblocks.calyx.dev", false},
		{pluginSA, "delete", "ipamblocks.calyx.dev", false},
		{pluginSA, "list", "secrets", false},
		// The pod's and its namespace's annotations, by name only.
		{pluginSA, "get", "pods", true},
		{pluginSA, "get", "namespaces", true},
		{pluginSA, "list", "pods", false},
		{pluginSA, "watch", "pods", false},
		{pluginSA, "list", "namespaces", false},
		{pluginSA, "create", "pods", false},
	} {
		out, _ := kubectl("auth", "can-i", tt.verb, tt.resource, "--as", tt.sa, "--all-namespaces")
		if got := strings.TrimSpace(out) == "yes"; got != tt.want {
			t.Errorf("can %s %s %s? %q, want %v", tt.sa, tt.verb, tt.resource, strings.TrimSpace(out), tt.want)
		}
	}
	// calyx-node mints the plugins' tokens, and no one else's.
	for name, want := range map[string]bool{"calyx-cni-plugin": true, "calyx-node": false, "default": false} {
		out, _ := kubectl("auth", "can-i", "create", "serviceaccounts/"+name, "--subresource", "token", "--namespace", "kube-system", "--as", sa)
		if got := strings.TrimSpace(out) == "yes"; got != want {
			t.Errorf("can calyx-node create a token for %s? %q, want %v", name, strings.TrimSpace(out), want)
		}
	}
	for _, tt := range tests {
		args := []string{"auth", "can-i", tt.verb, tt.resource, "--as", sa}
		switch tt.ns {
		case "":
		case "*":
			args = append(args, "--all-namespaces")
		default:
			args = append(args, "--namespace", tt.ns)
		}
		out, err := kubectl(args...)
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
		}
		if got := strings.TrimSpace(out) == "yes"; got != tt.want {
			t.Errorf("can calyx-node %s %s (namespace %q)? %q, want %v", tt.verb, tt.resource, tt.ns, strings.TrimSpace(out), tt.want)
		}
	}
}

// The DaemonSet as a user reviews it: where it runs, what it may do,
// what of the host it sees, and that its probes hit the agent's health
// port (cmd/calyx-agent --health-address, :9099).
func TestDaemonSet(t *testing.T) {
	ds := daemonSet(t)
	spec := ds.Spec.Template.Spec
	type container struct {
		Name    string
		Command []string
		Add     []corev1.Capability
		Drop    []corev1.Capability
		Mounts  []string
		Ready   string
		Live    string
	}
	summarize := func(c corev1.Container) container {
		s := container{Name: c.Name, Command: c.Command}
		if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil {
			s.Add, s.Drop = sc.Capabilities.Add, sc.Capabilities.Drop
		}
		if sc := c.SecurityContext; sc == nil || sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged or has no securityContext", c.Name)
		}
		for _, m := range c.VolumeMounts {
			s.Mounts = append(s.Mounts, m.MountPath)
		}
		probe := func(p *corev1.Probe) string {
			if p == nil || p.HTTPGet == nil {
				return ""
			}
			return p.HTTPGet.Path + ":" + p.HTTPGet.Port.String()
		}
		s.Ready, s.Live = probe(c.ReadinessProbe), probe(c.LivenessProbe)
		return s
	}
	type summary struct {
		Namespace   string
		HostNetwork bool
		Priority    string
		Account     string
		Tolerations []corev1.Toleration
		HostPaths   []string
		Init        []container
		Containers  []container
	}
	got := summary{
		Namespace: ds.Namespace, HostNetwork: spec.HostNetwork, Priority: spec.PriorityClassName,
		Account: spec.ServiceAccountName, Tolerations: spec.Tolerations,
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			got.HostPaths = append(got.HostPaths, v.HostPath.Path)
		}
	}
	for _, c := range spec.InitContainers {
		got.Init = append(got.Init, summarize(c))
	}
	for _, c := range spec.Containers {
		got.Containers = append(got.Containers, summarize(c))
	}
	want := summary{
		Namespace: "kube-system", HostNetwork: true, Priority: "system-node-critical", Account: "calyx-node",
		Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		HostPaths:   []string{"/opt/cni/bin", "/etc/cni/net.d", "/var/lib/calyx", "/var/run/calyx", "/etc/iproute2/rt_protos.d"},
		Init: []container{{
			Name: "install-cni", Command: []string{"/usr/local/bin/calyx-agent", "install-cni"},
			Drop: []corev1.Capability{"ALL"}, Mounts: []string{"/host/opt/cni/bin", "/host/etc/cni/net.d"},
		}},
		Containers: []container{{
			Name: "calyx-agent", Command: []string{"/usr/local/bin/calyx-agent"},
			Add: []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"}, Drop: []corev1.Capability{"ALL"},
			Mounts: []string{"/var/lib/calyx", "/var/run/calyx", "/host/etc/cni/net.d", "/etc/iproute2/rt_protos.d"},
			Ready:  "/readyz:9099", Live: "/livez:9099",
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DaemonSet calyx-node (-want +got):\n%s", diff)
	}
	// The conflist's kubeconfig is the file install-cni writes and the
	// agent refreshes.
	for _, e := range spec.Containers[0].Env {
		if e.Name == "CALYX_CNI_KUBECONFIG" && e.Value != "/host/etc/cni/net.d/calyx-kubeconfig" {
			t.Errorf("CALYX_CNI_KUBECONFIG = %q, want the conflist's /etc/cni/net.d/calyx-kubeconfig under /host", e.Value)
		}
	}
}

func daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	var ds appsv1.DaemonSet
	object(t, "DaemonSet", "calyx-node", &ds)
	return &ds
}

func configMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	var cm corev1.ConfigMap
	object(t, "ConfigMap", name, &cm)
	return &cm
}

// object decodes the manifest's object of that kind and name into into.
func object(t *testing.T, kind, name string, into any) {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.Manifest)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			t.Fatalf("deploy/calyx.yaml has no %s %s: run make manifests", kind, name)
		}
		if err != nil {
			t.Fatalf("reading deploy/calyx.yaml: %v", err)
		}
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("parsing deploy/calyx.yaml: %v", err)
		}
		if meta.Kind != kind || meta.Metadata.Name != name {
			continue
		}
		if err := yaml.UnmarshalStrict(doc, into); err != nil {
			t.Fatalf("parsing %s %s: %v", kind, name, err)
		}
		return
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The checked-in manifest is the one the test embeds.
func TestManifestIsCurrent(t *testing.T) {
	b, err := os.ReadFile("calyx.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, deploy.Manifest) {
		t.Fatal("embedded manifest differs from deploy/calyx.yaml")
	}
}
