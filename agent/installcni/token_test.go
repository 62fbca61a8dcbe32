package installcni_test

import (
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/calyx-net/calyx/agent/installcni"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// jwtToken is an unsigned JWT with these claims: what the refresher reads
// back from a kubeconfig (it never checks signatures; the API server does).
func jwtToken(t *testing.T, sub string, iat, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{
		Subject: sub, IssuedAt: jwt.NewNumericDate(iat), ExpiresAt: jwt.NewNumericDate(exp),
	}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// When the token held in the kubeconfig must be replaced: now (0) or in
// how long, and why.
func TestRefreshIn(t *testing.T) {
	const server = "https://10.96.0.1:443"
	day := installcni.Token{Subject: pluginSubject, IssuedAt: t0, Expires: t0.Add(24 * time.Hour)}
	held := func(mod func(*installcni.Held)) installcni.Held {
		h := installcni.Held{Server: server, Token: day}
		if mod != nil {
			mod(&h)
		}
		return h
	}
	type answer struct {
		In  time.Duration
		Why string
	}
	tests := []struct {
		name    string
		now     time.Time
		held    installcni.Held
		readErr error
		want    answer
	}{
		{"just issued", t0, held(nil), nil, answer{8 * time.Hour, ""}},
		{"an hour old", t0.Add(time.Hour), held(nil), nil, answer{7 * time.Hour, ""}},
		{"a third old", t0.Add(8 * time.Hour), held(nil), nil, answer{0, "the token is past a third of its lifetime"}},
		{"past a third", t0.Add(20 * time.Hour), held(nil), nil, answer{0, "the token is past a third of its lifetime"}},
		{"expired", t0.Add(25 * time.Hour), held(nil), nil, answer{0, "the token is past a third of its lifetime"}},
		{"ten minutes, as short as the API server issues", t0, held(func(h *installcni.Held) { h.Token.Expires = t0.Add(10 * time.Minute) }), nil,
			answer{200 * time.Second, ""}},
		{"no file", t0, installcni.Held{}, errors.New("no kubeconfig at /etc/cni/net.d/calyx-kubeconfig"), answer{0, "no kubeconfig at /etc/cni/net.d/calyx-kubeconfig"}},
		{"another server", t0, held(func(h *installcni.Held) { h.Server = "https://192.0.2.1:6443" }), nil,
			answer{0, "the kubeconfig is for https://192.0.2.1:6443, not https://10.96.0.1:443"}},
		// What an older calyx wrote: the calyx-node pod's own token.
		{"the node's pod-bound token", t0, held(func(h *installcni.Held) { h.Token.Subject = "system:serviceaccount:kube-system:calyx-node" }), nil,
			answer{0, `the kubeconfig's token is "system:serviceaccount:kube-system:calyx-node"'s, not system:serviceaccount:kube-system:calyx-cni-plugin's`}},
		{"no iat", t0, held(func(h *installcni.Held) { h.Token.IssuedAt = time.Time{} }), nil, answer{0, "the token's lifetime is unknown (no iat or exp)"}},
		{"exp before iat", t0, held(func(h *installcni.Held) { h.Token.Expires = t0.Add(-time.Hour) }), nil, answer{0, "the token's lifetime is unknown (no iat or exp)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, why := installcni.RefreshIn(tt.now, tt.held, tt.readErr, server, pluginSubject)
			if diff := cmp.Diff(tt.want, answer{in, why}); diff != "" {
				t.Errorf("RefreshIn (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseToken(t *testing.T) {
	value := jwtToken(t, pluginSubject, t0, t0.Add(24*time.Hour))
	got, err := installcni.ParseToken(value)
	if err != nil {
		t.Fatal(err)
	}
	want := installcni.Token{Value: value, Subject: pluginSubject, IssuedAt: t0, Expires: t0.Add(24 * time.Hour)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseToken (-want +got):\n%s", diff)
	}
	if _, err := installcni.ParseToken("token-1"); err == nil || !strings.Contains(err.Error(), "not a service-account token") {
		t.Errorf("ParseToken of a non-JWT: %v, want an error", err)
	}
}

// fakeIssuer issues JWTs for the plugins' account at the fake clock's
// time, and counts them.
type fakeIssuer struct {
	t        *testing.T
	mu       sync.Mutex
	now      time.Time
	issued   int
	failures int // the next this many requests fail
}

func (f *fakeIssuer) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fakeIssuer) tokens() installcni.Tokens {
	return installcni.Tokens{Subject: pluginSubject, Request: func(context.Context) (installcni.Token, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.failures > 0 {
			f.failures--
			return installcni.Token{}, errors.New("requesting a token: connection refused")
		}
		f.issued++
		// A second apart, so each token differs.
		iat := f.now.Add(time.Duration(f.issued) * time.Second)
		return installcni.ParseToken(jwtToken(f.t, pluginSubject, iat, iat.Add(24*time.Hour)))
	}}
}

func newRefresher(t *testing.T) (*installcni.Refresher, *fakeIssuer) {
	t.Helper()
	dir := t.TempDir()
	f := &fakeIssuer{t: t, now: t0}
	r := &installcni.Refresher{
		Path: filepath.Join(dir, "calyx-kubeconfig"), Server: "https://10.96.0.1:443", CAFile: filepath.Join(dir, "ca.crt"),
		Tokens: f.tokens(), Now: f.clock, Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	mustWrite(t, r.CAFile, "ca-1\n")
	return r, f
}

// The refresher writes a token when there is none, leaves a fresh one
// alone, and replaces one past a third of its life or for another server.
func TestRefresher(t *testing.T) {
	r, f := newRefresher(t)
	ctx := context.Background()
	type step struct {
		Why    string
		Issued int
	}
	refresh := func(t *testing.T) step {
		t.Helper()
		_, why, err := r.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return step{why, f.issued}
	}
	if diff := cmp.Diff(step{"no kubeconfig at " + r.Path, 1}, refresh(t)); diff != "" {
		t.Errorf("without a kubeconfig (-want +got):\n%s", diff)
	}
	first := kubeconfigToken(t, r.Path)

	before := snapshot(t, filepath.Dir(r.Path))
	f.now = t0.Add(7 * time.Hour)
	if diff := cmp.Diff(step{"", 1}, refresh(t)); diff != "" {
		t.Errorf("with a fresh token (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(before, snapshot(t, filepath.Dir(r.Path))); diff != "" {
		t.Errorf("a fresh token's kubeconfig was touched (-before +after):\n%s", diff)
	}

	// A new CA is written in, with the same token.
	mustWrite(t, r.CAFile, "ca-2\n")
	if diff := cmp.Diff(step{"", 1}, refresh(t)); diff != "" {
		t.Errorf("after a CA change (-want +got):\n%s", diff)
	}
	if rc := loadKubeconfig(t, r.Path); string(rc.CAData) != "ca-2\n" || rc.BearerToken != first {
		t.Errorf("after a CA change: CA %q, token changed %v; want ca-2 and the same token", rc.CAData, rc.BearerToken != first)
	}

	f.now = t0.Add(8*time.Hour + time.Second)
	if diff := cmp.Diff(step{"the token is past a third of its lifetime", 2}, refresh(t)); diff != "" {
		t.Errorf("a third into the token's life (-want +got):\n%s", diff)
	}
	if kubeconfigToken(t, r.Path) == first {
		t.Error("the token past a third of its life is still in the kubeconfig")
	}

	r.Server = "https://192.0.2.1:6443"
	if got := refresh(t); got.Issued != 3 || !strings.HasPrefix(got.Why, "the kubeconfig is for https://10.96.0.1:443") {
		t.Errorf("for another server: %+v, want a new token", got)
	}
	if rc := loadKubeconfig(t, r.Path); rc.Host != r.Server {
		t.Errorf("kubeconfig server %s, want %s", rc.Host, r.Server)
	}

	// A failed request leaves the file as it was.
	f.now, f.failures = t0.Add(30*time.Hour), 1
	kept := kubeconfigToken(t, r.Path)
	if _, _, err := r.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Refresh with the API server down: %v, want its error", err)
	}
	if kubeconfigToken(t, r.Path) != kept {
		t.Error("a failed request changed the kubeconfig")
	}
}

// Run writes the kubeconfig, retries through errors with one log line per
// streak of them, and repairs a deleted file.
func TestRefresherRun(t *testing.T) {
	r, f := newRefresher(t)
	// Read once Run has returned: no lock needed.
	var logs strings.Builder
	r.Log = slog.New(slog.NewTextHandler(&logs, nil))
	r.Interval, r.RetryAfter, f.failures = 5*time.Millisecond, time.Millisecond, 3
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	defer stop()

	written := func() bool { _, err := installcni.ReadKubeconfig(r.Path); return err == nil }
	waitFor(t, "a kubeconfig", written)
	os.Remove(r.Path)
	waitFor(t, "the deleted kubeconfig back", written)
	stop()
	if n := strings.Count(logs.String(), "cannot refresh"); n != 1 {
		t.Errorf("%d error lines for one streak of 3 failures, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "refreshed again") {
		t.Errorf("no line says the refresh works again:\n%s", logs.String())
	}
}

// The account's checks before any request, each with what to do.
func TestAccountTokens(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	mustWrite(t, tokenFile, "t\n")
	mustWrite(t, filepath.Join(dir, "namespace"), "kube-system")
	// client-go parses the CA when it builds the client.
	srv := httptest.NewTLSServer(nil)
	srv.Close()
	mustWrite(t, filepath.Join(dir, "ca.crt"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	ok := installcni.Account{Server: "https://10.96.0.1:443", TokenFile: tokenFile, CAFile: filepath.Join(dir, "ca.crt"),
		Name: installcni.PluginAccount, Lifetime: installcni.DefaultTokenLifetime}
	emptyDir := t.TempDir()
	mustWrite(t, filepath.Join(emptyDir, "empty"), "")
	mustWrite(t, filepath.Join(emptyDir, "namespace"), "\n")
	tests := []struct {
		name string
		mod  func(*installcni.Account)
		want string // the subject, or a part of the error
	}{
		{"the pod's namespace", func(*installcni.Account) {}, pluginSubject},
		{"namespace set", func(a *installcni.Account) { a.Namespace = "calyx" }, "system:serviceaccount:calyx:calyx-cni-plugin"},
		{"no server", func(a *installcni.Account) { a.Server = "" }, "set --server, or KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"},
		{"too short", func(a *installcni.Account) { a.Lifetime = 5 * time.Minute }, "the API server issues tokens for 10m0s at least"},
		{"no token", func(a *installcni.Account) { a.TokenFile = filepath.Join(dir, "missing") }, "automountServiceAccountToken must not be false"},
		{"empty token", func(a *installcni.Account) { a.TokenFile = filepath.Join(emptyDir, "empty") }, "has not written it yet, retry"},
		{"no namespace file", func(a *installcni.Account) {
			a.TokenFile = filepath.Join(t.TempDir(), "token")
			mustWrite(t, a.TokenFile, "t")
		},
			"reading the pod's namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ok
			tt.mod(&a)
			tokens, err := a.Tokens()
			got := tokens.Subject
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("Tokens() = %q, want %q in it", got, tt.want)
			}
		})
	}
}

func TestServerFromEnv(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if got, want := installcni.ServerFromEnv(), "https://[fd00::1]:443"; got != want {
		t.Errorf("ServerFromEnv() = %q, want %q", got, want)
	}
}

func loadKubeconfig(t *testing.T, path string) *rest.Config {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("client-go cannot load %s: %v", path, err)
	}
	return rc
}

func kubeconfigToken(t *testing.T, path string) string { return loadKubeconfig(t, path).BearerToken }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
