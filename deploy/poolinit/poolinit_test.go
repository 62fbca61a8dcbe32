package poolinit

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/calyx-net/calyx/api/v1alpha1"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     v1alpha1.IPPoolSpec
		err      string
	}{
		{"pool", "apiVersion: calyx.dev/v1alpha1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, blockSize: 24, ipipMode: CrossSubnet}\n",
			v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/16", BlockSize: 24, IPIPMode: v1alpha1.IPIPModeCrossSubnet}, ""},
		{"misspelt field", "kind: IPPool\nmetadata: {name: p}\nspec: {cidrs: 10.0.0.0/16}\n", v1alpha1.IPPoolSpec{}, `unknown field "cidrs"`},
		{"other kind", "kind: ConfigMap\nmetadata: {name: p}\n", v1alpha1.IPPoolSpec{}, `want an IPPool with a name, got kind "ConfigMap"`},
		{"no name", "kind: IPPool\nspec: {cidr: 10.0.0.0/16}\n", v1alpha1.IPPoolSpec{}, `got kind "IPPool" name ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "fix the calyx-default-ippool ConfigMap") {
					t.Fatalf("error %v, want one with %q saying what to fix", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, p.Spec); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
		})
	}
}
