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

// account is a ServiceAccount of kube-system and what its RBAC part of
// deploy/parts must and must not grant it.
type account struct {
	name string
	part string
	// mustAllow and mustDeny are asked of the API server; the rules the
	// part adds later are asked too, from the part itself.
	mustAllow, mustDeny []canI
	// exact: the part grants nothing mustAllow does not list.
	exact bool
	// mayMintFor are the only accounts it may create tokens for.
	mayMintFor []string
}

func (a account) user() string { return "system:serviceaccount:kube-system:" + a.name }

// The agent's account: a stolen node token is this.
var nodeAccount = account{
	name: "calyx-node", part: "parts/20-rbac.yaml",
	mustAllow: mustAllow, mustDeny: mustDeny,
	mayMintFor: []string{"calyx-cni-plugin"},
}

// The CNI plugins' account, whose token sits in a file on every node.
var pluginAccount = account{
	name: "calyx-cni-plugin", part: "parts/25-cni-plugin-rbac.yaml",
	// Nothing of the agent's own: no watch (the binary has no informer),
	// no listing pods, nothing of nodes, no deleting blocks or affinities
	// (the garbage collector's), not the GC's Lease, no tokens, not even
	// its own.
	mustAllow: slices.Concat(ipamCalls, annotationCalls), mustDeny: slices.Concat(mustDeny, agentCalls, []canI{{"watch", "ipamhandles.calyx.dev", "", ""}}),
	exact: true,
}

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

// mustDeny is what a stolen node or plugin token must never be worth:
// secrets, workloads, other accounts' tokens, nodes going away, or RBAC
// itself.
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
	{"create", "serviceaccounts/token", "*", ""},
	{"create", "serviceaccounts/token", "kube-system", "calyx-node"},
	{"create", "serviceaccounts/token", "kube-system", "calyx-ippool-init"},
	{"create", "serviceaccounts/token", "kube-system", "default"},
	{"create", "serviceaccounts/token", "kube-system", "kube-proxy"},
	{"create", "serviceaccounts/token", "default", "calyx-cni-plugin"},
	{"create", "serviceaccounts/token", "default", "default"},
	{"get", "serviceaccounts", "kube-system", ""},
	{"update", "serviceaccounts", "kube-system", "calyx-cni-plugin"},
	{"delete", "serviceaccounts", "kube-system", "calyx-cni-plugin"},
	{"get", "configmaps", "kube-system", ""},
	{"update", "namespaces", "", ""},
	{"delete", "namespaces", "", ""},
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

// ipamCalls is what the IPAM calls through ipam.KubeStore (ipam/store.go):
// the calyx-ipam binary, and the agent for its tunnel address and the IPAM
// it serves the CNI plugin on its socket. It is all the plugins' account
// may do.
var ipamCalls = []canI{
	{"get", "ippools.calyx.dev", "", ""},
	{"list", "ippools.calyx.dev", "", ""},
	{"get", "ipamblocks.calyx.dev", "", ""},
	{"list", "ipamblocks.calyx.dev", "", ""},
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
}

// annotationCalls are how the IPAM, in the binary and in the agent, reads
// the annotations of the pod it allocates for (ipam/plugin/annotations.go):
// one pod and one namespace, by name.
var annotationCalls = []canI{
	{"get", "pods", "*", ""},
	{"get", "namespaces", "", ""},
}

// mustAllow is what the agent, the IPAM and the IPAM garbage collector
// call (the comments of deploy/parts/20-rbac.yaml name the callers), and
// the token request for the plugins' account.
var mustAllow = slices.Concat(ipamCalls, annotationCalls, agentCalls)

// agentCalls are the agent's calls beyond the IPAM's: none of them is the
// plugins' to make.
var agentCalls = []canI{
	// The agent's informers and its node annotations.
	{"get", "nodes", "", ""},
	{"list", "nodes", "", ""},
	{"watch", "nodes", "", ""},
	{"patch", "nodes", "", ""},
	{"list", "services", "*", ""},
	{"watch", "services", "*", ""},
	{"watch", "ippools.calyx.dev", "", ""},
	{"watch", "ipamblocks.calyx.dev", "", ""},
	// The IPAM garbage collector (agent/ipamgc, ipam/gc_*.go), one agent
	// at a time, elected with a Lease; it reads a pod back by name too
	// (annotationCalls).
	{"list", "pods", "*", ""},
	{"watch", "pods", "*", ""},
	// The IPAM the agent serves answers annotation reads from informers:
	// the node's pods (list and watch above) and the namespaces.
	{"list", "namespaces", "", ""},
	{"watch", "namespaces", "", ""},
	{"delete", "ipamblocks.calyx.dev", "", ""},
	{"list", "ipamaffinities.calyx.dev", "", ""},
	{"delete", "ipamaffinities.calyx.dev", "", ""},
	{"create", "leases.coordination.k8s.io", "kube-system", ""},
	{"get", "leases.coordination.k8s.io", "kube-system", "calyx-ipam-gc"},
	{"update", "leases.coordination.k8s.io", "kube-system", "calyx-ipam-gc"},
	// install-cni and the agent's token refresher (agent/installcni).
	{"create", "serviceaccounts/token", "kube-system", "calyx-cni-plugin"},
}

// rbacObjects reads an RBAC part of deploy/parts: the ClusterRoles, Roles
// and their rules, for the questions the file's own rules must answer yes.
func rbacObjects(t *testing.T, part string) (raw []byte, allowed []canI, roleRules []rbacv1.PolicyRule) {
	t.Helper()
	raw, err := os.ReadFile(part)
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
			t.Fatalf("splitting %s into documents: %v", part, err)
		}
		buf, n := doc, len(doc)
		var head struct{ Kind string }
		if err := yaml.Unmarshal(buf[:n], &head); err != nil {
			t.Fatalf("%s: %v", part, err)
		}
		var rules []rbacv1.PolicyRule
		var ns string
		switch head.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := yaml.UnmarshalStrict(buf[:n], &r); err != nil {
				t.Fatalf("%s ClusterRole: %v", part, err)
			}
			rules = r.Rules
		case "Role":
			var r rbacv1.Role
			if err := yaml.UnmarshalStrict(buf[:n], &r); err != nil {
				t.Fatalf("%s Role: %v", part, err)
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

// The node's and the CNI plugins' accounts on a real kube-apiserver,
// asked through the real kubectl: no secrets, no pod writes, no RBAC
// escalation, no tokens of other accounts; every verb the agent and the
// IPAM call; for the plugins, nothing more than the IPAM binary calls.
func TestAccountRBAC(t *testing.T) {
	accounts := []account{nodeAccount, pluginAccount}
	for _, a := range accounts {
		_, _, rules := rbacObjects(t, a.part)
		checkRules(t, a, rules)
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
	for _, a := range accounts {
		raw, _, _ := rbacObjects(t, a.part)
		if out, err := kubectl(raw, "apply", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply -f deploy/%s: %v\n%s", a.part, err, out)
		}
	}
	for _, a := range accounts {
		t.Run(a.name, func(t *testing.T) { askAccount(t, kubectl, a) })
	}
}

// checkRules fails on what no question table could catch: wildcards, and
// grants on credentials or RBAC.
func checkRules(t *testing.T, a account, rules []rbacv1.PolicyRule) {
	t.Helper()
	for _, r := range rules {
		for _, s := range slices.Concat(r.APIGroups, r.Resources, r.Verbs) {
			if s == "*" {
				t.Errorf("%s has a wildcard in rule %+v: name the verbs and resources the callers call", a.part, r)
			}
		}
		for _, res := range r.Resources {
			mint := res == "serviceaccounts/token" && slices.Equal(r.Verbs, []string{"create"}) &&
				len(r.ResourceNames) > 0 && slices.Equal(r.ResourceNames, a.mayMintFor)
			if res == "secrets" || strings.HasPrefix(res, "serviceaccounts") && !mint {
				t.Errorf("%s grants %v on %s (names %v): %s must not read credentials, nor mint tokens but for %v", a.part, r.Verbs, res, r.ResourceNames, a.name, a.mayMintFor)
			}
		}
		for _, v := range r.Verbs {
			if v == "escalate" || v == "bind" || v == "impersonate" {
				t.Errorf("%s grants %s: %s must not change RBAC or act as others", a.part, v, a.name)
			}
		}
	}
}

// askAccount asks every question of a's tables and of its part's rules.
func askAccount(t *testing.T, kubectl func([]byte, ...string) (string, error), a account) {
	_, fileAllowed, _ := rbacObjects(t, a.part)
	ask := func(q canI) (bool, error) {
		// can-i reads "pods/exec" as the pod named exec: a subresource
		// is a flag of its own.
		res, sub, _ := strings.Cut(q.resource, "/")
		if q.name != "" {
			res += "/" + q.name
		}
		args := []string{"auth", "can-i", q.verb, res, "--as", a.user()}
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
	for _, q := range a.mustDeny {
		if _, dup := want[q.String()]; !dup {
			questions = append(questions, q)
		}
		want[q.String()] = false
	}
	listed := map[string]bool{}
	for _, q := range a.mustAllow {
		listed[q.String()] = true
	}
	for _, q := range slices.Concat(a.mustAllow, fileAllowed) {
		if a.exact && !listed[q.String()] {
			t.Errorf("%s grants %s, which the %s binary does not call", a.part, q, a.name)
		}
		if _, dup := want[q.String()]; dup && !want[q.String()] {
			t.Errorf("%s grants %s, which %s must never have", a.part, q, a.name)
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
		t.Errorf("kubectl auth can-i --as %s (-want +got):\n%s", a.user(), diff)
	}
	t.Logf("asked %d questions: %d must be denied, %d allowed", len(questions), len(a.mustDeny), len(questions)-len(a.mustDeny))
}
