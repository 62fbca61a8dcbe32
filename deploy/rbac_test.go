package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/calyx-net/calyx/lab/controlplane/cptest"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// nodeSA is the account the agent and, through the kubeconfig install-cni
// writes, the IPAM plugin run as: a stolen node token is this.
const nodeSA = "system:serviceaccount:kube-system:calyx-node"

// canI is one `kubectl auth can-i` question.
type canI struct {
	verb, resource string // resource may name a subresource: pods/exec
	ns             string // "" cluster-scoped; "*" every namespace
	name           string // one object, for rules limited by resourceNames
}

func (q canI) String() string {
	s := q.verb + " " + q.resource
	if q.name != "" {
		s += " named " + q.name
	}
	switch q.ns {
	case "":
		return s
	case "*":
		return s + " (all namespaces)"
	}
	return s + " (namespace " + q.ns + ")"
}

// mustDeny is what a stolen node token must never be worth: secrets,
// workloads, other accounts' tokens, nodes going away, or RBAC itself.
var mustDeny = []canI{
	{"get", "secrets", "kube-system", ""},
	{"get", "secrets", "default", ""},
	{"list", "secrets", "*", ""},
	{"watch", "secrets", "*", ""},
	{"create", "pods", "default", ""},
	{"create", "pods", "kube-system", ""},
	{"update", "pods", "*", ""},
	{"patch", "pods", "*", ""},
	{"delete", "pods", "*", ""},
	{"create", "pods/exec", "*", ""},
	{"create", "pods/eviction", "*", ""},
	{"create", "serviceaccounts/token", "kube-system", ""},
	{"get", "configmaps", "kube-system", ""},
	{"create", "nodes", "", ""},
	{"delete", "nodes", "", ""},
	{"update", "nodes", "", ""},
	{"get", "nodes/proxy", "", ""},
	{"update", "nodes/status", "", ""},
	{"create", "clusterrolebindings.rbac.authorization.k8s.io", "", ""},
	{"create", "rolebindings.rbac.authorization.k8s.io", "kube-system", ""},
	{"create", "clusterroles.rbac.authorization.k8s.io", "", ""},
	{"escalate", "clusterroles.rbac.authorization.k8s.io", "", ""},
	{"bind", "clusterroles.rbac.authorization.k8s.io", "", ""},
	{"impersonate", "users", "", ""},
	{"impersonate", "serviceaccounts", "*", ""},
	{"update", "services", "*", ""},
	{"delete", "services", "*", ""},
	{"create", "ippools.calyx.dev", "", ""},
	{"update", "ippools.calyx.dev", "", ""},
	{"delete", "ippools.calyx.dev", "", ""},
	{"delete", "customresourcedefinitions.apiextensions.k8s.io", "", ""},
	{"create", "daemonsets.apps", "kube-system", ""},
	{"update", "daemonsets.apps", "kube-system", ""},
	{"*", "*", "*", ""},
	// The GC's Lease Role is limited by name: not the control plane's.
	{"update", "leases.coordination.k8s.io", "kube-system", "kube-controller-manager"},
	{"update", "leases.coordination.k8s.io", "kube-system", "kube-scheduler"},
	{"delete", "leases.coordination.k8s.io", "kube-system", "calyx-ipam-gc"},
	{"update", "leases.coordination.k8s.io", "default", "calyx-ipam-gc"},
}

// mustAllow is what the agent, the IPAM and the IPAM garbage collector
// call (the comments of deploy/parts/20-rbac.yaml name the callers).
// Rules the file adds later are asked too, from the file itself.
var mustAllow = []canI{
	{"get", "nodes", "", ""},
	{"list", "nodes", "", ""},
	{"watch", "nodes", "", ""},
	{"patch", "nodes", "", ""},
	{"list", "services", "*", ""},
	{"watch", "services", "*", ""},
	{"get", "ippools.calyx.dev", "", ""},
	{"list", "ippools.calyx.dev", "", ""},
	{"watch", "ippools.calyx.dev", "", ""},
	{"get", "ipamblocks.calyx.dev", "", ""},
	{"list", "ipamblocks.calyx.dev", "", ""},
	{"watch", "ipamblocks.calyx.dev", "", ""},
	{"create", "ipamblocks.calyx.dev", "", ""},
	{"update", "ipamblocks.calyx.dev", "", ""},
	{"get", "ipamhandles.calyx.dev", "", ""},
	{"list", "ipamhandles.calyx.dev", "", ""},
	{"create", "ipamhandles.calyx.dev", "", ""},
	{"update", "ipamhandles.calyx.dev", "", ""},
	{"delete", "ipamhandles.calyx.dev", "", ""},
	{"get", "ipamaffinities.calyx.dev", "", ""},
	{"create", "ipamaffinities.calyx.dev", "", ""},
	{"update", "ipamaffinities.calyx.dev", "", ""},
	// The IPAM garbage collector (agent/ipamgc, ipam/gc_*.go), one agent
	// at a time, elected with a Lease.
	{"get", "pods", "*", ""},
	{"list", "pods", "*", ""},
	{"watch", "pods", "*", ""},
	{"delete", "ipamblocks.calyx.dev", "", ""},
	{"list", "ipamaffinities.calyx.dev", "", ""},
	{"delete", "ipamaffinities.calyx.dev", "", ""},
	{"create", "leases.coordination.k8s.io", "kube-system", ""},
	{"get", "leases.coordination.k8s.io", "kube-system", "calyx-ipam-gc"},
	{"update", "leases.coordination.k8s.io", "kube-system", "calyx-ipam-gc"},
}

// rbacObjects reads deploy/parts/20-rbac.yaml: the ClusterRoles, Roles
// and their rules, for the questions the file's own rules must answer yes.
func rbacObjects(t *testing.T) (raw []byte, allowed []canI, roleRules []rbacv1.PolicyRule) {
	t.Helper()
	raw, err := os.ReadFile("parts/20-rbac.yaml")
	if err != nil {
		t.Fatalf("reading the RBAC part: %v (run the test from the deploy package)", err)
	}
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("splitting 20-rbac.yaml into documents: %v", err)
		}
		buf, n := doc, len(doc)
		var head struct{ Kind string }
		if err := yaml.Unmarshal(buf[:n], &head); err != nil {
			t.Fatalf("20-rbac.yaml: %v", err)
		}
		var rules []rbacv1.PolicyRule
		var ns string
		switch head.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(buf[:n], &r); err != nil {
				t.Fatalf("20-rbac.yaml ClusterRole: %v", err)
			}
			rules = r.Rules
		case "Role":
			var r rbacv1.Role
			if err := yaml.UnmarshalStrict(buf[:n], &r); err != nil {
				t.Fatalf("20-rbac.yaml Role: %v", err)
			}
			rules, ns = r.Rules, r.Namespace
		default:
			continue
		}
		roleRules = append(roleRules, rules...)
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					name := res
					if g != "" {
						name = res + "." + g
					}
					names := r.ResourceNames
					if len(names) == 0 {
						names = []string{""}
					}
					for _, v := range r.Verbs {
						for _, n := range names {
							q := canI{verb: v, resource: name, ns: ns, name: n}
							if ns == "" && namespaced(res) {
								q.ns = "*"
							}
							allowed = append(allowed, q)
						}
					}
				}
			}
		}
	}
	return raw, allowed, roleRules
}

// namespaced says which resources the ClusterRole may grant in every
// namespace; can-i needs --all-namespaces for those.
func namespaced(resource string) bool {
	switch strings.SplitN(resource, "/", 2)[0] {
	case "nodes", "ippools", "ipamblocks", "ipamhandles", "ipamaffinities",
		"clusterroles", "clusterrolebindings", "customresourcedefinitions", "namespaces":
		return false
	}
	return true
}

// The node account on a real kube-apiserver, asked through the real
// kubectl: no secrets, no pod writes, no RBAC escalation; every verb the
// agent and the IPAM call.
func TestNodeAccountRBAC(t *testing.T) {
	raw, fileAllowed, rules := rbacObjects(t)

	// No wildcard can hide a grant the tables below do not ask about.
	for _, r := range rules {
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs) {
			if s == "*" {
				t.Errorf("20-rbac.yaml has a wildcard in rule %+v: name the verbs and resources the agent calls", r)
			}
		}
		for _, res := range r.Resources {
			if res == "secrets" || strings.HasPrefix(res, "serviceaccounts") {
				t.Errorf("20-rbac.yaml grants %v on %s: the node account must not read credentials", r.Verbs, res)
			}
		}
		for _, v := range r.Verbs {
			if v == "escalate" || v == "bind" || v == "impersonate" {
				t.Errorf("20-rbac.yaml grants %s: the node account must not change RBAC or act as others", v)
			}
		}
	}

	cp := cptest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kubectlBin, err := kubebin.Ensure(ctx, "kubectl", testWriter{t})
	if err != nil {
		t.Fatalf("building kubectl: %v", err)
	}
	kubectl := func(stdin []byte, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out) + stderr.String(), err
		}
		return string(out), nil
	}
	if out, err := kubectl(raw, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply -f deploy/parts/20-rbac.yaml: %v\n%s", err, out)
	}

	ask := func(q canI) (bool, error) {
		// can-i reads "pods/exec" as the pod named exec: a subresource
		// is a flag of its own.
		res, sub, _ := strings.Cut(q.resource, "/")
		if q.name != "" {
			res += "/" + q.name
		}
		args := []string{"auth", "can-i", q.verb, res, "--as", nodeSA}
		if sub != "" {
			args = append(args, "--subresource", sub)
		}
		switch q.ns {
		case "":
		case "*":
			args = append(args, "--all-namespaces")
		default:
			args = append(args, "--namespace", q.ns)
		}
		out, err := kubectl(nil, args...)
		answer := strings.TrimSpace(out)
		var exit *exec.ExitError
		switch {
		case err == nil && answer == "yes":
			return true, nil
		case errors.As(err, &exit) && strings.HasPrefix(answer, "no"):
			return false, nil
		}
		return false, fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}

	// Every question once, in parallel: kubectl starts in ~100 ms.
	var questions []canI
	want := map[string]bool{}
	for _, q := range mustDeny {
		want[q.String()] = false
		questions = append(questions, q)
	}
	for _, q := range slices.Concat(mustAllow, fileAllowed) {
		if _, dup := want[q.String()]; dup && !want[q.String()] {
			t.Errorf("20-rbac.yaml grants %s, which the node account must never have", q)
			continue
		}
		if _, dup := want[q.String()]; !dup {
			questions = append(questions, q)
		}
		want[q.String()] = true
	}
	got := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, q := range questions {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			yes, err := ask(q)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
			got[q.String()] = yes
		})
	}
	wg.Wait()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kubectl auth can-i --as %s (-want +got):\n%s", nodeSA, diff)
	}
	t.Logf("asked %d questions: %d must be denied, %d allowed", len(questions), len(mustDeny), len(questions)-len(mustDeny))
}
