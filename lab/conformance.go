package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/calyx-net/calyx/lab/conformance"
	"github.com/calyx-net/calyx/lab/kubebin"
)

// ConformanceOptions configure a run of Kubernetes' network e2e tests.
type ConformanceOptions struct {
	Lab Options
	// Tests are the tests' full names; default conformance.Selection.
	Tests []string
	// ReportDir keeps the suite's JUnit report and output; default
	// $TMPDIR/calyx-conformance.
	ReportDir string
	Out       io.Writer
}

// Conformance brings a lab up with the e2e tests' images, builds the
// suite (once, cached), runs the tests against the lab, prints their table
// and takes the lab down. The error names the tests that failed.
func Conformance(ctx context.Context, opts ConformanceOptions) ([]conformance.Result, error) {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	if len(opts.Tests) == 0 {
		opts.Tests = conformance.Selection
	}
	if opts.ReportDir == "" {
		opts.ReportDir = filepath.Join(os.TempDir(), "calyx-conformance")
	}
	opts.Lab.Progress, opts.Lab.Conformance = opts.Out, true
	suite, err := kubebin.Ensure(ctx, "e2e-network.test", opts.Out)
	if err != nil {
		return nil, err
	}
	kubectl, err := kubectlBinary(ctx)
	if err != nil {
		return nil, err
	}
	begin := time.Now()
	l, err := Up(ctx, opts.Lab)
	if err != nil {
		return nil, err
	}
	defer l.Down()
	fmt.Fprintf(opts.Out, "• Kubernetes' network e2e tests, %d of them, one after the other (output: %s) …\n", len(opts.Tests), opts.ReportDir)
	results, err := conformance.Run(ctx, conformance.Options{
		Suite: suite, Kubectl: kubectl, Kubeconfig: l.Kubeconfig(),
		Tests: opts.Tests, ReportDir: opts.ReportDir, Progress: opts.Out,
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Out, "\n%s", conformance.Table(results, time.Since(begin)))
	if len(opts.Tests) == len(conformance.Selection) {
		fmt.Fprintln(opts.Out, "\nleft out of the selection:")
		for _, s := range conformance.Skipped {
			fmt.Fprintf(opts.Out, "- %s: %s\n", s.Name, s.Reason)
		}
	}
	if failed := conformance.Failed(results); len(failed) > 0 {
		var errs []error
		for _, f := range failed {
			errs = append(errs, fmt.Errorf("%s: %s %s", f.Name, f.Outcome, f.Failure))
		}
		return results, fmt.Errorf("%d of %d tests did not pass (the suite's output: %s):\n%w", len(failed), len(results), filepath.Join(opts.ReportDir, "e2e.log"), errors.Join(errs...))
	}
	return results, nil
}
