package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPAMAffinitySpec lists the blocks a node has claimed.
type IPAMAffinitySpec struct {
	// Node is the node; the object has the same name.
	// +kubebuilder:validation:MinLength=1
	Node string `json:"node"`

	// Blocks are the names of the IPAMBlocks affine to the node.
	// +optional
	// +listType=set
	Blocks []string `json:"blocks,omitempty"`
}

// IPAMAffinity indexes a node's blocks. Every pod start reads it with one
// Get, where a List of blocks by label would wait for the API server's watch
// cache to catch up with the latest write (about 100 ms after any write).
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:printcolumn:name="NODE",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="BLOCKS",type=string,JSONPath=`.spec.blocks`
// +kubebuilder:printcolumn:name="AGE",type=date,JSONPath=`.metadata.creationTimestamp`
type IPAMAffinity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPAMAffinitySpec `json:"spec"`
}

// IPAMAffinityList is a list of IPAMAffinities.
//
// +kubebuilder:object:root=true
type IPAMAffinityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPAMAffinity `json:"items"`
}
