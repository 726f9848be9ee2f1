// Package bench measures trellis against baselines built in the same run, on
// the same machine, at the same time, so that a figure is read as a ratio
// rather than as an absolute number that depends on the machine and its load.
//
// Every benchmark builds its whole topology inside network namespaces whose
// names carry a per-run prefix ("trbench-" and six hex digits) and deletes
// them afterwards, also when it fails or its context is cancelled. Nothing is
// added to the root namespace; traffic flows only between the namespaces the
// run made.
//
// A run returns a Report: a list of Figures, each with its baseline, the
// ratio of the two and the goal it is held to. WriteTable prints it for
// people, WriteJSON for the combined report of `trellis bench`.
package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Figure is one measured number next to the baseline it is compared with.
type Figure struct {
	ID           string  `json:"id"`            // stable key, e.g. "overlay/tcp-1-vs-vxlan"
	Name         string  `json:"name"`          // what was measured, for people
	Value        float64 `json:"value"`         // trellis's figure, in Unit
	Unit         string  `json:"unit"`          // "Gbit/s", "ms"
	Baseline     float64 `json:"baseline"`      // the same figure without trellis, in Unit
	BaselineName string  `json:"baseline_name"` // what the baseline is
	Ratio        float64 `json:"ratio"`         // Value / Baseline
	Goal         string  `json:"goal"`          // the goal, for people; "" when informative
	Pass         *bool   `json:"pass"`          // whether Goal is met; nil when informative
}

// Report is the outcome of one benchmark run.
type Report struct {
	Bench     string     `json:"bench"`      // "overlay"
	Quick     bool       `json:"quick"`      // a --quick run: fewer, shorter samples
	Prefix    string     `json:"prefix"`     // the run's namespace name prefix
	Started   time.Time  `json:"started"`    // when the run began
	Seconds   float64    `json:"seconds"`    // how long it took
	CPUs      int        `json:"cpus"`       // runtime.NumCPU()
	LoadStart [3]float64 `json:"load_start"` // /proc/loadavg when it began
	LoadEnd   [3]float64 `json:"load_end"`   // /proc/loadavg when it ended
	Figures   []Figure   `json:"figures"`
	Notes     []string   `json:"notes,omitempty"` // how the figures were measured
	// Samples are the raw measurements behind the figures, in run order,
	// for charts: "tcp-1/trellis" (Gbit/s), "setup/trellis" (ms), ...
	Samples map[string][]float64 `json:"samples,omitempty"`
}

// goal is what a figure is held to: its value (or, with ratio, its ratio)
// at least or at most limit, with slack allowed for noise.
type goal struct {
	ratio  bool    // compare Ratio rather than Value
	atMost bool    // limit is an upper bound
	limit  float64 // the goal
	slack  float64 // fraction of limit tolerated as noise: pass up to limit*(1+slack)
}

func (g goal) String() string {
	op := "≥"
	if g.atMost {
		op = "≤"
	}
	s := ""
	if g.ratio {
		s = fmt.Sprintf("ratio %s %.2fx", op, g.limit)
	} else {
		s = fmt.Sprintf("%s %g", op, g.limit)
	}
	if g.slack > 0 {
		sign := "-"
		if g.atMost {
			sign = "+"
		}
		s += fmt.Sprintf(" (%s%.0f%% for noise)", sign, g.slack*100)
	}
	return s
}

// met reports whether f meets g.
func (g goal) met(f Figure) bool {
	v := f.Value
	if g.ratio {
		v = f.Ratio
	}
	if g.atMost {
		return v <= g.limit*(1+g.slack)
	}
	return v >= g.limit*(1-g.slack)
}

// newFigure makes a figure with its ratio and, when g is not nil, its goal
// and verdict. A value goal is shown with the figure's unit.
func newFigure(id, name, unit string, value, baseline float64, baselineName string, g *goal) Figure {
	f := Figure{
		ID: id, Name: name, Unit: unit,
		Value: value, Baseline: baseline, BaselineName: baselineName,
	}
	if baseline != 0 {
		f.Ratio = value / baseline
	}
	f.judge(g)
	return f
}

// newPairedFigure is newFigure for samples taken in rounds, xs[i] and
// base[i] in the same round: the values are the medians, and the ratio is
// the median of the rounds' ratios, which a machine whose speed drifts
// between rounds moves much less than it moves the ratio of the medians.
func newPairedFigure(id, name, unit string, xs, base []float64, baselineName string, g *goal) Figure {
	f := newFigure(id, name, unit, median(xs), median(base), baselineName, nil)
	var ratios []float64
	for i := range min(len(xs), len(base)) {
		if base[i] != 0 {
			ratios = append(ratios, xs[i]/base[i])
		}
	}
	if len(ratios) > 1 {
		f.Ratio = median(ratios)
		f.BaselineName += fmt.Sprintf("; ratio: median of %d rounds' ratios", len(ratios))
	}
	f.judge(g)
	return f
}

// judge sets the goal and the verdict of f.
func (f *Figure) judge(g *goal) {
	if g == nil {
		return
	}
	f.Goal = g.String()
	if !g.ratio {
		f.Goal += " " + f.Unit
	}
	pass := g.met(*f)
	f.Pass = &pass
}

// WriteTable prints the report as a table — figure, value, baseline,
// ratio, goal, verdict — followed by how many goals were met, the load and
// the notes.
func (r *Report) WriteTable(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tBASELINE\tRATIO\tGOAL\tVERDICT")
	met, goals := 0, 0
	for _, f := range r.Figures {
		verdict, g := "informative", "-"
		if f.Pass != nil {
			goals++
			g = f.Goal
			verdict = "FALLS SHORT"
			if *f.Pass {
				met++
				verdict = "pass"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s (%s)\t%.2fx\t%s\t%s\n", f.Name,
			formatValue(f.Value, f.Unit), formatValue(f.Baseline, f.Unit), f.BaselineName,
			f.Ratio, g, verdict)
	}
	tw.Flush()
	for line := range strings.Lines(buf.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
	kind := "full"
	if r.Quick {
		kind = "quick"
	}
	fmt.Fprintf(w, "\n%s: %d of %d goals met; %s run, %.0f s, %d CPUs, load average %.2f at start, %.2f at end\n",
		r.Bench, met, goals, kind, r.Seconds, r.CPUs, r.LoadStart[0], r.LoadEnd[0])
	for _, n := range r.Notes {
		_, err := fmt.Fprintf(w, "- %s\n", n)
		if err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON:
// {"bench", ..., "figures": [{"name","value","unit","baseline","ratio","goal","pass"}, ...]}.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// formatValue prints v in unit with three significant digits or two
// decimals, whichever is more.
func formatValue(v float64, unit string) string {
	prec := 2
	if a := math.Abs(v); a > 0 && a < 1 {
		prec = max(2, 2-int(math.Floor(math.Log10(a))))
	}
	return fmt.Sprintf("%.*f %s", prec, v, unit)
}

// percentile returns the p-th percentile (0 < p ≤ 100) of xs by the
// nearest-rank method: the smallest sample with at least p% of the samples
// at or below it. For 100 samples, p50 is the 50th smallest and p99 the
// 99th. It returns NaN for no samples.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 || p <= 0 || p > 100 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

// median returns the middle sample of xs, or the mean of the two middle
// ones for an even count; NaN for no samples.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// mean returns the arithmetic mean of xs; NaN for no samples.
func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// span is a range of adds, numbered from 1, both ends included.
type span struct{ first, last int }

func (s span) String() string { return fmt.Sprintf("adds %d-%d", s.first, s.last) }

// of returns the samples of xs (xs[0] is add 1) that s covers.
func (s span) of(xs []float64) []float64 { return xs[s.first-1 : s.last] }

// earlyLate returns the adds compared to tell whether setup cost grows with
// the number of containers: for 100 adds, adds 5-15 (after warm-up) and
// adds 90-100; for n adds the same fractions, rounded, each at least one add.
func earlyLate(n int) (early, late span) {
	at := func(frac float64) int { return min(max(int(math.Round(frac*float64(n))), 1), n) }
	return span{at(0.05), at(0.15)}, span{at(0.90), n}
}
