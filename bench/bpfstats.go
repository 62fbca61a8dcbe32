package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// calyxPrograms are the tc programs of the eBPF tunl0 (agent/tunnel/bpf).
var calyxPrograms = []string{"calyx_encap", "calyx_encap_fast", "calyx_decap"}

// progTime is what the kernel accounted to one program name, summed over
// every loaded program of that name (one per lab node).
type progTime struct {
	runs    uint64
	runtime time.Duration
}

// bpfStats counts the time the kernel spends in calyx's own tc programs
// over one measured stretch. Without a hardware PMU (this VM has none:
// perf stat says "cycles <not supported>") `bpftool prog profile` cannot
// run, but the kernel's run-time accounting can: BPF_ENABLE_STATS switches
// it on for as long as the returned descriptor is open, so nothing of the
// host's configuration (the kernel.bpf_stats_enabled sysctl) changes.
type bpfStats struct {
	closer io.Closer
	before map[string]progTime
	err    error
}

func startBPFStats() *bpfStats {
	s := &bpfStats{}
	if s.closer, s.err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); s.err != nil {
		return s
	}
	s.before, s.err = readProgTimes(calyxPrograms)
	return s
}

// stop returns what each program cost over the stretch. Accounting adds
// two clock reads to every run, so it runs only where perf already
// perturbs the figures.
func (s *bpfStats) stop(packets float64, wall time.Duration) string {
	if s.closer != nil {
		defer s.closer.Close()
	}
	if s.err != nil {
		return "BPF run-time stats unavailable: " + s.err.Error()
	}
	after, err := readProgTimes(calyxPrograms)
	if err != nil {
		return "BPF run-time stats unavailable: " + err.Error()
	}
	var parts []string
	var total time.Duration
	for _, name := range calyxPrograms {
		runs := after[name].runs - s.before[name].runs
		rt := after[name].runtime - s.before[name].runtime
		total += rt
		if runs == 0 {
			parts = append(parts, name+": not run")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d runs, %.0f ns a run", name, runs, float64(rt.Nanoseconds())/float64(runs)))
	}
	out := strings.Join(parts, "; ")
	if wall > 0 {
		out += fmt.Sprintf("; together %.1f%% of one core over the test", 100*total.Seconds()/wall.Seconds())
	}
	if packets > 0 {
		out += fmt.Sprintf(", %.0f ns per packet received", float64(total.Nanoseconds())/packets)
	}
	return out
}

// readProgTimes sums the kernel's run counts and times of the loaded
// programs with the given names.
func readProgTimes(names []string) (map[string]progTime, error) {
	out := map[string]progTime{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing BPF programs: %w", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue // unloaded meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("opening BPF program %d: %w", id, err)
		}
		info, err := p.Info()
		if err == nil && slices.Contains(names, info.Name) {
			var st *ebpf.ProgramStats
			if st, err = p.Stats(); err == nil {
				t := out[info.Name]
				t.runs += st.RunCount
				t.runtime += st.Runtime
				out[info.Name] = t
			}
		}
		p.Close()
		if err != nil {
			return nil, fmt.Errorf("reading BPF program %d: %w", id, err)
		}
	}
}
