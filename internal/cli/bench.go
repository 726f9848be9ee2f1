package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/trellis-c2c/trellis/internal/bench"
)

func init() { register(benchCommand) }

// benchmarks are the benchmarks `trellis bench` knows, in the order "all"
// runs them.
var benchmarks = []string{"overlay", "policy", "dns"}

var benchCommand = &command{
	name:    "bench",
	group:   groupLocal,
	summary: "Measure trellis against baselines built in the same run (needs root)",
	usage:   "bench [overlay|policy|dns|all] [--quick] [--json FILE]",
	example: "trellis bench overlay\n" +
		"trellis bench overlay --quick --json overlay.json",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		quick := fs.Bool("quick", false, "Take fewer and shorter samples (about 30 s instead of 2 min), for smoke tests")
		jsonFile := fs.String("json", "", "Also write the figures as JSON to `FILE`")
		return func(ctx context.Context, args []string) error {
			if len(args) > 1 {
				return badUsage("bench takes at most one benchmark, got %q", strings.Join(args, " "))
			}
			which := "all"
			if len(args) == 1 {
				which = args[0]
			}
			if which != "all" && !slices.Contains(benchmarks, which) {
				return badInput("unknown benchmark %q: choose one of %s, or all", which, strings.Join(benchmarks, ", "))
			}
			if *jsonFile != "" {
				// Fail now, not after minutes of measuring.
				if fi, err := os.Stat(filepath.Dir(*jsonFile)); err != nil || !fi.IsDir() {
					return badInput("cannot write --json %s: %s is not a directory", *jsonFile, filepath.Dir(*jsonFile))
				}
			}
			var reports []*bench.Report
			for _, name := range benchmarks {
				if which != "all" && which != name {
					continue
				}
				var rep *bench.Report
				var err error
				switch name {
				case "overlay":
					rep, err = bench.Overlay(ctx, bench.OverlayOptions{Quick: *quick, Progress: e.stderr})
				case "policy":
					rep, err = bench.Policy(ctx, bench.PolicyOptions{Quick: *quick, Progress: e.stderr})
				case "dns":
					rep, err = bench.DNS(ctx, bench.DNSOptions{Quick: *quick, Progress: e.stderr})
				}
				if err != nil {
					return fmt.Errorf("bench %s: %w", name, err)
				}
				var table bytes.Buffer
				if err := rep.WriteTable(&table); err != nil {
					return err
				}
				if _, err := e.stdout.Write(table.Bytes()); err != nil {
					return err
				}
				reports = append(reports, rep)
			}
			rep := reports[0]
			if len(reports) > 1 {
				rep = &bench.Report{Bench: "all", Quick: *quick, Started: reports[0].Started}
				for _, r := range reports {
					rep.Figures = append(rep.Figures, r.Figures...)
					rep.Notes = append(rep.Notes, r.Notes...)
				}
			}
			if *jsonFile != "" {
				var b bytes.Buffer
				if err := rep.WriteJSON(&b); err != nil {
					return err
				}
				if err := os.WriteFile(*jsonFile, b.Bytes(), 0o644); err != nil {
					return fmt.Errorf("write --json: %w", err)
				}
			}
			return nil
		}
	},
}
