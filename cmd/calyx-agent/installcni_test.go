package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/installcni"
	"github.com/calyx-net/calyx/deploy"
	"github.com/calyx-net/calyx/ipam/plugin"
	"github.com/calyx-net/calyx/lab/controlplane"
	"github.com/calyx-net/calyx/lab/controlplane/cptest"
)

const pluginUser = "system:serviceaccount:kube-system:calyx-cni-plugin"

// `calyx-agent install-cni` as the DaemonSet runs it, on a real API
// server with deploy/calyx.yaml applied, with a calyx-node pod's
// credentials: a token bound to that pod, as the kubelet projects it. The
// kubeconfig it writes authenticates as calyx-cni-plugin for a day, with
// a token bound to no pod: once the calyx-node pod is deleted its own
// token is refused, and the plugins' still works, for every verb of the
// IPAM plugin. The agent's refresher then leaves that token alone, and
// replaces it when the clock says a third of its life has passed.
func TestInstallCNISubcommand(t *testing.T) {
	cp := cptest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	installCalyx(t, ctx, cp)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	pod, podToken := calyxNodePod(t, ctx, kube)
	sa := saDir(t, cp, podToken)
	u, err := url.Parse(cp.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", u.Hostname())
	t.Setenv("KUBERNETES_SERVICE_PORT", u.Port())

	root := t.TempDir()
	dir := func(p string) string {
		d := filepath.Join(root, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	src, bin, conf := dir("image"), dir("host/opt/cni/bin"), dir("host/etc/cni/net.d")
	for _, p := range installcni.Plugins {
		os.WriteFile(filepath.Join(src, p), []byte("#!/bin/sh\n"), 0o755)
	}
	args := []string{"install-cni", "--src-dir", src, "--cni-bin-dir", bin, "--cni-conf-dir", conf,
		"--token-file", filepath.Join(sa, "token"), "--ca-file", filepath.Join(sa, "ca.crt")}
	for i := range 2 {
		if code := run(args); code != 0 {
			t.Fatalf("run %d: exit %d", i, code)
		}
	}
	var got []string
	for _, d := range []string{bin, conf} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			got = append(got, e.Name())
		}
	}
	if diff := cmp.Diff([]string{"calyx", "calyx-ipam", "loopback", "portmap", "10-calyx.conflist", "calyx-kubeconfig"}, got); diff != "" {
		t.Errorf("installed (-want +got):\n%s", diff)
	}
	kc := filepath.Join(conf, "calyx-kubeconfig")
	checkPluginToken(t, ctx, kc, cp.URL)

	// The calyx-node pod goes (an update, a drain): its token with it.
	if err := kube.CoreV1().Pods("kube-system").Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	podCfg := rest.AnonymousClientConfig(cp.Config)
	podCfg.BearerToken = podToken
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, err := whoami(ctx, podCfg)
		if apierrors.IsUnauthorized(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted pod's token is still accepted (%v): the test shows nothing", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if user, err := whoami(ctx, kubeconfigConfig(t, kc)); err != nil || user != pluginUser {
		t.Fatalf("with no calyx-node pod, the plugins' kubeconfig is %q, %v; want %s", user, err, pluginUser)
	}
	pluginVerbs(t, kc)
	refreshOnAPIServer(t, ctx, cp, kc)

	if code := run([]string{"install-cni", "extra"}); code != 2 {
		t.Errorf("install-cni with an argument: exit %d, want 2", code)
	}
}

// calyxNodePod is a calyx-node pod object (no kubelet runs it) and a token
// bound to it, as the kubelet would project into it.
func calyxNodePod(t *testing.T, ctx context.Context, kube kubernetes.Interface) (*corev1.Pod, string) {
	t.Helper()
	pod, err := kube.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "calyx-node-test"},
		Spec: corev1.PodSpec{ServiceAccountName: "calyx-node",
			Containers: []corev1.Container{{Name: "calyx-agent", Image: "ghcr.io/calyx-net/calyx:dev"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := kube.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "calyx-node", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token for calyx-node bound to its pod: %v", err)
	}
	return pod, tok.Status.Token
}

// saDir is a pod's service-account directory: token, ca.crt, namespace.
func saDir(t *testing.T, cp *controlplane.ControlPlane, token string) string {
	t.Helper()
	d := t.TempDir()
	ca, err := os.ReadFile(cp.CACertFile())
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"token": token, "ca.crt": string(ca), "namespace": "kube-system"} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// checkPluginToken: the kubeconfig at kc is for server, authenticates as
// calyx-cni-plugin, and its token is bound to no pod and valid for a day.
func checkPluginToken(t *testing.T, ctx context.Context, kc, server string) {
	t.Helper()
	cfg := kubeconfigConfig(t, kc)
	if cfg.Host != server {
		t.Errorf("kubeconfig server %s, want %s", cfg.Host, server)
	}
	if user, err := whoami(ctx, cfg); err != nil || user != pluginUser {
		t.Fatalf("the plugins' kubeconfig authenticates as %q (%v), want %s", user, err, pluginUser)
	}
	var claims struct {
		jwt.RegisteredClaims
		Kubernetes map[string]json.RawMessage `json:"kubernetes.io"`
	}
	if _, _, err := jwt.NewParser().ParseUnverified(cfg.BearerToken, &claims); err != nil {
		t.Fatal(err)
	}
	if b, ok := claims.Kubernetes["pod"]; ok {
		t.Errorf("the plugins' token is bound to pod %s: it dies with that pod", b)
	}
	if life := claims.ExpiresAt.Sub(claims.IssuedAt.Time); life < 24*time.Hour-time.Minute || life > 24*time.Hour+time.Minute {
		t.Errorf("the plugins' token is valid for %s, want 24h", life)
	}
}

// pluginVerbs runs calyx-ipam's verbs as the kubelet's runtime would,
// with the kubeconfig at kc and the shipped conflist's calyx entry: ADD,
// CHECK, STATUS, GC and DEL all pass with the plugins' account alone.
func pluginVerbs(t *testing.T, kc string) {
	t.Helper()
	entry, err := deploy.CalyxEntry()
	if err != nil {
		t.Fatal(err)
	}
	var netconf map[string]any
	if err := json.Unmarshal(entry, &netconf); err != nil {
		t.Fatal(err)
	}
	ipamConf := netconf["ipam"].(map[string]any)
	ipamConf["kubeconfig"], ipamConf["nodename"], ipamConf["lock_file"] = kc, "learn-k8s-2", filepath.Join(t.TempDir(), "ipam.lock")
	stdin := func(valid ...string) []byte {
		var atts []map[string]string
		for _, id := range valid {
			atts = append(atts, map[string]string{"containerID": id, "ifname": "eth0"})
		}
		netconf["cni.dev/valid-attachments"] = atts
		b, _ := json.Marshal(netconf)
		return b
	}
	args := func(id string, valid ...string) *skel.CmdArgs {
		return &skel.CmdArgs{ContainerID: id, Netns: "/var/run/netns/" + id, IfName: "eth0",
			Args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-" + id, StdinData: stdin(valid...)}
	}
	var h plugin.Handler
	for _, id := range []string{"c1", "c2"} {
		if _, _, err := h.Add(args(id), nil); err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
	}
	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"CHECK c1", func() error { return h.Check(args("c1")) }},
		{"STATUS", func() error { return h.Status(args("")) }},
		{"GC keeping c1", func() error { return h.GC(args("", "c1")) }},
		{"CHECK c2 after GC", func() error {
			if err := h.Check(args("c2")); err == nil {
				return errFoundAfterGC
			}
			return nil
		}},
		{"DEL c1", func() error { return h.Del(args("c1")) }},
		{"DEL c1 again", func() error { return h.Del(args("c1")) }},
	} {
		if err := step.do(); err != nil {
			t.Errorf("%s with the plugins' kubeconfig: %v", step.name, err)
		}
	}
}

var errFoundAfterGC = errors.New("c2's address survived a GC that did not list it")

// refreshOnAPIServer: the agent's refresher, with a calyx-node token and
// the manifest's Role, leaves the fresh token install-cni wrote alone and
// replaces it once the clock is past a third of its life.
func refreshOnAPIServer(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, kc string) {
	t.Helper()
	tok, err := kubernetes.NewForConfigOrDie(cp.Config).CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "calyx-node",
		&authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sa := saDir(t, cp, tok.Status.Token)
	acct := installcni.Account{Server: cp.URL, TokenFile: filepath.Join(sa, "token"), CAFile: filepath.Join(sa, "ca.crt"),
		Name: installcni.PluginAccount, Lifetime: installcni.DefaultTokenLifetime}
	tokens, err := acct.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	var ahead time.Duration
	r := &installcni.Refresher{Path: kc, Server: acct.Server, CAFile: acct.CAFile, Tokens: tokens,
		Now: func() time.Time { return time.Now().Add(ahead) }}
	before := kubeconfigConfig(t, kc).BearerToken
	if _, why, err := r.Refresh(ctx); err != nil || why != "" {
		t.Fatalf("refreshing install-cni's fresh token: %q, %v; want it kept", why, err)
	}
	if kubeconfigConfig(t, kc).BearerToken != before {
		t.Error("the refresher replaced a fresh token")
	}
	ahead = 8*time.Hour + time.Minute
	if _, why, err := r.Refresh(ctx); err != nil || why != "the token is past a third of its lifetime" {
		t.Fatalf("refreshing a token past a third of its life: %q, %v; want it replaced", why, err)
	}
	if kubeconfigConfig(t, kc).BearerToken == before {
		t.Error("the token past a third of its life is still there")
	}
	checkPluginToken(t, ctx, kc, cp.URL)
}

func kubeconfigConfig(t *testing.T, path string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("client-go cannot load %s: %v", path, err)
	}
	return cfg
}

// whoami is `kubectl auth whoami`: the user the API server takes cfg for.
func whoami(ctx context.Context, cfg *rest.Config) (string, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	r, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return r.Status.UserInfo.Username, nil
}
