package conformance

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Options say what to run and against what.
type Options struct {
	// Suite is e2e-network.test, Kubectl the kubectl the suite shells out
	// to, Kubeconfig an admin's of the cluster.
	Suite, Kubectl, Kubeconfig string
	// Tests are the full names to run (Selection, Bounded, …).
	Tests []string
	// ReportDir receives the JUnit report and the suite's whole output.
	ReportDir string
	// Progress receives a line per finished test.
	Progress io.Writer
}

// Result is one test's outcome.
type Result struct {
	Name    string
	Outcome string // passed, failed, not run
	Seconds float64
	// Failure is the suite's message for a failed test.
	Failure string
}

// Run runs the tests with the suite against the cluster, one after the
// other, and returns their outcomes in opts.Tests' order. An error means
// the suite could not run; failed tests are results.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	if err := os.MkdirAll(opts.ReportDir, 0o755); err != nil {
		return nil, err
	}
	args := []string{
		"--kubeconfig=" + opts.Kubeconfig,
		"--kubectl-path=" + opts.Kubectl,
		// No cloud: the null provider; "local" would want SSH.
		"--provider=skeleton",
		// Else the suite runs cluster/log-dump/log-dump.sh, which it has not.
		"--disable-log-dump",
		"--report-dir=" + opts.ReportDir,
		"--ginkgo.focus=" + Focus(opts.Tests),
		"--ginkgo.v", "--ginkgo.no-color",
		"--ginkgo.timeout=2h",
	}
	log, err := os.Create(filepath.Join(opts.ReportDir, "e2e.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, opts.Suite, args...)
	cmd.Dir = opts.ReportDir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", opts.Suite, err)
	}
	follow(io.TeeReader(stdout, log), opts.Progress, len(opts.Tests))
	runErr := cmd.Wait() // non-zero when a test failed: the report says which
	results, err := readReport(opts.ReportDir, opts.Tests)
	if err != nil {
		return nil, fmt.Errorf("%w (the suite exited: %v; its output is %s)", err, runErr, log.Name())
	}
	return results, nil
}

// specDone is ginkgo's line after a spec, with its state and time: "•
// [12.345 seconds]", "• [FAILED] [12.345 seconds]".
var specDone = regexp.MustCompile(`^•( \[[A-Z]+\])? \[([0-9.]+) seconds\]`)

// labels is the list ginkgo appends to a spec's name in its output.
var labels = regexp.MustCompile(` \[[^\]]*, [^\]]*\]$`)

// follow prints one line per finished spec: the name ginkgo prints when
// the spec starts (-v), and its state and time when it ends.
func follow(r io.Reader, progress io.Writer, total int) {
	if progress == nil {
		progress = io.Discard
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n, current := 0, ""
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "[sig-network]") {
			current = labels.ReplaceAllString(strings.Replace(line, " [It]", "", 1), "")
			continue
		}
		m := specDone.FindStringSubmatch(line)
		if m == nil || current == "" {
			continue
		}
		state := strings.ToLower(strings.Trim(m[1], " []"))
		if state == "" {
			state = "passed"
		}
		n++
		fmt.Fprintf(progress, "  [%d/%d] %s: %s in %s s\n", n, total, current, state, m[2])
		current = ""
	}
}

// junit is the part of the suite's JUnit report that says how each spec
// went.
type junit struct {
	Suites []struct {
		Cases []struct {
			Name    string  `xml:"name,attr"`
			Status  string  `xml:"status,attr"`
			Time    float64 `xml:"time,attr"`
			Skipped *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Message string `xml:"message,attr"`
			} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// readReport finds each test of names in the suite's JUnit report.
func readReport(dir string, names []string) ([]Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, "junit_01.xml"))
	if err != nil {
		return nil, fmt.Errorf("reading the suite's JUnit report: %w", err)
	}
	var j junit
	if err := xml.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("parsing the suite's JUnit report: %w", err)
	}
	var out []Result
	for _, name := range names {
		r := Result{Name: name, Outcome: "not run"}
		for _, s := range j.Suites {
			for _, c := range s.Cases {
				if !strings.HasSuffix(strings.TrimSpace(c.Name), name) {
					continue
				}
				r.Seconds = c.Time
				switch {
				case c.Failure != nil:
					// ginkgo leaves the message empty and writes the
					// failure as the element's text.
					r.Outcome, r.Failure = "failed", c.Failure.Message
					if r.Failure == "" {
						r.Failure = strings.TrimSpace(c.Failure.Text)
					}
				case c.Error != nil:
					r.Outcome, r.Failure = "failed", c.Error.Message
				case c.Skipped != nil || c.Status == "skipped":
					r.Outcome = "skipped"
					if c.Skipped != nil {
						r.Failure = c.Skipped.Message
					}
				case c.Status == "passed":
					r.Outcome = "passed"
				default:
					r.Outcome = c.Status
				}
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// Table is the results as a markdown table, with a summary line.
func Table(results []Result, took time.Duration) string {
	var b strings.Builder
	b.WriteString("| test | result | seconds |\n|---|---|---:|\n")
	count := map[string]int{}
	for _, r := range results {
		count[r.Outcome]++
		fmt.Fprintf(&b, "| %s | %s | %.1f |\n", strings.ReplaceAll(r.Name, "|", `\|`), r.Outcome, r.Seconds)
	}
	fmt.Fprintf(&b, "\n%d passed, %d failed", count["passed"], count["failed"])
	if n := count["skipped"] + count["not run"]; n > 0 {
		fmt.Fprintf(&b, ", %d not run", n)
	}
	fmt.Fprintf(&b, " (%s)\n", took.Round(time.Second))
	return b.String()
}

// Failed are the results that did not pass.
func Failed(results []Result) []Result {
	var out []Result
	for _, r := range results {
		if r.Outcome != "passed" {
			out = append(out, r)
		}
	}
	return out
}
