package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// startTimes are the samples of the plugin start figures: round i's start
// of each binary, in ms.
type startTimes struct {
	plugin, trellis, hello []float64
	// pluginIsTrellis says the plugin installed is the trellis binary
	// itself (no trellis-cni was built next to it).
	pluginIsTrellis bool
	sizes           [3]int64 // bytes of plugin, trellis and hello-world
	noHello         string   // why there is no hello-world baseline, or ""
}

// helloWorld is the baseline of the plugin start figures: the smallest Go
// program that prints, built with the toolchain at hand.
const helloWorld = `package main

import "fmt"

func main() { fmt.Println("hello, world") }
`

// pluginStart times, in rounds, starting the CNI plugin installed (with
// CNI_COMMAND=VERSION: it prints the versions it speaks, needing no agent
// and no configuration), the trellis binary the same way (which serves as
// the plugin where no trellis-cni was built) and a hello-world Go binary
// built here: each from fork to reaped, as a runtime runs a plugin, the
// three in a different order each round. Without a go command the
// hello-world baseline is missing, and startTimes.noHello says so.
func (r *run) pluginStart(plugin, trellis string, pluginIsTrellis bool, rounds int) (*startTimes, error) {
	st := &startTimes{pluginIsTrellis: pluginIsTrellis}
	dir, err := os.MkdirTemp("", "trbench-hello-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	hello, err := buildHello(r.ctx, dir)
	if err != nil {
		if r.ctx.Err() != nil {
			return nil, r.ctx.Err()
		}
		st.noHello = err.Error()
		hello = ""
	}
	bins := []string{plugin, trellis, hello}
	samples := []*[]float64{&st.plugin, &st.trellis, &st.hello}
	for i, b := range bins {
		if b == "" {
			continue
		}
		fi, err := os.Stat(b)
		if err != nil {
			return nil, err
		}
		st.sizes[i] = fi.Size()
	}
	r.logf("plugin start: %d rounds of trellis-cni, trellis and a hello-world Go binary", rounds)
	for round := range rounds {
		for k := range bins {
			i := (round + k) % len(bins)
			if bins[i] == "" {
				continue
			}
			d, err := timeStart(r.ctx, bins[i])
			if err != nil {
				return nil, err
			}
			*samples[i] = append(*samples[i], ms(d))
		}
	}
	return st, nil
}

// timeStart runs exe as a runtime runs a plugin for VERSION and returns
// how long it took from fork to reaped.
func timeStart(ctx context.Context, exe string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{"CNI_COMMAND=VERSION", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	start := time.Now()
	out, err := cmd.Output()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("run %s with CNI_COMMAND=VERSION: %w (output %q)", exe, err, out)
	}
	return d, nil
}

// buildHello builds helloWorld in dir and returns the binary's path.
func buildHello(ctx context.Context, dir string) (string, error) {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("no go command in PATH to build a hello-world Go binary with")
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.21\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(helloWorld), 0o644); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, gocmd, "build", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build a hello-world Go binary: %w: %s", err, out)
	}
	return filepath.Join(dir, "hello"), nil
}

// figures are the plugin start figures: the plugin, and the trellis
// binary in CNI mode, each next to hello-world.
func (st *startTimes) figures() []Figure {
	what := "trellis-cni"
	if st.pluginIsTrellis {
		what = "the plugin (the trellis binary: no trellis-cni was built next to it)"
	}
	figure := func(id, name string, xs []float64) Figure {
		if st.noHello != "" {
			return newFigure(id, name, "ms", median(xs), 0, "none: "+st.noHello, nil)
		}
		return newPairedFigure(id, name, "ms", xs, st.hello, "a hello-world Go binary", nil)
	}
	return []Figure{
		figure("overlay/plugin-start", "CNI plugin start: "+what+", CNI_COMMAND=VERSION, exec to exit, median", st.plugin),
		figure("overlay/plugin-start-trellis", "the same for the trellis binary in CNI mode", st.trellis),
	}
}

func (st *startTimes) note() string {
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	hello := fmt.Sprintf("a hello-world Go binary (%s; p90 %.2f ms)", mib(st.sizes[2]), percentile(st.hello, 90))
	if st.noHello != "" {
		hello = "no hello-world baseline (" + st.noHello + ")"
	}
	return fmt.Sprintf("plugin start: %d rounds, each starting once, in an order rotated each round, the CNI plugin the local foundation installed (%s; p90 %.2f ms), "+
		"the trellis binary (%s; p90 %.2f ms) and %s, with CNI_COMMAND=VERSION and stdin empty (the plugin prints the versions it speaks; hello-world prints a line), "+
		"each timed from fork to reaped by the bench process, as a runtime runs a plugin; the ratio is the median of the rounds' ratios.",
		len(st.plugin), mib(st.sizes[0]), percentile(st.plugin, 90), mib(st.sizes[1]), percentile(st.trellis, 90), hello)
}
