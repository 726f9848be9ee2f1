package bench

import (
	"cmp"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Combined is several reports of one `trellis bench` run seen as one: the
// fields of a Report over all of them — their figures and notes in run
// order, the earliest start, the summed time, the load at the first start
// and at the last end — and, under "reports", each report whole with its
// samples. Its JSON is a Report's with that one key more, so a reader of a
// single report reads a combined one.
type Combined struct {
	Report
	Reports []*Report `json:"reports"`
}

// Combine returns the reports as one. Its Bench is their names joined
// with "+"; the caller may rename it ("all").
func Combine(reports []*Report) *Combined {
	c := &Combined{Reports: reports}
	var names []string
	for i, r := range reports {
		names = append(names, r.Bench)
		c.Quick = c.Quick || r.Quick
		if c.Started.IsZero() || r.Started.Before(c.Started) {
			c.Started = r.Started
		}
		c.Seconds += r.Seconds
		c.CPUs = max(c.CPUs, r.CPUs)
		if i == 0 {
			c.LoadStart = r.LoadStart
		}
		c.LoadEnd = r.LoadEnd
		c.Figures = append(c.Figures, r.Figures...)
		c.Notes = append(c.Notes, r.Notes...)
	}
	c.Bench = strings.Join(names, "+")
	return c
}

// WriteJSON writes the combined report as indented JSON: a Report's keys
// over all the reports, and "reports" with each of them.
func (c *Combined) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

//go:embed report_template.html
var reportHTML string

// reportTemplate is parsed on first use, not at init: every start of the
// binary — each CNI ADD runs it as the plugin — would pay for it
// (0.67 ms and 1,258 allocations, GODEBUG=inittrace=1).
var reportTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"f1":   func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) },
		"load": func(l [3]float64) string { return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2]) },
		"when": func(t time.Time) string { return t.Format("2006-01-02 15:04:05 MST") },
		"secs": func(s float64) string { return time.Duration(s * float64(time.Second)).Round(time.Second).String() },
	}).Parse(reportHTML))
})

// WriteHTML writes the reports as one self-contained HTML page, with no
// script and nothing fetched: a header with the run's time, machine and
// load; the table of every figure with its baseline, ratio, goal and
// verdict; then, per report, its charts (inline SVG, drawn here from
// Samples and Figures, see charts) and its notes. All text is escaped.
func WriteHTML(w io.Writer, reports []*Report) error {
	c := Combine(reports)
	page := htmlPage{
		Title:    "trellis bench: " + strings.Join(benchNames(reports), ", "),
		Combined: c,
		Kind:     runKind(c.Quick),
	}
	for _, r := range reports {
		sec := htmlSection{Report: r, Kind: runKind(r.Quick), Charts: charts(r)}
		for _, f := range r.Figures {
			row := htmlRow{
				Figure:   f,
				Value:    formatValue(f.Value, f.Unit),
				Baseline: formatValue(f.Baseline, f.Unit),
				Ratio:    "–",
				Verdict:  "informative",
				Class:    "info",
				Mark:     "·",
			}
			if f.Ratio != 0 && !math.IsNaN(f.Ratio) && !math.IsInf(f.Ratio, 0) {
				row.Ratio = fmt.Sprintf("%.2f×", f.Ratio)
			}
			if f.Pass != nil {
				sec.Goals++
				page.Goals++
				row.Verdict, row.Class, row.Mark = "falls short", "fail", "✘"
				if *f.Pass {
					sec.Met++
					page.Met++
					row.Verdict, row.Class, row.Mark = "pass", "pass", "✔"
				}
			}
			sec.Rows = append(sec.Rows, row)
		}
		page.Sections = append(page.Sections, sec)
	}
	return reportTemplate().Execute(w, page)
}

// htmlPage is what report_template.html renders.
type htmlPage struct {
	Title      string
	Combined   *Combined
	Kind       string // "quick" or "full"
	Met, Goals int
	Sections   []htmlSection
}

// htmlSection is one report in the page.
type htmlSection struct {
	Report     *Report
	Kind       string
	Met, Goals int
	Rows       []htmlRow
	Charts     []chart
}

// htmlRow is one figure of the table, formatted.
type htmlRow struct {
	Figure                 Figure
	Value, Baseline, Ratio string
	Verdict, Class, Mark   string // "pass", "pass", "✔"
}

func runKind(quick bool) string {
	if quick {
		return "quick"
	}
	return "full"
}

func benchNames(reports []*Report) []string {
	var names []string
	for _, r := range reports {
		names = append(names, r.Bench)
	}
	return names
}

// The kinds of chart.
const (
	chartBars         = "bars"         // median per series, with its range and every sample
	chartPercentiles  = "percentiles"  // p50, p90, p99 per series
	chartDistribution = "distribution" // percentiles, and the CDF: the share of samples at or below each value
)

// chart is one figure of the page: a title, what it shows, and one or
// two drawings side by side.
type chart struct {
	Title   string // the sample group: "tcp-1"
	Caption string // what is drawn: "Gbit/s; median of up to 3 samples (bar), ..."
	Kind    string
	SVGs    []svg
}

// series is one line of samples of a chart: "trellis", "bare-vxlan".
type series struct {
	name string
	xs   []float64 // finite samples only
}

// sampleUnits are the units of the sample groups that back no figure of
// their own, so that charts can tell a time from a rate. Groups that back
// a figure take its unit (see groupOf).
var sampleUnits = map[string]string{
	"apply-full":              "ms", // policy/apply-10k
	"api-create":              "ms",
	"dns-map":                 "ms", // dns/route-map-p99
	"dns-unmap":               "ms", // dns/route-unmap-p99
	"egress-unbind":           "ms",
	"api-bind-security-group": "ms",
}

// timeUnits are the units of durations: their samples are drawn as
// distributions.
var timeUnits = []string{"ns", "µs", "us", "ms", "s"}

// charts derives the charts of r, in the order of the figures they back.
//
// Samples keys are "GROUP/SERIES" ("tcp-1/trellis", "tcp-1/bare-vxlan"):
// one chart per group, with the series starting with "trellis" first and
// the others (the baselines) after them by name. A group's unit is that of
// the first figure whose ID, after its "bench/" part or with "/" read as
// "-", is the group or starts with the group and "-" ("overlay/tcp-1-vs-
// vxlan" for "tcp-1"), else sampleUnits's; the chart sits where that figure
// is in the table. Then:
//
//   - a group in a unit of time (ms, µs, ...; with no unit, a group named
//     "...propagation..." or "...latency...") with at least 5 samples in a
//     series is a distribution: its percentiles p50, p90, p99 as bars per
//     series, and its CDF (a step curve per series, on a log scale when the
//     values span more than a factor of 20) — latencies, setup times and
//     propagation delays;
//   - any other group (throughput, rates, a few timings) is drawn as bars:
//     each series's median, its range from least to most, and every sample
//     as a dot.
//
// Figures whose IDs end in "-p50", "-p99" and the like and that no sample
// group backs (the run kept only the percentiles, as the dns bench does for
// latency) are drawn as percentile bars of the figure against its baseline
// when there are at least two percentiles of the same stem.
func charts(r *Report) []chart {
	type placed struct {
		at int // index of the figure it sits at; len(Figures)+n when none
		c  chart
	}
	var out []placed
	groups := map[string][]series{}
	for key, xs := range r.Samples {
		g, s, ok := strings.Cut(key, "/")
		if !ok {
			g, s = key, "trellis"
		}
		var finite []float64
		for _, x := range xs {
			if !math.IsNaN(x) && !math.IsInf(x, 0) {
				finite = append(finite, x)
			}
		}
		if len(finite) > 0 {
			groups[g] = append(groups[g], series{s, finite})
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	backed := map[int]bool{} // figures a sample group backs
	for n, g := range names {
		ss := groups[g]
		slices.SortFunc(ss, func(a, b series) int {
			ta, tb := strings.HasPrefix(a.name, "trellis"), strings.HasPrefix(b.name, "trellis")
			if ta != tb {
				if ta {
					return -1
				}
				return 1
			}
			return strings.Compare(a.name, b.name)
		})
		at, unit := len(r.Figures)+n, sampleUnits[g]
		for i, f := range r.Figures {
			if groupOf(f.ID, g) {
				if at >= len(r.Figures) {
					at, unit = i, f.Unit
				}
				backed[i] = true
			}
		}
		most := 0
		for _, s := range ss {
			most = max(most, len(s.xs))
		}
		isTime := slices.Contains(timeUnits, unit) ||
			unit == "" && (strings.Contains(g, "propagation") || strings.Contains(g, "latency"))
		if isTime && most >= 5 {
			pc := percentileChart(g, unit, ss)
			cdf, log := cdfChart(g, unit, ss)
			scale := "linear"
			if log {
				scale = "log"
			}
			out = append(out, placed{at, chart{Title: g, Kind: chartDistribution, SVGs: []svg{pc, cdf},
				Caption: unitCaption(unit, fmt.Sprintf("left: percentiles of up to %s (nearest rank); right: share of samples at or below each value (%s scale), dashed at 50%%, 90%%, 99%%",
					plural(most, "sample", "samples"), scale))}})
			continue
		}
		out = append(out, placed{at, barChart(g, unit, ss)})
	}

	// Percentile figures with no samples behind them.
	stems := map[string][]int{}
	var order []string
	for i, f := range r.Figures {
		stem, _, ok := percentileOf(f.ID)
		if !ok || backed[i] {
			continue
		}
		if stems[stem] == nil {
			order = append(order, stem)
		}
		stems[stem] = append(stems[stem], i)
	}
	for _, stem := range order {
		idx := stems[stem]
		if len(idx) < 2 {
			continue
		}
		out = append(out, placed{idx[0], figurePercentileChart(stem, r.Figures, idx)})
	}
	slices.SortStableFunc(out, func(a, b placed) int { return a.at - b.at })
	cs := make([]chart, len(out))
	for i, p := range out {
		cs[i] = p.c
	}
	return cs
}

// groupOf reports whether the figure with the given ID is backed by the
// sample group g: its ID after "bench/", or the whole ID with "/" read as
// "-", is g or starts with g and "-".
func groupOf(id, g string) bool {
	_, tail, _ := strings.Cut(id, "/")
	for _, s := range []string{tail, strings.ReplaceAll(id, "/", "-")} {
		if s == g || strings.HasPrefix(s, g+"-") {
			return true
		}
	}
	return false
}

// percentileOf splits a figure ID such as "dns/latency-p99" into its stem
// "dns/latency" and the percentile 99.
func percentileOf(id string) (stem string, p float64, ok bool) {
	i := strings.LastIndex(id, "-p")
	if i < 0 {
		return "", 0, false
	}
	p, err := strconv.ParseFloat(id[i+2:], 64)
	if err != nil || p <= 0 || p > 100 {
		return "", 0, false
	}
	return id[:i], p, true
}

// Drawing.

// The palette: trellis first, then the baselines. Every colour has a name
// next to it in a legend or a label, so the charts read without colour.
var palette = []string{"#2563eb", "#9ca3af", "#d97706", "#059669", "#7c3aed", "#db2777"}

const (
	chartWidth = 540.0 // of one drawing
	charWidth  = 7.2   // an estimate of one character's width at 12px
)

// svg is an inline SVG drawing, kept as shapes in drawing order so that
// html/template escapes every attribute and text of it.
type svg struct {
	W, H   float64
	Label  string // aria-label: what the drawing shows
	Shapes []shape
}

// shape is one element of an svg: a line, rect, polyline, circle or text.
type shape struct {
	Tag          string // "line", "rect", "polyline", "circle", "text"
	X, Y, W, H   float64
	X2, Y2       float64 // line: the other end
	R            float64 // circle
	Fill, Stroke string
	Width        float64 // stroke width
	Dash         string  // stroke-dasharray; "" for solid
	Points       string  // polyline
	Anchor       string  // text: "start", "middle", "end"
	Bold, Small  bool    // text
	Text         string  // text, or the tooltip of other shapes
}

func (s *svg) add(sh shape) *shape {
	s.Shapes = append(s.Shapes, sh)
	return &s.Shapes[len(s.Shapes)-1]
}

func (s *svg) text(x, y float64, anchor, str string) *shape {
	return s.add(shape{Tag: "text", X: x, Y: y, Anchor: anchor, Fill: "#1f2937", Text: str})
}

func (s *svg) line(x1, y1, x2, y2 float64, stroke string, width float64) *shape {
	return s.add(shape{Tag: "line", X: x1, Y: y1, X2: x2, Y2: y2, Stroke: stroke, Width: width})
}

func (s *svg) rect(x, y, w, h float64, fill, title string) {
	s.add(shape{Tag: "rect", X: x, Y: y, W: w, H: h, Fill: fill, Text: title})
}

// legend draws the names of series in their colours from (x, y) on one
// line, and returns the height it took.
func (s *svg) legend(x, y float64, names []string) float64 {
	if len(names) < 2 {
		return 0
	}
	for i, n := range names {
		s.rect(x, y-9, 10, 10, palette[i%len(palette)], n)
		s.text(x+14, y, "start", n)
		x += 14 + float64(len([]rune(n)))*charWidth + 16
	}
	return 18
}

// axis maps values to x positions between x0 and x1, linear from lo or,
// when log, logarithmic.
type axis struct {
	lo, hi float64
	x0, x1 float64
	log    bool
	ticks  []float64
}

func newAxis(lo, hi, x0, x1 float64, log bool) axis {
	a := axis{x0: x0, x1: x1, log: log}
	if log {
		// From the 1, 2 or 5 times a power of ten at or below lo to the
		// one at or above hi.
		steps := []float64{1, 2, 5}
		if hi/lo > 1000 {
			steps = []float64{1} // room for the labels
		}
		var all []float64
		for d := math.Pow(10, math.Floor(math.Log10(lo))); d <= hi*10; d *= 10 {
			for _, m := range steps {
				all = append(all, d*m)
			}
		}
		first := 0
		for i, v := range all {
			if v <= lo*1.0001 {
				first = i
			}
		}
		for _, v := range all[first:] {
			a.ticks = append(a.ticks, v)
			if v >= hi*0.9999 {
				break
			}
		}
		a.lo, a.hi = a.ticks[0], a.ticks[len(a.ticks)-1]
		return a
	}
	a.lo, a.ticks = 0, niceTicks(hi, 5)
	a.hi = a.ticks[len(a.ticks)-1]
	return a
}

func (a axis) x(v float64) float64 {
	if a.log {
		v = max(v, a.lo)
		return a.x0 + (a.x1-a.x0)*math.Log10(v/a.lo)/math.Log10(a.hi/a.lo)
	}
	return a.x0 + (a.x1-a.x0)*(v-a.lo)/(a.hi-a.lo)
}

// draw draws the axis's ticks and labels along y, with grid lines up to
// top, and the unit at its right end.
func (a axis) draw(s *svg, top, y float64, unit string) {
	for _, t := range a.ticks {
		x := a.x(t)
		s.line(x, top, x, y, "#e5e7eb", 1)
		s.text(x, y+14, "middle", formatTick(t)).Small = true
	}
	s.line(a.x0, y, a.x1, y, "#6b7280", 1)
	if unit != "" {
		s.text(a.x1, y+28, "end", unit).Small = true
	}
}

// niceTicks returns ticks from 0 to at least hi, about n of them, at 1, 2
// or 5 times a power of ten apart.
func niceTicks(hi float64, n int) []float64 {
	if hi <= 0 || math.IsNaN(hi) || math.IsInf(hi, 0) {
		return []float64{0, 1}
	}
	raw := hi / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag * 10
	for _, m := range []float64{1, 2, 5, 10} {
		if mag*m >= raw {
			step = mag * m
			break
		}
	}
	var ticks []float64
	for i := 0; ; i++ {
		t := float64(i) * step
		ticks = append(ticks, t)
		if t >= hi {
			return ticks
		}
	}
}

// formatNumber prints v with about three significant digits, large
// numbers with k or M.
func formatNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e6:
		return strconv.FormatFloat(math.Round(v/1e4)/100, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(math.Round(v/100)/10, 'f', -1, 64) + "k"
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// formatTick prints an axis tick: 5, 0.2, 50k.
func formatTick(v float64) string {
	if math.Abs(v) >= 1e4 {
		return formatNumber(v)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

// withUnit is v and its unit, for labels.
func withUnit(v float64, unit string) string {
	if unit == "" {
		return formatNumber(v)
	}
	return formatNumber(v) + " " + unit
}

// labelWidth is the room the longest of names needs, within bounds.
func labelWidth(names []string) float64 {
	w := 0.0
	for _, n := range names {
		w = max(w, float64(len([]rune(n)))*charWidth)
	}
	return min(max(w+12, 60), 200)
}

func seriesNames(ss []series) []string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = s.name
	}
	return names
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// barChart draws one horizontal bar per series at its median, a line over
// its range and a dot per sample.
func barChart(group, unit string, ss []series) chart {
	const row, top = 26.0, 8.0
	left := labelWidth(seriesNames(ss))
	right := chartWidth - 90
	hi := 0.0
	for _, s := range ss {
		hi = max(hi, slices.Max(s.xs))
	}
	a := newAxis(0, hi, left, right, false)
	s := svg{W: chartWidth, Label: group + ": median, range and samples per series"}
	a.draw(&s, top, top+row*float64(len(ss))+4, unit) // first: under the bars
	y := top
	for i, se := range ss {
		color := palette[i%len(palette)]
		med, lo, hi := median(se.xs), slices.Min(se.xs), slices.Max(se.xs)
		mid := y + row/2
		s.text(left-8, mid+4, "end", se.name)
		s.rect(a.x(0), mid-8, max(a.x(med)-a.x(0), 1), 16, color,
			fmt.Sprintf("%s: median %s of %s", se.name, withUnit(med, unit), plural(len(se.xs), "sample", "samples")))
		if len(se.xs) > 1 {
			s.line(a.x(lo), mid, a.x(hi), mid, "#111827", 1.5)
			s.line(a.x(lo), mid-5, a.x(lo), mid+5, "#111827", 1.5)
			s.line(a.x(hi), mid-5, a.x(hi), mid+5, "#111827", 1.5)
			for _, x := range se.xs {
				s.add(shape{Tag: "circle", X: a.x(x), Y: mid, R: 2.5, Fill: "#111827", Text: withUnit(x, unit)})
			}
		}
		s.text(a.x(max(med, hi))+6, mid+4, "start", withUnit(med, unit)).Bold = i == 0
		y += row
	}
	s.H = y + 36
	n := 0
	for _, se := range ss {
		n = max(n, len(se.xs))
	}
	caption := "median"
	if n > 1 {
		caption = fmt.Sprintf("median of up to %d samples (bar), least to most (line), each sample (dot)", n)
	}
	return chart{Title: group, Caption: unitCaption(unit, caption), Kind: chartBars, SVGs: []svg{s}}
}

func unitCaption(unit, caption string) string {
	if unit == "" {
		return caption
	}
	return unit + "; " + caption
}

var shownPercentiles = []float64{50, 90, 99}

// percentileChart draws p50, p90 and p99 of every series as bars, grouped
// by percentile.
func percentileChart(group, unit string, ss []series) svg {
	labels := make([]string, len(shownPercentiles))
	values := make([][]float64, len(shownPercentiles))
	for i, p := range shownPercentiles {
		labels[i] = fmt.Sprintf("p%g", p)
		for _, se := range ss {
			values[i] = append(values[i], percentile(se.xs, p))
		}
	}
	return groupedBars(group+": percentiles per series", unit, labels, seriesNames(ss), values)
}

// figurePercentileChart draws percentile figures that have no samples
// behind them, each against its baseline.
func figurePercentileChart(stem string, figs []Figure, idx []int) chart {
	idx = slices.Clone(idx)
	slices.SortStableFunc(idx, func(a, b int) int {
		_, pa, _ := percentileOf(figs[a].ID)
		_, pb, _ := percentileOf(figs[b].ID)
		return cmp.Compare(pa, pb)
	})
	first := figs[idx[0]]
	names := []string{"trellis", first.BaselineName}
	var labels []string
	var values [][]float64
	for _, i := range idx {
		_, p, _ := percentileOf(figs[i].ID)
		labels = append(labels, fmt.Sprintf("p%g", p))
		values = append(values, []float64{figs[i].Value, figs[i].Baseline})
	}
	_, title, _ := strings.Cut(stem, "/")
	s := groupedBars(stem+": percentiles against the baseline", first.Unit, labels, names, values)
	return chart{Title: cmp.Or(title, stem), Caption: unitCaption(first.Unit, "percentiles as the figures report them (the run kept no samples)"),
		Kind: chartPercentiles, SVGs: []svg{s}}
}

// groupedBars draws, for each label, one horizontal bar per name;
// values[label][name].
func groupedBars(ariaLabel, unit string, labels, names []string, values [][]float64) svg {
	const bar, gap, top = 14.0, 10.0, 8.0
	s := svg{W: chartWidth, Label: ariaLabel}
	left := labelWidth(labels)
	right := chartWidth - 90
	hi := 0.0
	for _, vs := range values {
		for _, v := range vs {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				hi = max(hi, v)
			}
		}
	}
	a := newAxis(0, hi, left, right, false)
	y := top + s.legend(left, top+10, names)
	bottom := y + (bar*float64(len(names))+gap)*float64(len(labels)) - gap
	a.draw(&s, y-4, bottom+4, unit) // first: under the bars
	for i, l := range labels {
		h := bar * float64(len(names))
		s.text(left-8, y+h/2+4, "end", l).Bold = true
		for j, v := range values[i] {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			by := y + float64(j)*bar
			s.rect(a.x(0), by+1, max(a.x(v)-a.x(0), 1), bar-2, palette[j%len(palette)],
				fmt.Sprintf("%s %s: %s", names[j], l, withUnit(v, unit)))
			s.text(a.x(v)+6, by+bar-3, "start", withUnit(v, unit)).Small = true
		}
		y += h + gap
	}
	s.H = bottom + 40
	return s
}

// cdfPoints is the most points a CDF curve is drawn with.
const cdfPoints = 400

// cdfChart draws the share of samples at or below each value, a step curve
// per series, with the 50th, 90th and 99th percentile lines, and reports
// whether its value axis is logarithmic.
func cdfChart(group, unit string, ss []series) (s svg, log bool) {
	const top, height = 8.0, 200.0
	left, right := 44.0, chartWidth-16
	lo, hi := math.Inf(1), 0.0
	for _, se := range ss {
		lo, hi = min(lo, slices.Min(se.xs)), max(hi, slices.Max(se.xs))
	}
	logScale := lo > 0 && hi/lo > 20
	a := newAxis(lo, hi, left, right, logScale)
	s = svg{W: chartWidth, Label: group + ": cumulative distribution per series"}
	y0 := top + s.legend(left, top+10, seriesNames(ss))
	y1 := y0 + height
	yOf := func(share float64) float64 { return y1 - share*height }
	a.draw(&s, y0, y1, unit)
	for _, share := range []float64{0, 0.5, 0.9, 0.99, 1} {
		l := s.line(left, yOf(share), right, yOf(share), "#e5e7eb", 1)
		if share > 0 && share < 1 {
			l.Stroke, l.Dash = "#9ca3af", "3 3"
		}
		if share < 1 { // 100% would sit on 99%'s label
			s.text(left-6, yOf(share)+4, "end", strconv.FormatFloat(share*100, 'f', -1, 64)+"%").Small = true
		}
	}
	for i, se := range ss {
		xs := slices.Clone(se.xs)
		slices.Sort(xs)
		var pts strings.Builder
		step := max(1, len(xs)/cdfPoints)
		prev := 0.0
		for k := 0; k < len(xs); k += step {
			if k+step > len(xs)-1 {
				k = len(xs) - 1
			}
			share := float64(k+1) / float64(len(xs))
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", a.x(xs[k]), yOf(prev), a.x(xs[k]), yOf(share))
			prev = share
		}
		s.add(shape{Tag: "polyline", Points: strings.TrimSpace(pts.String()), Stroke: palette[i%len(palette)], Width: 2,
			Text: fmt.Sprintf("%s: p50 %s, p90 %s, p99 %s, %s", se.name, withUnit(percentile(se.xs, 50), unit),
				withUnit(percentile(se.xs, 90), unit), withUnit(percentile(se.xs, 99), unit), plural(len(se.xs), "sample", "samples"))})
	}
	s.H = y1 + 36
	return s, logScale
}
