package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPAMHandleSpec points from a handle to the addresses it holds, so that
// releasing by handle reads one object instead of listing every block.
type IPAMHandleSpec struct {
	// Handle is the owner's handle as it appears in the block's allocations.
	// +kubebuilder:validation:MinLength=1
	Handle string `json:"handle"`

	// Block is the name of the IPAMBlock that holds the addresses.
	// +kubebuilder:validation:MinLength=1
	Block string `json:"block"`

	// Ordinals are the handle's addresses in that block.
	// +optional
	// +listType=set
	Ordinals []int `json:"ordinals,omitempty"`
}

// IPAMHandle is the index entry of one allocation owner.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:printcolumn:name="HANDLE",type=string,JSONPath=`.spec.handle`
// +kubebuilder:printcolumn:name="BLOCK",type=string,JSONPath=`.spec.block`
// +kubebuilder:printcolumn:name="AGE",type=date,JSONPath=`.metadata.creationTimestamp`
type IPAMHandle struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPAMHandleSpec `json:"spec"`
}

// IPAMHandleList is a list of IPAMHandles.
//
// +kubebuilder:object:root=true
type IPAMHandleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPAMHandle `json:"items"`
}
