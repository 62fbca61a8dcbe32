// Package deploy carries the manifests calyx ships, so that the control
// plane of tests and of the lab installs exactly the CRDs a user applies.
package deploy

import "embed"

// CRDs holds the generated CustomResourceDefinitions (make generate).
//
//go:embed crds/*.yaml
var CRDs embed.FS
