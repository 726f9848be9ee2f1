package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100, 99, ..., 1: unsorted on purpose
	}
	tests := []struct {
		xs   []float64
		p    float64
		want float64
	}{
		{hundred, 50, 50},
		{hundred, 99, 99},
		{hundred, 100, 100},
		{hundred, 1, 1},
		{hundred, 0.5, 1},
		{[]float64{7}, 50, 7},
		{[]float64{7}, 99, 7},
		{[]float64{3, 1, 2}, 50, 2},
		{[]float64{4, 1, 3, 2}, 50, 2}, // nearest rank: ceil(0.5*4) = 2nd
		{[]float64{4, 1, 3, 2}, 99, 4},
	}
	for _, tt := range tests {
		if got := percentile(tt.xs, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
		}
	}
	for _, p := range []float64{0, -1, 101} {
		if got := percentile(hundred, p); !math.IsNaN(got) {
			t.Errorf("percentile(1..100, %v) = %v, want NaN", p, got)
		}
	}
	if got := percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("percentile(nil, 50) = %v, want NaN", got)
	}
	if hundred[0] != 100 {
		t.Errorf("percentile sorted its input in place")
	}
}

func TestMedianMean(t *testing.T) {
	tests := []struct {
		xs       []float64
		med, avg float64
	}{
		{[]float64{5}, 5, 5},
		{[]float64{9, 1, 5}, 5, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 2.5},
		{[]float64{10, 1, 1}, 1, 4},
	}
	for _, tt := range tests {
		if got := median(tt.xs); got != tt.med {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.med)
		}
		if got := mean(tt.xs); got != tt.avg {
			t.Errorf("mean(%v) = %v, want %v", tt.xs, got, tt.avg)
		}
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(mean(nil)) {
		t.Errorf("median(nil), mean(nil) = %v, %v, want NaN", median(nil), mean(nil))
	}
}

func TestEarlyLate(t *testing.T) {
	tests := []struct {
		n           int
		early, late span
	}{
		{100, span{5, 15}, span{90, 100}},
		{30, span{2, 5}, span{27, 30}},
		{200, span{10, 30}, span{180, 200}},
		{10, span{1, 2}, span{9, 10}},
		{1, span{1, 1}, span{1, 1}},
	}
	for _, tt := range tests {
		early, late := earlyLate(tt.n)
		if early != tt.early || late != tt.late {
			t.Errorf("earlyLate(%d) = %v, %v, want %v, %v", tt.n, early, late, tt.early, tt.late)
		}
		xs := make([]float64, tt.n)
		if got := len(late.of(xs)); got != late.last-late.first+1 {
			t.Errorf("earlyLate(%d): %v covers %d samples", tt.n, late, got)
		}
	}
	xs := []float64{1, 2, 3, 4, 5}
	if got, want := (span{2, 4}).of(xs), []float64{2, 3, 4}; !cmp.Equal(got, want) {
		t.Errorf("span{2, 4}.of(%v) = %v, want %v", xs, got, want)
	}
}

func TestGoal(t *testing.T) {
	tests := []struct {
		g     goal
		value float64
		ratio float64
		text  string
		met   bool
	}{
		{goal{ratio: true, limit: 0.95}, 9, 0.96, "ratio ≥ 0.95x", true},
		{goal{ratio: true, limit: 0.95}, 9, 0.94, "ratio ≥ 0.95x", false},
		{goal{atMost: true, limit: 20}, 20, 9, "≤ 20", true},
		{goal{atMost: true, limit: 20}, 20.5, 0.1, "≤ 20", false},
		{goal{ratio: true, atMost: true, limit: 1, slack: 0.25}, 1, 1.25, "ratio ≤ 1.00x (+25% for noise)", true},
		{goal{ratio: true, atMost: true, limit: 1, slack: 0.25}, 1, 1.26, "ratio ≤ 1.00x (+25% for noise)", false},
		{goal{limit: 10, slack: 0.1}, 9, 1, "≥ 10 (-10% for noise)", true},
	}
	for _, tt := range tests {
		f := Figure{Value: tt.value, Ratio: tt.ratio}
		if got := tt.g.String(); got != tt.text {
			t.Errorf("%+v.String() = %q, want %q", tt.g, got, tt.text)
		}
		if got := tt.g.met(f); got != tt.met {
			t.Errorf("%+v.met(value %v, ratio %v) = %v, want %v", tt.g, tt.value, tt.ratio, got, tt.met)
		}
	}
}

func testReport() *Report {
	return &Report{
		Bench:     "overlay",
		Quick:     true,
		Prefix:    "trbench-abcdef-",
		Started:   time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC),
		Seconds:   15.4,
		CPUs:      2,
		LoadStart: [3]float64{0.98, 0.8, 1},
		LoadEnd:   [3]float64{1.21, 0.9, 1},
		Figures: []Figure{
			newFigure("overlay/tcp-1-vs-vxlan", "cross-cell TCP, 1 stream, vs bare VXLAN", "Gbit/s", 10, 10.5, "bare VXLAN pair", &goal{ratio: true, limit: 0.95}),
			newFigure("overlay/tcp-1-vs-veth", "cross-cell TCP, 1 stream, vs direct veth", "Gbit/s", 10, 20, "direct veth pair", nil),
			newFigure("overlay/setup-p50", "container setup to first packet, p50", "ms", 24.02, 2.5, "plain veth on a bridge", &goal{atMost: true, limit: 20}),
			newFigure("overlay/setup-p99", "container setup to first packet, p99", "ms", 0.5, 0.25, "plain veth on a bridge", &goal{atMost: true, limit: 50}),
		},
		Notes: []string{"how it was measured"},
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := testReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	want := `FIGURE                                     VALUE          BASELINE                            RATIO   GOAL            VERDICT
cross-cell TCP, 1 stream, vs bare VXLAN    10.00 Gbit/s   10.50 Gbit/s (bare VXLAN pair)      0.95x   ratio ≥ 0.95x   pass
cross-cell TCP, 1 stream, vs direct veth   10.00 Gbit/s   20.00 Gbit/s (direct veth pair)     0.50x   -               informative
container setup to first packet, p50       24.02 ms       2.50 ms (plain veth on a bridge)    9.61x   ≤ 20 ms         FALLS SHORT
container setup to first packet, p99       0.500 ms       0.250 ms (plain veth on a bridge)   2.00x   ≤ 50 ms         pass

overlay: 2 of 3 goals met; quick run, 15 s, 2 CPUs, load average 0.98 at start, 1.21 at end
- how it was measured
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("WriteTable mismatch (-want +got):\n%s", diff)
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := testReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Bench   string           `json:"bench"`
		Figures []map[string]any `json:"figures"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("WriteJSON wrote invalid JSON: %v\n%s", err, b.String())
	}
	if got.Bench != "overlay" || len(got.Figures) != 4 {
		t.Fatalf("WriteJSON = bench %q with %d figures, want overlay with 4", got.Bench, len(got.Figures))
	}
	for _, key := range []string{"name", "value", "unit", "baseline", "ratio", "goal", "pass"} {
		for i, f := range got.Figures {
			if _, ok := f[key]; !ok {
				t.Errorf("figure %d has no %q: %v", i, key, f)
			}
		}
	}
	first, informative := got.Figures[0], got.Figures[1]
	want := map[string]any{
		"id": "overlay/tcp-1-vs-vxlan", "name": "cross-cell TCP, 1 stream, vs bare VXLAN",
		"value": 10.0, "unit": "Gbit/s", "baseline": 10.5, "baseline_name": "bare VXLAN pair",
		"ratio": 10 / 10.5, "goal": "ratio ≥ 0.95x", "pass": true,
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first figure mismatch (-want +got):\n%s", diff)
	}
	if informative["pass"] != nil || informative["goal"] != "" {
		t.Errorf("informative figure has goal %v, pass %v; want \"\" and null", informative["goal"], informative["pass"])
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{12.345, "12.35 ms"},
		{0.5, "0.500 ms"},
		{0.0123, "0.0123 ms"},
		{0, "0.00 ms"},
		{1010.06, "1010.06 ms"},
	}
	for _, tt := range tests {
		if got := formatValue(tt.v, "ms"); got != tt.want {
			t.Errorf("formatValue(%v, ms) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestParseIPerf3(t *testing.T) {
	ok := `{"start": {}, "intervals": [], "end": {
		"sum_sent": {"bits_per_second": 12600000000},
		"sum_received": {"bits_per_second": 12500000000}}}`
	if got, err := parseIPerf3([]byte(ok)); err != nil || got != 12.5 {
		t.Errorf("parseIPerf3(ok) = %v, %v, want 12.5, nil", got, err)
	}
	for _, tt := range []struct{ out, want string }{
		{`{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}`, "unable to connect to server: Connection refused"},
		{`{"end": {"sum_received": {"bits_per_second": 0}}}`, "no received data"},
		{`iperf3: error - unable to connect`, "parse iperf3 -J output"},
	} {
		_, err := parseIPerf3([]byte(tt.out))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseIPerf3(%q) = %v, want an error containing %q", tt.out, err, tt.want)
		}
	}
}

func TestNewPrefix(t *testing.T) {
	a, b := NewPrefix(), NewPrefix()
	if !strings.HasPrefix(a, PrefixBase) || len(a) != len(PrefixBase)+7 || !strings.HasSuffix(a, "-") {
		t.Errorf("NewPrefix() = %q, want %q, six hex digits and -", a, PrefixBase)
	}
	if a == b {
		t.Errorf("NewPrefix() twice = %q", a)
	}
}

func TestPairedFigure(t *testing.T) {
	// The machine drifts: it is twice as fast in round 3, and one odd
	// sample in round 2. The ratio of the medians (180/100) says 1.8; two
	// of three rounds say 0.9.
	xs, base := []float64{90, 185, 180}, []float64{100, 100, 200}
	f := newPairedFigure("x", "x", "conn/s", xs, base, "bare", &goal{ratio: true, limit: 0.95})
	if f.Value != 180 || f.Baseline != 100 || math.Abs(f.Ratio-0.9) > 1e-9 || f.Pass == nil || *f.Pass {
		t.Errorf("newPairedFigure = value %v, baseline %v, ratio %v, pass %v; want 180, 100, 0.9, false", f.Value, f.Baseline, f.Ratio, f.Pass)
	}
	if !strings.Contains(f.BaselineName, "median of 3 rounds' ratios") {
		t.Errorf("baseline name %q does not say how the ratio was made", f.BaselineName)
	}
	// One round: the plain ratio.
	if f := newPairedFigure("x", "x", "conn/s", []float64{90}, []float64{100}, "bare", nil); math.Abs(f.Ratio-0.9) > 1e-9 || f.BaselineName != "bare" {
		t.Errorf("one round: ratio %v, baseline name %q; want 0.9, bare", f.Ratio, f.BaselineName)
	}
}
