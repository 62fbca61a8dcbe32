package bench

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/calyx-net/calyx/lab/spawn"
)

// perfRun is `perf record` over one measured stretch.
type perfRun struct {
	cmd   *exec.Cmd
	data  string
	comms []string
	done  <-chan error
	err   error

	read bool               // times has run
	syms map[string]float64 // what times read
}

// startPerf samples for seconds with perf record's target (e.g. -a, or
// -p PID); without perf, the summary says so instead.
func startPerf(dir, name string, seconds int, target, comms []string) *perfRun {
	p := &perfRun{data: filepath.Join(dir, "perf-"+name+".data"), comms: comms}
	args := append([]string{"record", "-q", "-o", p.data}, target...)
	args = append(args, "--", "sleep", strconv.Itoa(seconds))
	p.cmd = exec.Command("perf", args...)
	p.done, p.err = spawn.Start(p.cmd, "")
	return p
}

// times waits for perf and returns the CPU time sampled in each symbol of
// p's comms, in nanoseconds (perf samples the software clock here: a
// sample's period is the time it stands for). "[k] " marks the kernel's
// symbols, "[.] " user space's.
func (p *perfRun) times() (map[string]float64, error) {
	if p.read {
		return p.syms, p.err
	}
	p.read = true
	if p.err != nil {
		p.err = fmt.Errorf("perf did not start (%w): apt-get install linux-perf", p.err)
		return nil, p.err
	}
	if err := <-p.done; err != nil {
		p.err = fmt.Errorf("perf record failed: %w", err)
		return nil, p.err
	}
	defer os.Remove(p.data)
	args := []string{"report", "-i", p.data, "--stdio", "--no-children", "--sort", "sym", "-F", "period,sym", "-g", "none"}
	if len(p.comms) > 0 {
		args = append(args, "--comms", strings.Join(p.comms, ","))
	}
	out, err := sh("perf", args...)
	if err != nil {
		p.err = fmt.Errorf("perf report failed: %w", err)
		return nil, p.err
	}
	p.syms = map[string]float64{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		ns, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		p.syms[strings.Join(f[1:], " ")] += ns
	}
	return p.syms, nil
}

// summary returns the top symbols, in percent of the time sampled.
func (p *perfRun) summary() string {
	syms, err := p.times()
	if err != nil {
		return err.Error()
	}
	var total float64
	for _, ns := range syms {
		total += ns
	}
	var top []string
	for _, s := range topSymbols(syms, 8) {
		top = append(top, fmt.Sprintf("%.2f%% %s", 100*syms[s]/total, s))
	}
	return "`" + strings.Join(top, "`, `") + "` ([k] kernel, [.] user)"
}

// topSymbols are the n symbols with the most time, most first.
func topSymbols(syms map[string]float64, n int) []string {
	names := make([]string, 0, len(syms))
	for s := range syms {
		names = append(names, s)
	}
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(syms[b], syms[a]), strings.Compare(a, b))
	})
	return names[:min(n, len(names))]
}
