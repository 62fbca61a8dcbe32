package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// summary waits for perf and returns the top symbols, in percent of the
// samples kept.
func (p *perfRun) summary() string {
	if p.err != nil {
		return "perf did not start (" + p.err.Error() + "): apt-get install linux-perf"
	}
	if err := <-p.done; err != nil {
		return "perf record failed: " + err.Error()
	}
	defer os.Remove(p.data)
	args := []string{"report", "-i", p.data, "--stdio", "--no-children", "--percentage", "relative", "--sort", "sym"}
	if len(p.comms) > 0 {
		args = append(args, "--comms", strings.Join(p.comms, ","))
	}
	out, err := sh("perf", args...)
	if err != nil {
		return "perf report failed: " + err.Error()
	}
	var top []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") {
			continue
		}
		top = append(top, fmt.Sprintf("%s %s %s", f[0], f[1], strings.Join(f[2:], " ")))
		if len(top) == 8 {
			break
		}
	}
	return "`" + strings.Join(top, "`, `") + "` ([k] kernel, [.] user)"
}
