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
