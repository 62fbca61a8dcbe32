package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Summary is one figure measured over several runs: the median, with the
// spread, since these machines are noisy.
type Summary struct {
	Values []float64
}

// Of summarises values.
func Of(v ...float64) Summary { return Summary{Values: v} }

func (s Summary) ok() bool { return len(s.Values) > 0 }

// Median of the runs.
func (s Summary) Median() float64 {
	if !s.ok() {
		return math.NaN()
	}
	v := slices.Sorted(slices.Values(s.Values))
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (s Summary) Min() float64 { return slices.Min(s.Values) }
func (s Summary) Max() float64 { return slices.Max(s.Values) }

// format prints "median (min–max) unit", or the one value of a single run.
func (s Summary) format(unit string) string {
	if !s.ok() {
		return "—"
	}
	u := ""
	if unit != "" {
		u = " " + unit
	}
	if len(s.Values) == 1 {
		return num(s.Median()) + u
	}
	return fmt.Sprintf("%s (%s–%s)%s", num(s.Median()), num(s.Min()), num(s.Max()), u)
}

// num prints three significant figures or so, enough for noisy numbers.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "?"
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Goal checks the calyx figure (and the ratio to the reference) against
// the goal and says by how much it is missed.
type Goal struct {
	Text string
	// Check returns whether the goal is met and, if not, by how much.
	Check func(calyx, ratio float64) (bool, string)
}

// AtMost: the calyx figure must not exceed limit.
func AtMost(limit float64, unit string) *Goal {
	return &Goal{Text: "≤ " + num(limit) + " " + unit, Check: func(c, _ float64) (bool, string) {
		if c <= limit {
			return true, ""
		}
		return false, fmt.Sprintf("%s× the goal (+%s %s)", num(c/limit), num(c-limit), unit)
	}}
}

// RatioAtMost: calyx over the reference must not exceed limit.
func RatioAtMost(limit float64) *Goal {
	return &Goal{Text: "ratio ≤ " + num(limit) + "×", Check: func(_, r float64) (bool, string) {
		if r <= limit {
			return true, ""
		}
		return false, fmt.Sprintf("%s× over", num(r/limit))
	}}
}

// RatioAtLeast: calyx over the reference must reach limit.
func RatioAtLeast(limit float64, text string) *Goal {
	return &Goal{Text: text, Check: func(_, r float64) (bool, string) {
		if r >= limit {
			return true, ""
		}
		return false, fmt.Sprintf("%.2g%% short", 100*(limit-r)/limit)
	}}
}

// Row is one line of the table.
type Row struct {
	Part, Metric, Unit string
	Calyx              Summary
	// RefName names the reference; empty means there is none.
	RefName string
	Ref     Summary
	Goal    *Goal
}

func (r Row) ratio() float64 {
	if !r.Calyx.ok() || !r.Ref.ok() || r.Ref.Median() == 0 {
		return math.NaN()
	}
	return r.Calyx.Median() / r.Ref.Median()
}

func (r Row) markdown() string {
	ref, ratio := "none", "—"
	if r.RefName != "" {
		ref = r.RefName + ": " + r.Ref.format(r.Unit)
		if !math.IsNaN(r.ratio()) {
			ratio = num(r.ratio()) + "×"
		}
	}
	calyx := r.Calyx.format(r.Unit)
	if strings.HasPrefix(r.Metric, "FAILED") {
		calyx = "—"
	}
	goal, met := "—", "—"
	if r.Goal != nil && r.Calyx.ok() {
		goal = r.Goal.Text
		ok, by := r.Goal.Check(r.Calyx.Median(), r.ratio())
		met = "yes"
		if !ok {
			met = "**no**: " + by
		}
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |\n", r.Part, r.Metric, calyx, ref, ratio, goal, met)
}

// percentile is the p-th percentile of ds, nearest rank.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := (p*len(s) + 99) / 100
	return s[max(rank-1, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
