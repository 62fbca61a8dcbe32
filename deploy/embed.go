// Package deploy carries the manifests calyx ships, so that the control
// plane of tests and of the lab installs exactly the CRDs a user applies,
// and the lab's nodes get exactly the conflist the DaemonSet installs.
package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
)

// CRDs holds the generated CustomResourceDefinitions (make generate).
//
//go:embed crds/*.yaml
var CRDs embed.FS

// Conflist is the CNI configuration the DaemonSet installs on every node.
//
//go:embed 10-calyx.conflist
var Conflist []byte

// Manifest is deploy/calyx.yaml, everything `kubectl apply` installs
// (make manifests).
//
//go:embed calyx.yaml
var Manifest []byte

// CalyxEntry is the calyx entry of Conflist as libcni hands it to the
// plugin (and calyx to calyx-ipam): the list's cniVersion and name folded
// into the first plugin's configuration.
func CalyxEntry() ([]byte, error) {
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(Conflist, &list); err != nil {
		return nil, fmt.Errorf("the shipped conflist: %w", err)
	}
	if len(list.Plugins) == 0 {
		return nil, fmt.Errorf("the shipped conflist has no plugins")
	}
	entry := list.Plugins[0]
	entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
	return json.Marshal(entry)
}
