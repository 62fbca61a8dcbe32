package statedir

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "calyx")
	if err := Write(dir, "learn-k8s-3", 1480); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, "learn-k8s-3", 1430); err != nil {
		t.Fatal(err)
	}
	name, err := Nodename(dir)
	if err != nil {
		t.Fatal(err)
	}
	mtu, err := MTU(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{"learn-k8s-3", 1430}, []any{name, mtu}); diff != "" {
		t.Error(diff)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "mtu"))
	if string(b) != "1430\n" {
		t.Errorf("mtu file = %q", b)
	}
	if _, err := MTU(t.TempDir()); err == nil {
		t.Error("MTU of an empty directory succeeded")
	}
}

func TestLabels(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "calyx")
	for _, tc := range []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{"zone": "a", "kubernetes.io/hostname": "learn-k8s-2"}, `{"kubernetes.io/hostname":"learn-k8s-2","zone":"a"}` + "\n"},
		{nil, "{}\n"},
	} {
		if err := WriteLabels(dir, tc.labels); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, LabelsFile))
		if err != nil || string(b) != tc.want {
			t.Errorf("labels file = %q, %v; want %q", b, err, tc.want)
		}
	}
}
