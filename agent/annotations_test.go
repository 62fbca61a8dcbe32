package agent

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The caches keep what an allocation reads, and nothing of the rest of a
// pod's metadata (kubectl's last-applied copy can be most of it).
func TestTrimMeta(t *testing.T) {
	in := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: "web-0", Namespace: "blue", UID: "u-1", ResourceVersion: "7",
		Labels: map[string]string{"app": "web"},
		Annotations: map[string]string{
			"calyx.dev/ipAddrs": `["10.1.2.3"]`,
			"kubectl.kubernetes.io/last-applied-configuration": "{…}",
		},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}}
	got, err := trimMeta(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
		Name: "web-0", Namespace: "blue", UID: "u-1", ResourceVersion: "7",
		Annotations: map[string]string{"calyx.dev/ipAddrs": `["10.1.2.3"]`},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("trimMeta (-want +got):\n%s", diff)
	}
}
