package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkCNISetup runs the CNI part of the overlay bench alone (no
// iperf3, no WireGuard: minutes shorter) against the trellis binary named
// by TRELLIS_BENCH_CNI_EXE, with its trellis-cni next to it, so that two
// builds can be compared in interleaved runs:
//
//	TRELLIS_BENCH_CNI_EXE=/tmp/a/trellis go test -run - -bench CNISetup -benchtime 1x ./internal/bench/
//
// Each iteration starts a local foundation and makes the sequential adds
// (TRELLIS_BENCH_CNI_ADDS, default 100) and the burst of the full bench;
// the metrics are those of the bench's setup rows over all iterations,
// and the log has the agent's steps. Without the variable it is skipped
// (the launcher runs a trellis binary, not this test binary).
func BenchmarkCNISetup(b *testing.B) {
	exe := os.Getenv("TRELLIS_BENCH_CNI_EXE")
	if exe == "" {
		b.Skip("TRELLIS_BENCH_CNI_EXE is not set: it names the trellis binary (trellis-cni next to it) whose CNI ADD to measure")
	}
	p := paramsFor(false)
	if v := os.Getenv("TRELLIS_BENCH_CNI_ADDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAdds {
			b.Fatalf("TRELLIS_BENCH_CNI_ADDS=%q: want 1 to %d", v, maxAdds)
		}
		p.adds = n
	}
	p.starts = 20
	all := &setupResult{start: &startTimes{}}
	var cpu, burstCPU cpuTimes
	for range b.N {
		r := &run{ctx: context.Background(), prefix: NewPrefix(), out: benchLog{b}}
		s := &setupResult{}
		err := r.cniSetup(exe, p, s)
		if cerr := r.cleanup(); cerr != nil {
			b.Errorf("clean up: %v", cerr)
		}
		if left := Leftovers(r.prefix); len(left) > 0 {
			b.Errorf("namespaces left behind: %s", strings.Join(left, " "))
		}
		if err != nil {
			b.Fatal(err)
		}
		all.cni = append(all.cni, s.cni...)
		all.burst = append(all.burst, s.burst...)
		all.cniResent += s.cniResent
		all.start.plugin = append(all.start.plugin, s.start.plugin...)
		all.start.hello = append(all.start.hello, s.start.hello...)
		cpu, burstCPU = cpu.plus(s.cpu), burstCPU.plus(s.burstCPU)
		b.Logf("agent's steps, p50/p99 ms: sequential %s; at once %s", stepsOf(s.stepKeys, s.steps), stepsOf(s.stepKeys, s.burstSteps))
	}
	b.ReportMetric(percentile(all.cni, 50), "p50-ms")
	b.ReportMetric(percentile(all.cni, 99), "p99-ms")
	early, late := earlyLate(len(all.cni))
	b.ReportMetric(mean(late.of(all.cni))/mean(early.of(all.cni)), "late/early")
	b.ReportMetric(percentile(all.burst, 50), "burst-p50-ms")
	b.ReportMetric(percentile(all.burst, 99), "burst-p99-ms")
	b.ReportMetric(float64(all.cniResent), "resent")
	b.ReportMetric(median(all.start.plugin), "plugin-start-ms")
	b.ReportMetric(median(all.start.hello), "hello-start-ms")
	b.Logf("CPU per ADD: sequential %s; at once %s", cpu.per(len(all.cni)), burstCPU.per(len(all.burst)))
}

func (c cpuTimes) plus(o cpuTimes) cpuTimes {
	return cpuTimes{c.controller + o.controller, c.agent + o.agent, c.plugins + o.plugins}
}

// stepsOf formats the agent's step times as the bench's notes do.
func stepsOf(keys []string, steps map[string][]float64) string {
	var parts []string
	for _, k := range keys {
		if v := steps[k]; len(v) > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f/%.2f", k, percentile(v, 50), percentile(v, 99)))
		}
	}
	return strings.Join(parts, ", ")
}

// benchLog passes the bench's progress lines to b.Log.
type benchLog struct{ b *testing.B }

// tbLog passes progress lines to the log of a test or benchmark.
type tbLog struct{ t testing.TB }

func (w tbLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (w benchLog) Write(p []byte) (int, error) {
	w.b.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
