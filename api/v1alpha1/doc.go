// Package v1alpha1 holds calyx's custom resources: the pools pod addresses
// come from, and the per-node blocks they are handed out in.
//
// +kubebuilder:object:generate=true
// +groupName=calyx.dev
package v1alpha1
