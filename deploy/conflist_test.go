package deploy_test

import (
	"encoding/json"
	"testing"

	"github.com/calyx-net/calyx/deploy"
)

// The shipped conflist's cniVersion is part of calyx's contract with the
// runtimes, not a detail to bump: containerd before 2.0 (1.6 in Debian 12,
// 1.7 in most distributions) refuses a list that says 1.1.0 ("unsupported
// CNI result version"), and a runtime deletes a pod with the result it
// cached at ADD converted to the conflist's version of the day, so a pod
// added under one version may not be deletable once an upgrade writes
// another ("failed to convert cached result to config version"). 1.0.0 is
// the newest version every runtime users run accepts (containerd 1.6, 1.7,
// 2.x and CRI-O), and it keeps CHECK. The lab runs containerd 1.6 and 2.x
// nodes with this very file (test/e2e).
func TestConflistVersionIsOneEveryRuntimeAccepts(t *testing.T) {
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(deploy.Conflist, &list); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" {
		t.Errorf("10-calyx.conflist says cniVersion %q; it must stay 1.0.0: containerd 1.6/1.7 reject 1.1.0, and changing it breaks DEL of pods added before an upgrade", list.CNIVersion)
	}
	for _, p := range list.Plugins {
		if v, ok := p["cniVersion"]; ok {
			t.Errorf("plugin %v sets its own cniVersion %v: the list's version is the one runtimes convert cached results to", p["type"], v)
		}
	}
}
