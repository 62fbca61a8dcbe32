package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of every calyx resource.
const GroupName = "calyx.dev"

// SchemeGroupVersion is the group and version the generated clients use.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

var (
	// SchemeBuilder registers the calyx types with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the calyx types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Resource turns a resource name into a group-qualified one, as the
// generated listers need for their NotFound errors.
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&IPPool{}, &IPPoolList{},
		&IPAMBlock{}, &IPAMBlockList{},
		&IPAMHandle{}, &IPAMHandleList{},
		&IPAMAffinity{}, &IPAMAffinityList{},
	)
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}
