// Package bench measures calyx against a reference in the same run on the
// same machine: CNI latency, a burst of pods, IPAM under contention, route
// convergence, agent scale and the datapath. Each part runs several times
// and is quoted as the median with min–max; the whole prints one markdown
// table, led by a line that says what machine it ran on.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Options say what to run and where the pieces are.
type Options struct {
	// Parts to run, in this order; empty means all.
	Parts []string
	// Runs is how many times each part runs; scale runs at most 2, the
	// datapath, whose figures swing the most, two more.
	Runs int
	// BinDir holds the built binaries (calyx, calyx-ipam, calyx-agent, …).
	BinDir string
	// RefCNIDir holds the reference plugins ptp and host-local.
	RefCNIDir string
	// Profile adds a datapath run outside the medians that samples the
	// 4-stream TCP and UDP tests with perf, for the notes' top symbols.
	Profile bool
	// Progress receives a line per step.
	Progress io.Writer
}

// Part is one benchmark: it returns rows for the table.
type Part struct {
	Name string
	// NeedsLab parts run on the shared lab, brought up once.
	NeedsLab bool
	Run      func(ctx context.Context, e *Env) ([]Row, error)
}

// AllParts in the order they run.
var AllParts = []Part{
	{Name: "cni", NeedsLab: true, Run: runCNI},
	{Name: "podstart", NeedsLab: true, Run: runPodStart},
	{Name: "burst", NeedsLab: true, Run: runBurst},
	{Name: "converge", NeedsLab: true, Run: runConverge},
	{Name: "datapath", NeedsLab: true, Run: runDatapath},
	{Name: "ipam", Run: runIPAM},
	{Name: "scale", Run: runScale},
}

// PartNames lists the parts, for usage messages.
func PartNames() []string {
	var n []string
	for _, p := range AllParts {
		n = append(n, p.Name)
	}
	return n
}

// Env is what parts share: options, a scratch directory, the lab.
type Env struct {
	Opts Options
	// Dir is a scratch directory removed at the end.
	Dir string
	Lab *Lab
	// Notes are lines for below the table.
	Notes []string
}

// Logf prints a progress line.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(e.Opts.Progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// Note adds a line below the table.
func (e *Env) Note(format string, args ...any) {
	e.Notes = append(e.Notes, fmt.Sprintf(format, args...))
}

// Result is the outcome of a whole run.
type Result struct {
	Machine string
	Rows    []Row
	Notes   []string
	Errors  []error
}

// Run runs the selected parts. A part that fails is reported and the
// others still run.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Runs < 1 {
		opts.Runs = 3
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	var abs error
	if opts.BinDir, abs = filepath.Abs(opts.BinDir); abs != nil {
		return nil, abs
	}
	parts, err := selectParts(opts.Parts)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the benchmarks create network namespaces: run as root (sudo)")
	}
	dir, err := os.MkdirTemp("", "calyx-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	e := &Env{Opts: opts, Dir: dir}
	res := &Result{Machine: Machine()}
	defer func() {
		if e.Lab != nil {
			e.Logf("lab: tearing down")
			if err := e.Lab.Down(); err != nil {
				res.Errors = append(res.Errors, fmt.Errorf("tearing the lab down: %w", err))
			}
		}
	}()
	for _, p := range parts {
		if p.NeedsLab && e.Lab == nil {
			e.Logf("lab: bringing up a 3-node lab (learn-k8s-1..3)")
			if e.Lab, err = upLab(ctx, e); err != nil {
				return nil, fmt.Errorf("bringing up the lab: %w", err)
			}
		}
		begin := time.Now()
		e.Logf("%s: starting", p.Name)
		rows, err := p.Run(ctx, e)
		if err != nil {
			e.Logf("%s: FAILED after %s: %v", p.Name, time.Since(begin).Round(time.Second), err)
			res.Errors = append(res.Errors, fmt.Errorf("%s: %w", p.Name, err))
			rows = append(rows, Row{Part: p.Name, Metric: "FAILED: " + oneLine(err.Error())})
		} else {
			e.Logf("%s: done in %s", p.Name, time.Since(begin).Round(time.Second))
		}
		res.Rows = append(res.Rows, rows...)
		if ctx.Err() != nil {
			break
		}
	}
	res.Notes = e.Notes
	return res, nil
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func selectParts(names []string) ([]Part, error) {
	if len(names) == 0 {
		return AllParts, nil
	}
	var out []Part
	for _, n := range names {
		found := false
		for _, p := range AllParts {
			if p.Name == strings.TrimSpace(n) {
				out = append(out, p)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown part %q: choose among %s", n, strings.Join(PartNames(), ","))
		}
	}
	return out, nil
}

// Machine is the line that says where the figures come from.
func Machine() string {
	kernel := "?"
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		kernel = strings.TrimSpace(string(out))
	}
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	commit := "?"
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
		if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
			commit += " (with uncommitted changes)"
		}
	}
	return fmt.Sprintf("Machine: %d cores, %s, kernel %s, %s, commit %s",
		runtime.NumCPU(), model, kernel, time.Now().UTC().Format("2006-01-02 15:04 UTC"), commit)
}

// Markdown renders the machine line, the table and the notes.
func (r *Result) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", r.Machine)
	b.WriteString("| part | metric | calyx | reference | ratio | goal | met? |\n")
	b.WriteString("|---|---|---:|---|---:|---|---|\n")
	for _, row := range r.Rows {
		b.WriteString(row.markdown())
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}
