// Package plugin is the calyx-ipam CNI plugin: it turns CNI calls into
// allocator calls and allocator failures into CNI error codes.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Plugin-specific CNI error codes (the spec leaves 100 and up to plugins).
const (
	// ErrNoFreeAddress: the pools have no address left for this node.
	ErrNoFreeAddress uint = 100
	// ErrCheckFailed: CHECK found the allocation missing or different.
	ErrCheckFailed uint = 101
	// ErrAddressTaken: the address the pod's calyx.dev/ipAddrs asks for
	// is held by another pod or node.
	ErrAddressTaken uint = 102
)

// Defaults for the ipam section of the netconf.
const (
	DefaultNodenameFile = "/var/lib/calyx/nodename"
	// DefaultNodeLabelsFile holds the node's labels as the agent last saw
	// them (a JSON object), for the pools' nodeSelectors: the plugins'
	// account may not read nodes.
	DefaultNodeLabelsFile = "/var/lib/calyx/nodelabels"
	DefaultLockFile       = "/var/run/calyx/ipam.lock"
	DefaultTimeout        = 10 * time.Second
	DefaultLockTimeout    = 90 * time.Second
)

// Conf is the ipam section of the netconf.
type Conf struct {
	Type             string   `json:"type"`
	Kubeconfig       string   `json:"kubeconfig"`
	Nodename         string   `json:"nodename,omitempty"`
	NodenameFile     string   `json:"nodename_file,omitempty"`
	NodeLabelsFile   string   `json:"node_labels_file,omitempty"`
	Pools            []string `json:"pools,omitempty"`
	Timeout          string   `json:"timeout,omitempty"`
	LockTimeout      string   `json:"lock_timeout,omitempty"`
	LockFile         string   `json:"lock_file,omitempty"`
	StrictAffinity   bool     `json:"strict_affinity,omitempty"`
	MaxBlocksPerNode int      `json:"max_blocks_per_node,omitempty"`

	timeout, lockTimeout time.Duration
}

// NetConf is the whole netconf as the IPAM plugin sees it.
type NetConf struct {
	types.NetConf
	IPAM             Conf                 `json:"ipam"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// parseConf decodes and validates the netconf; its errors are CNI errors.
func parseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode the network configuration", err.Error())
	}
	c := &conf.IPAM
	bad := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid calyx-ipam configuration", fmt.Sprintf(format, a...))
	}
	if conf.Name == "" {
		return nil, bad("the network has no name: set \"name\" (e.g. k8s-pod-network); handles are <name>.<containerID>")
	}
	if c.Kubeconfig == "" {
		return nil, bad("ipam.kubeconfig is missing: point it at the kubeconfig the calyx agent writes (e.g. /etc/cni/net.d/calyx-kubeconfig)")
	}
	for _, d := range []struct {
		name, value string
		def         time.Duration
		out         *time.Duration
	}{
		{"timeout", c.Timeout, DefaultTimeout, &c.timeout},
		{"lock_timeout", c.LockTimeout, DefaultLockTimeout, &c.lockTimeout},
	} {
		*d.out = d.def
		if d.value == "" {
			continue
		}
		v, err := time.ParseDuration(d.value)
		if err != nil || v <= 0 || v > 10*time.Minute {
			return nil, bad("ipam.%s %q must be a duration between 0 and 10m, such as \"10s\"", d.name, d.value)
		}
		*d.out = v
	}
	if c.MaxBlocksPerNode < 0 || c.MaxBlocksPerNode > 1<<16 {
		return nil, bad("ipam.max_blocks_per_node %d is out of range 0..65536 (0 means the default 20)", c.MaxBlocksPerNode)
	}
	for _, p := range c.Pools {
		if p == "" || len(p) > 253 {
			return nil, bad("ipam.pools has an invalid entry %q: name an IPPool or give its CIDR", p)
		}
	}
	if c.NodenameFile == "" {
		c.NodenameFile = DefaultNodenameFile
	}
	if c.LockFile == "" {
		c.LockFile = DefaultLockFile
	}
	if c.NodeLabelsFile == "" {
		c.NodeLabelsFile = DefaultNodeLabelsFile
	}
	return conf, nil
}

// nodeLabels reads the node's labels from the file the agent writes; it
// is asked only when a pool has a nodeSelector.
func (c *Conf) nodeLabels(context.Context, string) (map[string]string, error) {
	const msg = "the node's labels are not known yet: the IP pools' nodeSelectors need them"
	b, err := os.ReadFile(c.NodeLabelsFile)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, msg, fmt.Sprintf("%v; the calyx agent writes it when it starts: is calyx-node running on this node?", err))
	}
	var l map[string]string
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, msg, fmt.Sprintf("%s holds no JSON object of labels: %v; the calyx agent rewrites it", c.NodeLabelsFile, err))
	}
	return l, nil
}

// nodeName is the node this plugin runs on: ipam.nodename, else the file
// the agent writes.
func (c *Conf) nodeName() (string, error) {
	if c.Nodename != "" {
		return c.Nodename, nil
	}
	b, err := os.ReadFile(c.NodenameFile)
	if err != nil {
		return "", types.NewError(types.ErrTryAgainLater, "the node name is not known yet",
			fmt.Sprintf("reading %s: %v; the calyx agent writes it when it starts: is calyx-node running on this node?", c.NodenameFile, err))
	}
	name := strings.TrimSpace(string(b))
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", types.NewError(types.ErrInvalidNetworkConfig, "invalid node name",
			fmt.Sprintf("%s holds %q: %s", c.NodenameFile, name, strings.Join(errs, "; ")))
	}
	return name, nil
}

// podArgs are the Kubernetes fields of CNI_ARGS.
type podArgs struct {
	Namespace, Name string
	// UID is the sandbox's pod's (K8S_POD_UID: containerd and CRI-O pass
	// it), "" if the runtime did not say.
	UID string
}

// parseArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"), ignoring other keys as runtimes pass many.
func parseArgs(s string) (podArgs, error) {
	var a podArgs
	if len(s) > 64<<10 {
		return a, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS is too long", fmt.Sprintf("%d bytes", len(s)))
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return a, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", fmt.Sprintf("%q is not KEY=VALUE", kv))
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			if errs := validation.IsDNS1123Label(v); len(errs) > 0 {
				return a, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid K8S_POD_NAMESPACE in CNI_ARGS", fmt.Sprintf("%q: %s", v, strings.Join(errs, "; ")))
			}
			a.Namespace = v
		case "K8S_POD_NAME":
			if errs := validation.IsDNS1123Subdomain(v); len(errs) > 0 {
				return a, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid K8S_POD_NAME in CNI_ARGS", fmt.Sprintf("%q: %s", v, strings.Join(errs, "; ")))
			}
			a.Name = v
		case "K8S_POD_UID":
			if len(v) > 128 {
				return a, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid K8S_POD_UID in CNI_ARGS", fmt.Sprintf("%d characters; a UID has 36", len(v)))
			}
			a.UID = v
		}
	}
	return a, nil
}

// asCNIError passes CNI errors through and wraps anything else.
func asCNIError(err error, code uint, msg string) error {
	var e *types.Error
	if errors.As(err, &e) {
		return e
	}
	return types.NewError(code, msg, err.Error())
}
