package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/bench"
)

// benchmark is one benchmark `trellis bench` can run: its name and how to
// run it, quick or not, with its progress lines going to progress.
type benchmark struct {
	name string
	run  func(ctx context.Context, quick bool, progress io.Writer) (*bench.Report, error)
}

// benchmarks are the benchmarks `trellis bench` knows, in the order "all"
// runs them. A benchmark is one entry here; the usage, the checks and the
// report follow from it. Tests replace it with fakes.
var benchmarks = []benchmark{
	{"overlay", func(ctx context.Context, q bool, p io.Writer) (*bench.Report, error) {
		return bench.Overlay(ctx, bench.OverlayOptions{Quick: q, Progress: p})
	}},
	{"policy", func(ctx context.Context, q bool, p io.Writer) (*bench.Report, error) {
		return bench.Policy(ctx, bench.PolicyOptions{Quick: q, Progress: p})
	}},
	{"dns", func(ctx context.Context, q bool, p io.Writer) (*bench.Report, error) {
		return bench.DNS(ctx, bench.DNSOptions{Quick: q, Progress: p})
	}},
	{"tls", func(ctx context.Context, q bool, p io.Writer) (*bench.Report, error) {
		return bench.TLS(ctx, bench.TLSOptions{Quick: q, Progress: p})
	}},
	{"scale", func(ctx context.Context, q bool, p io.Writer) (*bench.Report, error) {
		return bench.Scale(ctx, bench.ScaleOptions{Cells: benchCells, Quick: q, Progress: p})
	}},
}

// benchCells is the scale bench's --cells (0: its default).
var benchCells int

// benchNames are the names of benchmarks.
func benchNames() []string {
	var names []string
	for _, b := range benchmarks {
		names = append(names, b.name)
	}
	return names
}

// defaultBenchOut is where `trellis bench` writes its reports unless told.
const defaultBenchOut = "bench-results"

var benchCommand = &command{
	name:    "bench",
	group:   groupLocal,
	summary: "Measure trellis against baselines built in the same run (needs root)",
	usage:   "bench [" + strings.Join(benchNames(), "|") + "|all] [--quick] [--cells N] [--out DIR] [--json FILE]",
	example: "trellis bench\n" +
		"trellis bench overlay --quick\n" +
		"trellis bench scale --cells 20\n" +
		"trellis bench all --quick --out /tmp/bench --json bench.json",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		quick := fs.Bool("quick", false, "Take fewer and shorter samples, for smoke tests")
		out := fs.String("out", defaultBenchOut, "Write report.json and report.html (the table and charts) to a new folder `DIR`/TIMESTAMP-WHICH "+
			"(default "+defaultBenchOut+" in the current directory)")
		jsonFile := fs.String("json", "", "Also write the report's JSON to `FILE`")
		cells := fs.Int("cells", 0, "Cells of the scale bench's foundation, 2 to 200 (default 50; 3 with --quick)")
		return func(ctx context.Context, args []string) error {
			if len(args) > 1 {
				return badUsage("bench takes at most one benchmark, got %q", strings.Join(args, " "))
			}
			which := "all"
			if len(args) == 1 {
				which = args[0]
			}
			if which != "all" && !slices.Contains(benchNames(), which) {
				return badInput("unknown benchmark %q: choose one of %s, or all", which, strings.Join(benchNames(), ", "))
			}
			if *cells != 0 && (*cells < 2 || *cells > 200) {
				return badInput("--cells %d: the scale bench runs 2 to 200 cells", *cells)
			}
			benchCells = *cells
			// Fail now, not after minutes of measuring.
			if *jsonFile != "" {
				if fi, err := os.Stat(filepath.Dir(*jsonFile)); err != nil || !fi.IsDir() {
					return badInput("cannot write --json %s: %s is not a directory", *jsonFile, filepath.Dir(*jsonFile))
				}
			}
			if err := os.MkdirAll(*out, 0o755); err != nil {
				return badInput("cannot write --out %s: %v", *out, err)
			}
			return runBench(ctx, e, which, *quick, *out, *jsonFile)
		}
	},
}

// runBench runs the benchmarks which names ("all" for every one), then
// writes their report to a new folder under out and to jsonFile, and
// prints the table. A benchmark that fails does not stop the others,
// unless ctx is done; the report has those that ran, and runBench returns
// the failures.
func runBench(ctx context.Context, e *env, which string, quick bool, out, jsonFile string) error {
	started := time.Now()
	var reports []*bench.Report
	var failed []error
	for _, b := range benchmarks {
		if which != "all" && which != b.name {
			continue
		}
		fmt.Fprintf(e.stderr, "== bench %s\n", b.name)
		rep, err := b.run(ctx, quick, e.stderr)
		if err != nil {
			err = fmt.Errorf("bench %s: %w", b.name, err)
			if ctx.Err() != nil {
				return errors.Join(append(failed, err)...)
			}
			fmt.Fprintf(e.stderr, "%v\n", err)
			failed = append(failed, err)
			continue
		}
		reports = append(reports, rep)
	}
	if len(reports) == 0 {
		return errors.Join(failed...)
	}

	var table, js, page bytes.Buffer
	if len(reports) == 1 {
		if err := reports[0].WriteTable(&table); err != nil {
			return err
		}
		if err := reports[0].WriteJSON(&js); err != nil {
			return err
		}
	} else {
		c := bench.Combine(reports)
		c.Bench = which
		if err := c.WriteTable(&table); err != nil {
			return err
		}
		if err := c.WriteJSON(&js); err != nil {
			return err
		}
	}
	if err := bench.WriteHTML(&page, reports); err != nil {
		return fmt.Errorf("write the HTML report: %w", err)
	}
	dir, err := newRunDir(out, started.Format("20060102-150405")+"-"+which)
	if err != nil {
		return err
	}
	written := []string{filepath.Join(dir, "report.json"), filepath.Join(dir, "report.html")}
	if err := os.WriteFile(written[0], js.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(written[1], page.Bytes(), 0o644); err != nil {
		return err
	}
	if jsonFile != "" {
		if err := os.WriteFile(jsonFile, js.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write --json: %w", err)
		}
		written = append(written, jsonFile)
	}
	if _, err := e.stdout.Write(table.Bytes()); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nWrote %s\n", strings.Join(written, ", "))
	if len(failed) > 0 {
		return fmt.Errorf("the report lacks what failed: %w", errors.Join(failed...))
	}
	return nil
}

// newRunDir makes a new folder name under out, with "-2", "-3", ...
// after name when a run of the same second has one.
func newRunDir(out, name string) (string, error) {
	for i := 1; ; i++ {
		dir := filepath.Join(out, name)
		if i > 1 {
			dir += fmt.Sprintf("-%d", i)
		}
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, os.ErrExist) || i == 100 {
			return "", fmt.Errorf("make the report folder: %w", err)
		}
	}
}
