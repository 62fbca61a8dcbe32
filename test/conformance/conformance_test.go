// Package conformance runs the bounded part of Kubernetes' own network e2e
// tests (the granular pod checks) against the lab in `make test`, so that
// a regression shows in CI; `make conformance` runs the whole selection.
package conformance

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/calyx-net/calyx/lab"
	"github.com/calyx-net/calyx/lab/conformance"
	"github.com/calyx-net/calyx/lab/labtest"
)

func TestGranularPodChecks(t *testing.T) {
	bin, err := labtest.Binaries("calyx-conformance-bin-", labtest.Log(t))
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(bin)
	results, err := lab.Conformance(context.Background(), lab.ConformanceOptions{
		Lab:   lab.Options{Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin, WaitForSlot: labtest.SlotWait},
		Tests: conformance.Bounded, ReportDir: t.TempDir(), Out: labtest.Log(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(conformance.Bounded) {
		t.Fatalf("%d results for %d tests", len(results), len(conformance.Bounded))
	}
}
