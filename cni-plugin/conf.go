package cniplugin

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Defaults for the netconf fields a conflist may leave out. The lab runs
// several nodes on one machine, so each of them can be overridden.
const (
	DefaultStateDir   = "/var/lib/calyx"
	DefaultVethPrefix = "cali"
	// DefaultMTU is a 1500-byte underlay minus the 20-byte outer IPv4
	// header of IP-in-IP, used until the agent has written its own figure.
	DefaultMTU = 1480

	// StateNodename and StateMTU are the files the node agent writes in
	// state_dir once it is ready.
	StateNodename = "nodename"
	StateMTU      = "mtu"

	minMTU = 68 // the smallest MTU IPv4 allows (RFC 791)
	maxMTU = 65535
	// hashLen characters of the SHA-1 keep "cali" + hash within the
	// kernel's 15-byte interface names, as Calico does.
	hashLen   = 11
	ifNameMax = 15
)

// NetConf is the calyx entry of the conflist.
type NetConf struct {
	types.PluginConf
	// MTU of both veth ends; 0 takes the agent's figure from state_dir.
	MTU int `json:"mtu"`
	// StateDir is where the node agent writes its ready state.
	StateDir string `json:"state_dir"`
	// VethPrefix starts every host-side veth name.
	VethPrefix string `json:"veth_prefix"`
}

// LoadNetConf parses and validates the plugin's stdin. Errors carry the
// spec's codes: 6 for JSON that does not decode, 7 for values that do but
// make no sense.
func LoadNetConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{StateDir: DefaultStateDir, VethPrefix: DefaultVethPrefix}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			"the calyx network configuration does not decode: fix the calyx entry of the conflist", err.Error())
	}
	if conf.StateDir == "" {
		conf.StateDir = DefaultStateDir
	}
	if conf.VethPrefix == "" {
		conf.VethPrefix = DefaultVethPrefix
	}
	if err := conf.validate(); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure,
				"the prevResult handed over by the runtime does not decode: check the plugin before calyx in the conflist", err.Error())
		}
	}
	return conf, nil
}

func (c *NetConf) validate() error {
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > maxMTU) {
		return fmt.Errorf("mtu %d is out of range: set it between %d and %d, or to 0 to use the agent's figure", c.MTU, minMTU, maxMTU)
	}
	if n := len(c.VethPrefix) + hashLen; n > ifNameMax {
		return fmt.Errorf("veth_prefix %q is too long: with %d hash characters the name would be %d bytes, the kernel allows %d; use at most %d characters",
			c.VethPrefix, hashLen, n, ifNameMax, ifNameMax-hashLen)
	}
	// The kernel's rule (dev_valid_name), plus control characters: a NUL
	// would cut the name short in netlink, after the address is taken.
	if strings.ContainsFunc(c.VethPrefix, func(r rune) bool {
		return r == '/' || r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
	}) {
		return fmt.Errorf("veth_prefix %q holds a character interface names cannot have ('/', ':', space or a control character): pick another prefix", c.VethPrefix)
	}
	if c.IPAM.Type == "" {
		return errors.New(`the calyx entry has no "ipam" with a "type": add "ipam": {"type": "calyx-ipam", ...}`)
	}
	return nil
}

// ResolveMTU picks the pods' MTU: the netconf's when set, else the one the
// agent wrote into state_dir, else DefaultMTU.
func (c *NetConf) ResolveMTU() (int, error) {
	if c.MTU > 0 {
		return c.MTU, nil
	}
	path := filepath.Join(c.StateDir, StateMTU)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultMTU, nil
	}
	if err != nil {
		return 0, types.NewError(types.ErrIOFailure,
			fmt.Sprintf("reading the agent's MTU file %s: check its permissions or set \"mtu\" in the conflist", path), err.Error())
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || mtu < minMTU || mtu > maxMTU {
		return 0, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("the agent's MTU file %s holds %q, not an MTU between %d and %d: restart calyx-agent to rewrite it, or set \"mtu\" in the conflist",
				path, strings.TrimSpace(string(b)), minMTU, maxMTU), "")
	}
	return mtu, nil
}

// PodArgs are the Kubernetes identifiers a runtime passes in CNI_ARGS.
type PodArgs struct {
	Namespace string
	Name      string
}

// ParsePodArgs reads K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS.
// Unknown keys are ignored whether or not IgnoreUnknown is set: runtimes
// pass keys meant for other plugins of the chain.
func ParsePodArgs(cniArgs string) PodArgs {
	var p PodArgs
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		// Keys as they are, as calyx-ipam reads them: " K8S_POD_NAME" is
		// another key there, and both must name the same pod.
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = strings.TrimSpace(v)
		case "K8S_POD_NAME":
			p.Name = strings.TrimSpace(v)
		}
	}
	return p
}

// HostVethName is the host side's name: prefix + the first 11 hex digits
// of sha1("<namespace>.<pod>") for a Kubernetes pod, so that it outlives
// sandbox restarts and matches what Calico users know; prefix + the
// container ID's first 11 characters outside Kubernetes.
func HostVethName(prefix string, pod PodArgs, containerID string) string {
	if pod.Namespace != "" && pod.Name != "" {
		sum := sha1.Sum([]byte(pod.Namespace + "." + pod.Name))
		return prefix + hex.EncodeToString(sum[:])[:hashLen]
	}
	id := containerID
	if len(id) > hashLen {
		id = id[:hashLen]
	}
	return prefix + id
}
