package cnimain

import (
	"testing"

	"github.com/containernetworking/cni/pkg/version"
)

func TestErrorVersion(t *testing.T) {
	versions := version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0")
	tests := []struct {
		netconf, want string
	}{
		{`{"cniVersion":"0.3.1"}`, "0.3.1"},
		{`{"cniVersion":"1.0.0","name":"n"}`, "1.0.0"},
		{`{"cniVersion":"0.2.0"}`, "1.1.0"},  // not spoken: the newest
		{`{"cniVersion":"99.0.0"}`, "1.1.0"}, // from the future
		{`{"cniVersion":1.1}`, "1.1.0"},      // not a string
		{`{"cniVersion":"1.0.0"`, "1.1.0"},   // truncated
		{``, "1.1.0"},                        // skel did not read stdin
	}
	for _, tt := range tests {
		if got := ErrorVersion([]byte(tt.netconf), versions); got != tt.want {
			t.Errorf("ErrorVersion(%q) = %q, want %q", tt.netconf, got, tt.want)
		}
	}
}
