package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/bench"
)

// TestBenchUsageErrors checks the command lines `trellis bench` refuses
// before it builds anything.
func TestBenchUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "out.json")
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"bench", "frob"}, `trellis: unknown benchmark "frob": choose one of overlay, policy, dns, tls, scale, or all`},
		{[]string{"bench", "scale", "--cells", "1"}, `trellis: --cells 1: the scale bench runs 2 to 200 cells`},
		{[]string{"bench", "scale", "--cells", "201"}, `trellis: --cells 201: the scale bench runs 2 to 200 cells`},
		{[]string{"bench", "overlay", "all"}, `Incorrect Usage: bench takes at most one benchmark, got "overlay all"`},
		{[]string{"bench", "overlay", "--json", missing}, "trellis: cannot write --json " + missing + ": " + filepath.Dir(missing) + " is not a directory"},
		{[]string{"bench", "--frobnicate"}, "Incorrect Usage: flag provided but not defined: -frobnicate"},
		{[]string{"bench", "dns", "--out", notDir}, "trellis: cannot write --out " + notDir + ": mkdir " + notDir + ": not a directory"},
	}
	for _, tt := range tests {
		got := runCLI(nil, tt.args...)
		if got.Code != 2 || strings.TrimSpace(got.Stderr) != tt.stderr || got.Stdout != "" {
			t.Errorf("trellis %s = %+v, want exit 2 and stderr %q", strings.Join(tt.args, " "), got, tt.stderr)
		}
	}
}

// fakeBenchmarks replaces the benchmarks for the test with ones that
// return a report made by hand, or fail with fail[name], so that no root is
// needed. It returns the quick flags they are run with.
func fakeBenchmarks(t *testing.T, fail map[string]error) *[]bool {
	t.Helper()
	saved := benchmarks
	t.Cleanup(func() { benchmarks = saved })
	var quick []bool
	benchmarks = nil
	for i, name := range []string{"overlay", "policy", "dns"} {
		benchmarks = append(benchmarks, benchmark{name, func(ctx context.Context, q bool, progress io.Writer) (*bench.Report, error) {
			quick = append(quick, q)
			fmt.Fprintf(progress, "measuring %s\n", name)
			if err := fail[name]; err != nil {
				return nil, err
			}
			pass, short := true, false
			return &bench.Report{
				Bench: name, Quick: q, CPUs: 2, Seconds: 60,
				Started: time.Date(2026, 3, 14, 15, 9, 26+i, 0, time.UTC),
				Figures: []bench.Figure{
					{ID: name + "/fast", Name: name + " <fast> figure", Value: 11, Unit: "Gbit/s", Baseline: 10, BaselineName: "bare", Ratio: 1.1, Goal: "ratio ≥ 0.95x", Pass: &pass},
					{ID: name + "/slow", Name: name + " slow figure", Value: 8, Unit: "Gbit/s", Baseline: 10, BaselineName: "bare", Ratio: 0.8, Goal: "ratio ≥ 0.95x", Pass: &short},
				},
				Samples: map[string][]float64{"fast/trellis": {10, 11, 12}, "fast/bare": {9, 10, 11}},
				Notes:   []string{name + " was measured by hand"},
			}, nil
		}})
	}
	return &quick
}

// reportDirs returns the folders bench wrote under out.
func reportDirs(t *testing.T, out string) []string {
	t.Helper()
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		dirs = append(dirs, e.Name())
	}
	return dirs
}

// TestBenchWritesReport runs `trellis bench` with fake benchmarks and
// checks the table it prints and the report it writes.
func TestBenchWritesReport(t *testing.T) {
	tests := []struct {
		args    string
		fail    map[string]error
		code    int
		benches []string // in the report
		bench   string   // the report's "bench", and the end of its folder's name
		stderr  string   // in stderr
	}{
		{"bench --quick", nil, 0, []string{"overlay", "policy", "dns"}, "all", "measuring dns"},
		{"bench policy", nil, 0, []string{"policy"}, "policy", "measuring policy"},
		{"bench all", map[string]error{"policy": errors.New("iperf3 is missing: apt-get install iperf3")}, 1,
			[]string{"overlay", "dns"}, "all", "trellis: the report lacks what failed: bench policy: iperf3 is missing: apt-get install iperf3\n"},
	}
	for _, tt := range tests {
		t.Run(tt.args, func(t *testing.T) {
			quick := fakeBenchmarks(t, tt.fail)
			out := filepath.Join(t.TempDir(), "results")
			jsonFile := filepath.Join(t.TempDir(), "bench.json")
			args := append(strings.Fields(tt.args), "--out", out, "--json", jsonFile)
			got := runCLI(nil, args...)
			if got.Code != tt.code || !strings.Contains(got.Stderr, tt.stderr) {
				t.Fatalf("trellis %s = %+v, want exit %d and stderr with %q", tt.args, got, tt.code, tt.stderr)
			}
			wantQuick := strings.Contains(tt.args, "--quick")
			for _, q := range *quick {
				if q != wantQuick {
					t.Errorf("trellis %s ran a benchmark with quick %v, want %v", tt.args, q, wantQuick)
				}
			}
			dirs := reportDirs(t, out)
			if len(dirs) != 1 || !regexp.MustCompile(`^\d{8}-\d{6}-`+tt.bench+`$`).MatchString(dirs[0]) {
				t.Fatalf("trellis %s wrote %q under --out, want one folder TIMESTAMP-%s", tt.args, dirs, tt.bench)
			}
			dir := filepath.Join(out, dirs[0])
			js, err := os.ReadFile(filepath.Join(dir, "report.json"))
			if err != nil {
				t.Fatal(err)
			}
			if again, err := os.ReadFile(jsonFile); err != nil || !bytes.Equal(again, js) {
				t.Errorf("--json %s differs from report.json (%v)", jsonFile, err)
			}
			page, err := os.ReadFile(filepath.Join(dir, "report.html"))
			if err != nil {
				t.Fatal(err)
			}

			// The JSON reads as a Report, and as a Combined of several.
			var c bench.Combined
			if err := json.Unmarshal(js, &c); err != nil {
				t.Fatalf("report.json: %v", err)
			}
			if c.Bench != tt.bench || len(c.Figures) != 2*len(tt.benches) {
				t.Errorf("report.json has bench %q and %d figures, want %q and %d", c.Bench, len(c.Figures), tt.bench, 2*len(tt.benches))
			}
			var ran []string
			for _, r := range c.Reports {
				ran = append(ran, r.Bench)
			}
			if len(tt.benches) == 1 {
				ran = []string{c.Bench} // a single report, as before
			}
			if !slices.Equal(ran, tt.benches) {
				t.Errorf("report.json has reports %q, want %q", ran, tt.benches)
			}

			for _, b := range tt.benches {
				for _, want := range []string{b + " slow figure", b + " was measured by hand"} {
					if !strings.Contains(got.Stdout, want) {
						t.Errorf("trellis %s printed no %q:\n%s", tt.args, want, got.Stdout)
					}
					if !strings.Contains(string(page), want) {
						t.Errorf("report.html has no %q", want)
					}
				}
				if !strings.Contains(string(page), b+" &lt;fast&gt; figure") {
					t.Errorf("report.html has no escaped %q", b+" <fast> figure")
				}
			}
			summary := fmt.Sprintf("%s: %d of %d goals met", tt.bench, len(tt.benches), 2*len(tt.benches))
			wrote := fmt.Sprintf("Wrote %s, %s, %s\n", filepath.Join(dir, "report.json"), filepath.Join(dir, "report.html"), jsonFile)
			if !strings.Contains(got.Stdout, summary) || !strings.HasSuffix(got.Stdout, wrote) {
				t.Errorf("trellis %s printed:\n%s\nwant %q and, last, %q", tt.args, got.Stdout, summary, wrote)
			}
		})
	}
}

// TestBenchAllFail checks that a run where every benchmark fails writes
// nothing and says why.
func TestBenchAllFail(t *testing.T) {
	missing := errors.New("dnsperf is missing: apt-get install dnsperf")
	fakeBenchmarks(t, map[string]error{"dns": missing})
	out := t.TempDir()
	got := runCLI(nil, "bench", "dns", "--out", out)
	want := "trellis: bench dns: dnsperf is missing: apt-get install dnsperf"
	if got.Code != 1 || !strings.HasSuffix(got.Stderr, want+"\n") || got.Stdout != "" {
		t.Errorf("trellis bench dns = %+v, want exit 1 and stderr ending %q", got, want)
	}
	if dirs := reportDirs(t, out); len(dirs) != 0 {
		t.Errorf("trellis bench dns wrote %q, want nothing", dirs)
	}
}
