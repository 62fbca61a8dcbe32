// Package installcni puts calyx's CNI plugins, conflist and the plugins'
// kubeconfig on a node, from the DaemonSet's install-cni init container,
// and keeps that kubeconfig's token fresh from the agent (token.go says
// whose token it is, and why).
//
// Every file is replaced by writing a temporary file in the same
// directory and renaming it over the old one: the kubelet may run a
// plugin at any moment, and rename swaps the directory entry at once
// while a running plugin keeps its old inode, so no one ever executes or
// reads a half-written file. A file whose content is already right is
// left alone, so re-running is a no-op.
package installcni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/calyx-net/calyx/deploy"
)

// Plugins are the binaries the conflist needs: calyx and its IPAM, the
// chained portmap, and loopback, which the runtime runs for every pod.
var Plugins = []string{"calyx", "calyx-ipam", "portmap", "loopback"}

// Defaults for a pod of the DaemonSet.
const (
	ConflistName   = "10-calyx.conflist"
	KubeconfigName = "calyx-kubeconfig"
	TokenFile      = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	CAFile         = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

var errNoServer = errors.New("no API server address: set --server, or KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")

// Config says where everything comes from and goes to.
type Config struct {
	// SrcDir holds the Plugins in the image.
	SrcDir string
	// BinDir and ConfDir are the host's CNI directories as this process
	// sees them (mounted, e.g. /host/opt/cni/bin).
	BinDir, ConfDir string
	// HostConfDir is ConfDir as the host sees it (/etc/cni/net.d): the
	// plugins, run by the kubelet on the host, read the kubeconfig there.
	HostConfDir string
	// Server is the API server's URL and CAFile its CA, both written
	// into the plugins' kubeconfig.
	Server, CAFile string
	// Tokens issues the plugins' token.
	Tokens Tokens
}

// ServerFromEnv is the API server's URL from the environment the kubelet
// gives every pod; "" when it is not there.
func ServerFromEnv() string {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}

// Install copies the plugins, writes the conflist and the kubeconfig, and
// returns the paths it changed (none when everything was current). The
// kubeconfig always gets a newly requested token: one that a previous
// calyx-node pod requested may belong to a ServiceAccount deleted and
// re-created since (an uninstall and install), which the API server
// refuses although it has not expired.
func Install(ctx context.Context, cfg Config) ([]string, error) {
	if cfg.Server == "" {
		return nil, errNoServer
	}
	var changed []string
	note := func(path string) func(bool, error) error {
		return func(ch bool, err error) error {
			if ch {
				changed = append(changed, path)
			}
			return err
		}
	}
	for _, name := range Plugins {
		src := filepath.Join(cfg.SrcDir, name)
		b, err := os.ReadFile(src)
		if err != nil {
			return changed, fmt.Errorf("reading plugin %s: %w (is --src-dir the image's plugin directory?)", src, err)
		}
		dst := filepath.Join(cfg.BinDir, name)
		if err := note(dst)(WriteFile(dst, b, 0o755)); err != nil {
			return changed, err
		}
	}
	tok, err := cfg.Tokens.Request(ctx)
	if err != nil {
		return changed, err
	}
	kubeconfigPath := filepath.Join(cfg.ConfDir, KubeconfigName)
	if err := note(kubeconfigPath)(WriteKubeconfig(kubeconfigPath, cfg.Server, cfg.CAFile, tok.Value)); err != nil {
		return changed, err
	}
	conflist, err := Conflist(filepath.Join(cfg.HostConfDir, KubeconfigName))
	if err != nil {
		return changed, err
	}
	// The conflist last: the runtime takes the node as network-ready as
	// soon as it appears, so the plugins and their credentials must be
	// there before.
	conflistPath := filepath.Join(cfg.ConfDir, ConflistName)
	return changed, note(conflistPath)(WriteFile(conflistPath, conflist, 0o644))
}

// Conflist is the shipped conflist (deploy/10-calyx.conflist) with the
// IPAM's kubeconfig at kubeconfig.
func Conflist(kubeconfig string) ([]byte, error) {
	var c map[string]any
	if err := json.Unmarshal(deploy.Conflist, &c); err != nil {
		return nil, fmt.Errorf("parsing the shipped conflist: %w (rebuild calyx-agent)", err)
	}
	plugins, _ := c["plugins"].([]any)
	found := false
	for _, p := range plugins {
		if p, ok := p.(map[string]any); ok && p["type"] == "calyx" {
			if ipam, ok := p["ipam"].(map[string]any); ok {
				ipam["kubeconfig"] = kubeconfig
				found = true
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("the shipped conflist has no calyx plugin with an ipam section (rebuild calyx-agent)")
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Kubeconfig is a kubeconfig for server with the token and CA inline:
// the plugins run on the host, where the pod's projected files are not
// at a stable path.
func Kubeconfig(server string, ca []byte, token string) []byte {
	type m = map[string]any
	cfg := m{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []m{{"name": "local", "cluster": m{
			"server": server, "certificate-authority-data": ca,
		}}},
		"users":           []m{{"name": PluginAccount, "user": m{"token": token}}},
		"contexts":        []m{{"name": "calyx", "context": m{"cluster": "local", "user": PluginAccount}}},
		"current-context": "calyx",
	}
	// JSON is YAML, and encoding/json base64-encodes the CA as the
	// kubeconfig's *-data fields want.
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return append(b, '\n')
}

// WriteKubeconfig writes the kubeconfig at path with token and the CA
// in caFile; changed is false when the file already had that content.
func WriteKubeconfig(path, server, caFile, token string) (changed bool, err error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return false, fmt.Errorf("reading the cluster CA: %w (is the pod's service account mounted?)", err)
	}
	// The token is a credential: only root on the host reads it.
	return WriteFile(path, Kubeconfig(server, ca, token), 0o600)
}

// WriteFile replaces path with data and mode through a temporary file in
// the same directory and a rename, unless path already has both.
func WriteFile(path string, data []byte, mode fs.FileMode) (changed bool, err error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == mode {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			return false, nil
		}
	}
	dir, name := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("writing %s: %w (is the host directory mounted read-write?)", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, a no-op
	if _, err := f.Write(data); err != nil {
		f.Close()
		return false, fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return false, fmt.Errorf("chmod %s: %w", tmp, err)
	}
	// On disk before the rename, so a crash leaves the old file or the
	// whole new one.
	if err := f.Sync(); err != nil {
		f.Close()
		return false, fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("replacing %s: %w", path, err)
	}
	return true, nil
}
