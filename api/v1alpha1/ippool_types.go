package v1alpha1

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPIPMode says when traffic between pods of a pool is IP-in-IP encapsulated.
// +kubebuilder:validation:Enum=Always;CrossSubnet;Never
type IPIPMode string

const (
	// IPIPModeAlways encapsulates all traffic to pods on other nodes.
	IPIPModeAlways IPIPMode = "Always"
	// IPIPModeCrossSubnet encapsulates only traffic to nodes on another
	// underlay subnet; peers on the same subnet are routed directly.
	IPIPModeCrossSubnet IPIPMode = "CrossSubnet"
	// IPIPModeNever never encapsulates: the underlay must route pod addresses.
	IPIPModeNever IPIPMode = "Never"
)

// IPPoolUse is what addresses of a pool may be used for, as Calico's
// IPPool allowedUses names it.
// +kubebuilder:validation:Enum=Workload;Tunnel
type IPPoolUse string

const (
	// IPPoolUseWorkload: pods' addresses.
	IPPoolUseWorkload IPPoolUse = "Workload"
	// IPPoolUseTunnel: nodes' tunl0 addresses.
	IPPoolUseTunnel IPPoolUse = "Tunnel"
)

// IPPoolAssignmentMode says whether a pool gives addresses to anyone, or
// only to those who ask for it, as Calico's IPPool assignmentMode names it.
// +kubebuilder:validation:Enum=Automatic;Manual
type IPPoolAssignmentMode string

const (
	// AssignmentAutomatic: any allocation the pool selects may use it.
	AssignmentAutomatic IPPoolAssignmentMode = "Automatic"
	// AssignmentManual: only allocations that name the pool (the
	// calyx.dev/ipv4pools annotation, the conflist's ipam.pools) or one of
	// its addresses (calyx.dev/ipAddrs) use it.
	AssignmentManual IPPoolAssignmentMode = "Manual"
)

// IPPoolSpec is a range of pod addresses and how traffic between them travels.
type IPPoolSpec struct {
	// CIDR is the IPv4 range pod addresses are taken from, e.g. 192.168.0.0/16.
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).ip().family() == 4",message="cidr must be an IPv4 CIDR such as 192.168.0.0/16"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self).masked() == cidr(self)",message="cidr must be a network address: its host bits must be zero (192.168.0.0/16, not 192.168.1.0/16)"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cidr is immutable: create a new pool instead"
	CIDR string `json:"cidr"`

	// BlockSize is the prefix length of the blocks nodes claim from the pool.
	// +kubebuilder:validation:Minimum=20
	// +kubebuilder:validation:Maximum=32
	// +kubebuilder:default=26
	// +optional
	BlockSize int `json:"blockSize,omitempty"`

	// IPIPMode says when traffic between pods on different nodes is encapsulated.
	// +kubebuilder:default=Always
	// +optional
	IPIPMode IPIPMode `json:"ipipMode,omitempty"`

	// NATOutgoing masquerades pod traffic to destinations outside every pool
	// behind the node's address.
	// +optional
	NATOutgoing bool `json:"natOutgoing,omitempty"`

	// Disabled stops new allocations from the pool; existing ones stay, and
	// the pool's blocks are deleted as they empty: how pods move to another
	// pool without a restart of the cluster.
	// +optional
	Disabled bool `json:"disabled,omitempty"`

	// NodeSelector selects the nodes that take blocks from the pool; empty
	// or absent selects every node. A node keeps the blocks it has when its
	// labels change, and takes new ones only from pools that select it.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// AllowedUses says what the pool's addresses are for: Workload (pods),
	// Tunnel (nodes' tunl0 addresses), or both (the default).
	// +kubebuilder:default={Workload,Tunnel}
	// +kubebuilder:validation:MinItems=1
	// +listType=set
	// +optional
	AllowedUses []IPPoolUse `json:"allowedUses,omitempty"`

	// AssignmentMode Manual keeps the pool for the pods and namespaces that
	// ask for it: a pod that asks for no pool never gets one of its
	// addresses, nor does a node's tunl0. Automatic (the default) lets every
	// allocation the pool selects use it.
	// +kubebuilder:default=Automatic
	// +optional
	AssignmentMode IPPoolAssignmentMode `json:"assignmentMode,omitempty"`
}

// Manual says whether the pool gives addresses only to those who ask for it.
func (s *IPPoolSpec) Manual() bool { return s.AssignmentMode == AssignmentManual }

// Allows says whether the pool's addresses may be used for use; a pool
// that names no uses (one read without the API server's defaults) allows
// both.
func (s *IPPoolSpec) Allows(use IPPoolUse) bool {
	return len(s.AllowedUses) == 0 || slices.Contains(s.AllowedUses, use)
}

// IPPool is a cluster-wide range of pod addresses.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ippool
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="BLOCKSIZE",type=integer,JSONPath=`.spec.blockSize`
// +kubebuilder:printcolumn:name="IPIP",type=string,JSONPath=`.spec.ipipMode`
// +kubebuilder:printcolumn:name="NAT",type=boolean,JSONPath=`.spec.natOutgoing`
// +kubebuilder:printcolumn:name="DISABLED",type=boolean,JSONPath=`.spec.disabled`
// +kubebuilder:printcolumn:name="USES",type=string,JSONPath=`.spec.allowedUses`
// +kubebuilder:printcolumn:name="ASSIGNMENT",type=string,JSONPath=`.spec.assignmentMode`
// +kubebuilder:printcolumn:name="AGE",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.spec.cidr) || !has(self.spec.blockSize) || self.spec.blockSize >= cidr(self.spec.cidr).prefixLength()",message="blockSize must not be shorter than the pool's prefix length"
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPPoolSpec `json:"spec"`
}

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}
