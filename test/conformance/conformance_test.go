// Package conformance runs the bounded part of Kubernetes' own network e2e
// tests (the granular pod checks) against the lab in `make test`, so that
// a regression shows in CI; `make conformance` runs the whole selection.
package conformance

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/conformance"
)

func TestGranularPodChecks(t *testing.T) {
	bin := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if err := lab.BuildBinaries(context.Background(), root, bin, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	waitNoLab(t, 5*time.Minute)
	results, err := lab.Conformance(context.Background(), lab.ConformanceOptions{
		Lab:   lab.Options{Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin},
		Tests: conformance.Bounded, ReportDir: t.TempDir(), Out: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(conformance.Bounded) {
		t.Fatalf("%d results for %d tests", len(results), len(conformance.Bounded))
	}
}

// waitNoLab waits while another lab (another package's) is up: the lab's
// namespace names are fixed, one lab per machine.
func waitNoLab(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat("/var/run/netns/" + lab.ControlPlaneNode); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a lab is up and did not go within %s: run `calyx-lab down`", timeout)
		}
		time.Sleep(3 * time.Second)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
