package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestTLSQuick runs the quick TLS bench end to end on a real local
// foundation (the trellis binary is built for it), with haproxy as the
// baseline, and checks that it produces every figure with sane values.
func TestTLSQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	requireTool(t, "haproxy", ErrNoHAProxy)
	exe := buildTrellis(t)
	rep, err := TLS(t.Context(), TLSOptions{Quick: true, Exe: exe, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("TLS = %v", err)
	}
	logTable(t, rep)
	for _, f := range rep.Figures {
		// An added latency is a difference of two measurements: noise can
		// make it negative. Everything else is a positive amount.
		positive := !strings.HasPrefix(f.ID, "tls/added-latency")
		if math.IsNaN(f.Value) || math.IsInf(f.Value, 0) || positive && !(f.Value > 0 && f.Baseline > 0) {
			t.Errorf("figure %s = %v (baseline %v)", f.ID, f.Value, f.Baseline)
		}
	}
	wantFigures(t, rep, "tls/added-latency-p50-vs-haproxy", "tls/added-latency-p99-vs-haproxy", "tls/added-latency-p50", "tls/added-latency-p99", "tls/added-latency-hop-p50", "tls/added-latency-hop-p99",
		"tls/latency-p50", "tls/latency-p99",
		"tls/handshake-request-p50", "tls/handshake-request-p99", "tls/rps-vs-haproxy", "tls/rps-vs-plaintext",
		"tls/bulk-vs-haproxy", "tls/bulk-vs-plaintext", "tls/cpu-per-request", "tls/cpu-per-gb", "tls/memory-per-instance",
		"tls/latency-work-cpu", "tls/latency-work-switches")
	for _, k := range []string{pathOurs, pathPlain, pathHAProxy, pathRelay} {
		if n := len(rep.Samples["tls-latency/"+k]); n < 1000 {
			t.Errorf("%d latency samples for %s, want at least 1,000", n, k)
		}
	}
	if left := Leftovers(rep.Prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	checkJSONRoundTrip(t, rep)
	var page bytes.Buffer
	if err := WriteHTML(&page, []*Report{rep}); err != nil {
		t.Errorf("WriteHTML = %v", err)
	}
}

// TestAddedRatioFigure checks the per-round ratio of added latencies: the
// median of the rounds' ratios, rounds where haproxy added nothing left
// out and counted, and a figure with no round to judge by failing.
func TestAddedRatioFigure(t *testing.T) {
	round := func(ms float64) []float64 { return []float64{ms, ms, ms} }
	byRound := map[string][][]float64{
		pathPlain:   {round(1), round(1), round(1), round(1)},
		pathOurs:    {round(1.1), round(1.3), round(1.2), round(1.5)},
		pathHAProxy: {round(1.2), round(1.2), round(1.4), round(1)}, // the last round: haproxy added nothing
	}
	f := addedRatioFigure(byRound, 50, "tls/x", "x")
	// Ratios 0.5, 1.5, 0.5: median 0.5.
	if math.Abs(f.Ratio-0.5) > 1e-9 || f.Pass == nil || !*f.Pass {
		t.Errorf("figure = ratio %v pass %v, want 0.5 and met", f.Ratio, f.Pass)
	}
	if !strings.Contains(f.BaselineName, "median of 3 rounds' ratios (4 rounds, 1 left out") {
		t.Errorf("baseline name %q does not count the rounds", f.BaselineName)
	}
	byRound[pathHAProxy] = [][]float64{round(1), round(0.9), round(1), round(1)}
	if f := addedRatioFigure(byRound, 99, "tls/x", "x"); f.Pass == nil || *f.Pass {
		t.Errorf("figure with no round where haproxy added latency: pass %v, want not met", f.Pass)
	}
}

// TestThreadsWork checks the CPU time and context switches read for a
// process's threads: this process has spent some of both, and no process
// has spent anything.
func TestThreadsWork(t *testing.T) {
	end := time.Now().Add(20 * time.Millisecond)
	for time.Now().Before(end) {
	}
	time.Sleep(time.Millisecond)
	cpu, switches := threadsWork(os.Getpid())
	if cpu < 20*time.Millisecond || switches < 1 {
		t.Errorf("threadsWork(self) = %v, %d switches; want at least 20ms and 1", cpu, switches)
	}
	if cpu, switches := threadsWork(0); cpu != 0 || switches != 0 {
		t.Errorf("threadsWork(0) = %v, %d; want nothing", cpu, switches)
	}
}

// BenchmarkTLSLatencyRounds runs only the latency rounds of the TLS bench
// with the trellis binary named by TRELLIS_BENCH_TLS_EXE,
// TRELLIS_BENCH_TLS_ROUNDS rounds per placement (default 6), and logs each
// round's ratio of the latency 61443 added over the latency haproxy's TLS
// added, p50 and p99, in both placements: for comparing builds of the
// terminator run after run (old, new, new, old, ...):
//
//	TRELLIS_BENCH_TLS_EXE=/tmp/a/trellis go test -run - -bench TLSLatencyRounds -benchtime 1x -v ./internal/bench/
//
// It is a benchmark, not a test, so that it runs only when asked for
// (-bench); without the variable it is skipped (the bench runs a trellis
// binary, not this test binary). Each iteration is a full set of rounds.
func BenchmarkTLSLatencyRounds(b *testing.B) {
	exe := os.Getenv("TRELLIS_BENCH_TLS_EXE")
	if exe == "" {
		b.Skip("TRELLIS_BENCH_TLS_EXE is not set: it names the trellis binary whose TLS terminator to measure")
	}
	dataplanetest.RequireRoot(b)
	requireTool(b, "haproxy", ErrNoHAProxy)
	rounds := 6
	if v := os.Getenv("TRELLIS_BENCH_TLS_ROUNDS"); v != "" {
		var err error
		if rounds, err = strconv.Atoi(v); err != nil || rounds < 1 {
			b.Fatalf("TRELLIS_BENCH_TLS_ROUNDS=%q: want a positive number", v)
		}
	}
	for range b.N {
		logLatencyRounds(b, exe, rounds)
	}
}

// logLatencyRounds runs rounds latency rounds per placement with exe and
// logs each round's ratios (see BenchmarkTLSLatencyRounds).
func logLatencyRounds(t testing.TB, exe string, rounds int) {
	rep, err := TLS(context.Background(), TLSOptions{Exe: exe, LatencyOnly: true, LatencyRounds: rounds, Progress: tbLog{t}})
	if err != nil {
		t.Fatalf("TLS = %v", err)
	}
	if left := Leftovers(rep.Prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	logTable(t, rep)
	wantFigures(t, rep, "tls/added-latency-p50-vs-haproxy", "tls/added-latency-p99-vs-haproxy",
		"tls/added-latency-one-cpu-p50-vs-haproxy", "tls/added-latency-one-cpu-p99-vs-haproxy")
	// The samples are pooled round after round, each round the same count.
	per := int(tlsLatencyRate * tlsParamsFor(false).latency.Seconds())
	for _, place := range []string{"tls-latency/", "tls-latency-one-cpu/"} {
		for _, p := range []float64{50, 99} {
			var line strings.Builder
			for i := 0; ; i++ {
				round := func(k string) []float64 {
					xs := rep.Samples[place+k]
					if len(xs) < (i+1)*per {
						return nil
					}
					return xs[i*per : (i+1)*per]
				}
				ours, ha, plain := round(pathOurs), round(pathHAProxy), round(pathPlain)
				if ours == nil || ha == nil || plain == nil {
					break
				}
				x := percentile(ours, p) - percentile(plain, p)
				b := percentile(ha, p) - percentile(plain, p)
				fmt.Fprintf(&line, " %.3f/%.3f=%.2f", x, b, x/b)
			}
			t.Logf("ROUNDS %s p%.0f (ms added by 61443/haproxy=ratio):%s", place, p, line.String())
		}
	}
}
