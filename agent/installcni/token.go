package installcni

// The plugins' credential is a token of their own ServiceAccount,
// calyx-cni-plugin, requested through the TokenRequest API and bound to
// no object. The calyx-node pod's projected token would be simpler, but
// it is bound to that pod: once the pod is deleted (a DaemonSet update, a
// drain, an uninstall) the API server refuses it, every CNI DEL on the
// node fails and pods stay Terminating until a new calyx-node pod writes
// the file again. An unbound token outlives the pod that asked for it;
// Calico does the same with calico-cni-plugin. calyx-node may create
// tokens for that one account only (deploy/parts/20-rbac.yaml).

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/golang-jwt/jwt/v5"
	authv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Defaults of the plugins' account and tokens.
const (
	PluginAccount = "calyx-cni-plugin"
	// DefaultTokenLifetime is what the agent asks for; it replaces the
	// token after a third of it, leaving 16 hours to get a new one
	// through an API server outage.
	DefaultTokenLifetime = 24 * time.Hour
	// MinTokenLifetime is the shortest token the API server issues.
	MinTokenLifetime = 10 * time.Minute
)

// Token is a service-account token and what says when to replace it.
type Token struct {
	Value string
	// Subject is the user the API server takes the token for:
	// system:serviceaccount:<namespace>:<name>.
	Subject           string
	IssuedAt, Expires time.Time
}

// RefreshAt is when t is to be replaced: a third into its lifetime. The
// zero time when its lifetime is unknown.
func (t Token) RefreshAt() time.Time {
	if t.IssuedAt.IsZero() || !t.Expires.After(t.IssuedAt) {
		return time.Time{}
	}
	return t.IssuedAt.Add(t.Expires.Sub(t.IssuedAt) / 3)
}

// ParseToken reads a service-account JWT's subject, iat and exp without
// checking its signature: only the API server can judge that; this only
// says whose token it is and when it runs out.
func ParseToken(value string) (Token, error) {
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(value, &c); err != nil {
		return Token{}, fmt.Errorf("not a service-account token: %w", err)
	}
	t := Token{Value: value, Subject: c.Subject}
	if c.IssuedAt != nil {
		t.IssuedAt = c.IssuedAt.Time
	}
	if c.ExpiresAt != nil {
		t.Expires = c.ExpiresAt.Time
	}
	return t, nil
}

// Subject is the user name of the ServiceAccount namespace/name.
func Subject(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// Tokens issues tokens of one ServiceAccount.
type Tokens struct {
	// Subject is the user the tokens authenticate as (see Subject).
	Subject string
	Request func(ctx context.Context) (Token, error)
}

// TokenRequester issues tokens for the ServiceAccount namespace/name
// through sa, valid for lifetime and bound to no object, so that they
// outlive the pod whose credentials asked for them.
func TokenRequester(sa corev1client.ServiceAccountsGetter, namespace, name string, lifetime time.Duration) Tokens {
	subject := Subject(namespace, name)
	return Tokens{Subject: subject, Request: func(ctx context.Context) (Token, error) {
		secs := int64(lifetime / time.Second)
		issued := time.Now()
		tr, err := sa.ServiceAccounts(namespace).CreateToken(ctx, name,
			&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
		var hint string
		switch {
		case err == nil:
			return Token{Value: tr.Status.Token, Subject: subject, IssuedAt: issued, Expires: tr.Status.ExpirationTimestamp.Time}, nil
		case apierrors.IsForbidden(err):
			hint = "calyx-node may create tokens for this account only through the Role calyx-cni-token in deploy/calyx.yaml: apply it, and keep --cni-account the account that Role names"
		case apierrors.IsNotFound(err):
			hint = "the ServiceAccount is missing: apply deploy/calyx.yaml"
		default:
			hint = "check that the API server is reachable from the node"
		}
		return Token{}, fmt.Errorf("requesting a token for ServiceAccount %s/%s: %w (%s)", namespace, name, err, hint)
	}}
}

// Account says which ServiceAccount's token the plugins get, for how long,
// and with which credentials it is requested: the pod's own.
type Account struct {
	// Server is the API server's URL; TokenFile and CAFile the pod's
	// projected service-account token and the cluster CA.
	Server, TokenFile, CAFile string
	// Namespace and Name of the plugins' ServiceAccount. An empty
	// Namespace is the pod's own, read from the namespace file next to
	// TokenFile.
	Namespace, Name string
	Lifetime        time.Duration
}

// Tokens checks what can be checked before the first request and returns
// the account's token issuer, with a client that rereads TokenFile as the
// kubelet rotates it.
func (a Account) Tokens() (Tokens, error) {
	if a.Server == "" {
		return Tokens{}, errNoServer
	}
	if a.Lifetime < MinTokenLifetime {
		return Tokens{}, fmt.Errorf("a token lifetime of %s is too short: the API server issues tokens for %s at least", a.Lifetime, MinTokenLifetime)
	}
	token, err := os.ReadFile(a.TokenFile)
	if err != nil {
		return Tokens{}, fmt.Errorf("reading the pod's service-account token: %w (is the pod's service account mounted? automountServiceAccountToken must not be false)", err)
	}
	if len(bytes.TrimSpace(token)) == 0 {
		return Tokens{}, fmt.Errorf("the service-account token %s is empty; the kubelet has not written it yet, retry", a.TokenFile)
	}
	ns := a.Namespace
	if ns == "" {
		file := filepath.Join(filepath.Dir(a.TokenFile), "namespace")
		b, err := os.ReadFile(file)
		if err != nil {
			return Tokens{}, fmt.Errorf("reading the pod's namespace: %w (set --cni-account-namespace)", err)
		}
		if ns = string(bytes.TrimSpace(b)); ns == "" {
			return Tokens{}, fmt.Errorf("the pod's namespace file %s is empty (set --cni-account-namespace)", file)
		}
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host:            a.Server,
		BearerTokenFile: a.TokenFile,
		TLSClientConfig: rest.TLSClientConfig{CAFile: a.CAFile},
		// An unreachable API server is an error to retry, not a hang.
		Timeout: 30 * time.Second,
	})
	if err != nil {
		return Tokens{}, fmt.Errorf("creating the API client for the token request: %w", err)
	}
	return TokenRequester(cs.CoreV1(), ns, a.Name, a.Lifetime), nil
}

// Held is what a kubeconfig of the plugins holds.
type Held struct {
	Server string
	Token  Token
}

// ReadKubeconfig reads back the server and token of the kubeconfig at path.
func ReadKubeconfig(path string) (Held, error) {
	cfg, err := clientcmd.LoadFromFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Held{}, fmt.Errorf("no kubeconfig at %s", path)
	}
	if err != nil {
		return Held{}, fmt.Errorf("unreadable kubeconfig %s: %w", path, err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil || cfg.AuthInfos[ctx.AuthInfo] == nil {
		return Held{}, fmt.Errorf("kubeconfig %s has no current context with a cluster and a user", path)
	}
	tok, err := ParseToken(cfg.AuthInfos[ctx.AuthInfo].Token)
	if err != nil {
		return Held{}, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return Held{Server: cfg.Clusters[ctx.Cluster].Server, Token: tok}, nil
}

// RefreshIn says how long the token held may still be used: 0 when a new
// one must be requested now, with why. held is what ReadKubeconfig read,
// or readErr why it could not; server and subject what the plugins need.
func RefreshIn(now time.Time, held Held, readErr error, server, subject string) (time.Duration, string) {
	switch {
	case readErr != nil:
		return 0, readErr.Error()
	case held.Server != server:
		return 0, fmt.Sprintf("the kubeconfig is for %s, not %s", held.Server, server)
	case held.Token.Subject != subject:
		return 0, fmt.Sprintf("the kubeconfig's token is %q's, not %s's", held.Token.Subject, subject)
	}
	at := held.Token.RefreshAt()
	switch {
	case at.IsZero():
		return 0, "the token's lifetime is unknown (no iat or exp)"
	case !now.Before(at):
		return 0, "the token is past a third of its lifetime"
	}
	return at.Sub(now), ""
}

// Refresher keeps a live token of the plugins' account in their
// kubeconfig, from the agent, which outlives install-cni.
type Refresher struct {
	Path, Server, CAFile string
	Tokens               Tokens
	Log                  *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Interval is how often Run checks the file (default 30s), so that a
	// deleted or overwritten kubeconfig is repaired soon and a suspended
	// node's overdue token is noticed on waking.
	Interval time.Duration
	// RetryAfter is Run's first wait after an error (default 1s),
	// doubled on each further one up to 2m.
	RetryAfter time.Duration
}

// Refresh checks the kubeconfig once, requests a new token when RefreshIn
// says so, and writes the file when anything changed (a new token, a new
// CA). why is "" when the token was kept.
func (r *Refresher) Refresh(ctx context.Context) (tok Token, why string, err error) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	held, readErr := ReadKubeconfig(r.Path)
	left, why := RefreshIn(now(), held, readErr, r.Server, r.Tokens.Subject)
	tok = held.Token
	if left == 0 {
		if tok, err = r.Tokens.Request(ctx); err != nil {
			return Token{}, why, fmt.Errorf("%s: %w", why, err)
		}
	}
	if _, err := WriteKubeconfig(r.Path, r.Server, r.CAFile, tok.Value); err != nil {
		return Token{}, why, err
	}
	return tok, why, nil
}

// Run refreshes until ctx ends, backing off after errors and logging once
// per streak of them.
func (r *Refresher) Run(ctx context.Context) {
	interval, retry, log := cmp.Or(r.Interval, 30*time.Second), cmp.Or(r.RetryAfter, time.Second), cmp.Or(r.Log, slog.Default())
	newBackoff := func() wait.Backoff {
		return wait.Backoff{Duration: retry, Factor: 2, Jitter: 0.1, Cap: 2 * time.Minute, Steps: math.MaxInt32}
	}
	backoff, failing := newBackoff(), false
	for {
		tok, why, err := r.Refresh(ctx)
		next := interval
		switch {
		case err != nil:
			if !failing {
				log.Error("cannot refresh the CNI plugins' token; retrying", "path", r.Path, "err", err)
				failing = true
			}
			next = backoff.Step()
		case failing:
			log.Info("CNI plugins' token refreshed again", "path", r.Path, "expires", tok.Expires)
			backoff, failing = newBackoff(), false
		case why != "":
			log.Info("CNI plugins' token replaced", "path", r.Path, "why", why, "expires", tok.Expires, "next", tok.RefreshAt())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
	}
}
