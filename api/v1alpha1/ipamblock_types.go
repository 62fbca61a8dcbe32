package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AllocationType says what an address is used for.
// +kubebuilder:validation:Enum=pod;tunnel
type AllocationType string

const (
	// AllocationPod is a pod's address.
	AllocationPod AllocationType = "pod"
	// AllocationTunnel is a node's tunl0 address.
	AllocationTunnel AllocationType = "tunnel"
)

// Allocation is one address of a block in use.
type Allocation struct {
	// Ordinal is the address's offset from the start of the block.
	// +kubebuilder:validation:Minimum=0
	Ordinal int `json:"ordinal"`

	// Handle names the owner: "<network>.<containerID>" for a pod,
	// "tunnel-<node>" for a tunnel address. Release goes by handle.
	// +kubebuilder:validation:MinLength=1
	Handle string `json:"handle"`

	// Type is what the address is for.
	Type AllocationType `json:"type"`

	// Node is the node the address is used on. It differs from the block's
	// node when the address was borrowed; the agent then routes it as a /32.
	// +optional
	Node string `json:"node,omitempty"`

	// Namespace of the pod, for pod addresses.
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// Pod is the pod's name, for pod addresses.
	// +optional
	Pod string `json:"pod,omitempty"`

	// ContainerID is the sandbox the address was allocated for.
	// +optional
	ContainerID string `json:"containerID,omitempty"`
}

// IPAMBlockSpec is a block of a pool, affine to one node.
type IPAMBlockSpec struct {
	// CIDR is the block's range; the object is named after it
	// (192.168.29.64/26 is 192-168-29-64-26).
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).ip().family() == 4",message="cidr must be an IPv4 CIDR such as 192.168.29.64/26"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self).masked() == cidr(self)",message="cidr must be a network address: its host bits must be zero"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable"
	CIDR string `json:"cidr"`

	// Node is the node the block is affine to: its addresses are routed there.
	// +optional
	Node string `json:"node,omitempty"`

	// Pool is the name of the IPPool the block was taken from.
	// +optional
	Pool string `json:"pool,omitempty"`

	// Allocations are the addresses in use, by ordinal.
	// +optional
	// +listType=atomic
	Allocations []Allocation `json:"allocations,omitempty"`
}

// IPAMBlockStatus counts the block's addresses. It is written together with
// the allocations, in the same compare-and-swap update, so it is never stale.
type IPAMBlockStatus struct {
	// Used is the number of allocated addresses.
	Used int `json:"used"`
	// Free is the number of addresses left.
	Free int `json:"free"`
}

// IPAMBlock is a block of pod addresses claimed by a node.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipamblock
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="NODE",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="USED",type=integer,JSONPath=`.status.used`
// +kubebuilder:printcolumn:name="FREE",type=integer,JSONPath=`.status.free`
// +kubebuilder:printcolumn:name="AGE",type=date,JSONPath=`.metadata.creationTimestamp`
type IPAMBlock struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPAMBlockSpec `json:"spec"`
	// +optional
	Status IPAMBlockStatus `json:"status,omitempty"`
}

// IPAMBlockList is a list of IPAMBlocks.
//
// +kubebuilder:object:root=true
type IPAMBlockList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPAMBlock `json:"items"`
}
