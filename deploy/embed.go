// Package deploy carries the manifests calyx ships, so that the control
// plane of tests and of the lab installs exactly the CRDs a user applies,
// and the lab's nodes get exactly the conflist the DaemonSet installs.
package deploy

import "embed"

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
