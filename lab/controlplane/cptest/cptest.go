// Package cptest starts a real control plane for a test and stops it, with
// every file it made, when the test ends.
package cptest

import (
	"context"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab/controlplane"
)

// Start starts etcd and kube-apiserver for t. It fails the test, never skips
// it, when the control plane cannot run.
func Start(t testing.TB) *controlplane.ControlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	begin := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(func() {
		begin := time.Now()
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
		t.Logf("control plane stopped in %s", time.Since(begin).Round(time.Millisecond))
	})
	t.Logf("control plane %s started in %s (%s)", cp.Version, time.Since(begin).Round(time.Millisecond), cp.URL)
	return cp
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
