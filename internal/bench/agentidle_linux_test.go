package bench

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// BenchmarkAgentIdle measures what the agent of the TLS bench's cell2 (the
// one hosting the terminator measured) does with no traffic: its CPU time
// and context switches per second over TRELLIS_BENCH_IDLE_SECONDS (default
// 10), on the TLS bench's foundation (two cells, its apps, the agent pinned
// to a CPU of its own), with the trellis binary TRELLIS_BENCH_TLS_EXE names:
//
//	TRELLIS_BENCH_TLS_EXE=/tmp/a/trellis go test -run - -bench AgentIdle -benchtime 1x -v ./internal/bench/
//
// Work the agent does unasked holds its only P (GOMAXPROCS=1 when pinned)
// while a request to 61443 may wait: this is the figure that shows it.
// With TRELLIS_BENCH_IDLE_PERF set, the idle seconds are also recorded with
// perf record (its switches, and a sample each 50 µs of CPU, with stacks)
// on the agent's CPU into that file:
// perf script then gives each run of the agent's threads, its length and
// where it went to sleep.
func BenchmarkAgentIdle(b *testing.B) {
	exe := os.Getenv("TRELLIS_BENCH_TLS_EXE")
	if exe == "" {
		b.Skip("TRELLIS_BENCH_TLS_EXE is not set: it names the trellis binary whose agent to measure")
	}
	dataplanetest.RequireRoot(b)
	requireTool(b, "haproxy", ErrNoHAProxy)
	secs := 10
	if v := os.Getenv("TRELLIS_BENCH_IDLE_SECONDS"); v != "" {
		var err error
		if secs, err = strconv.Atoi(v); err != nil || secs < 1 {
			b.Fatalf("TRELLIS_BENCH_IDLE_SECONDS=%q: want a positive number", v)
		}
	}
	var cpuPerS, switchesPerS float64
	for range b.N {
		r := &tlsRun{ctx: context.Background(), out: io.Writer(tbLog{b}), p: tlsParamsFor(true),
			rep: &Report{Bench: "tls", Samples: map[string][]float64{}}}
		err := func() error {
			if err := r.foundation(exe); err != nil {
				return err
			}
			if err := r.apps(); err != nil {
				return err
			}
			if err := r.pin(); err != nil {
				return err
			}
			time.Sleep(3 * time.Second) // the runtime follows the pinning; start-up work ends
			var perf *exec.Cmd
			if out := os.Getenv("TRELLIS_BENCH_IDLE_PERF"); out != "" {
				perf = exec.Command("perf", "record", "-e", "sched:sched_switch", "-e", "cpu-clock", "-c", "50000", "-g", "-o", out, "-C", strconv.Itoa(r.srv), "--", "sleep", strconv.Itoa(secs))
			}
			cpu0, sw0 := threadsWork(r.agent)
			if perf != nil {
				if out, err := perf.CombinedOutput(); err != nil {
					b.Logf("perf record: %v: %s", err, out)
				}
			} else {
				time.Sleep(time.Duration(secs) * time.Second)
			}
			cpu1, sw1 := threadsWork(r.agent)
			c := (cpu1 - cpu0).Seconds() * 1000 / float64(secs)
			s := float64(sw1-sw0) / float64(secs)
			b.Logf("IDLE agent pid %d over %d s: %.2f ms CPU/s, %.1f switches/s; load %v", r.agent, secs, c, s, loadavg())
			cpuPerS += c
			switchesPerS += s
			return nil
		}()
		for i := len(r.undo) - 1; i >= 0; i-- {
			r.undo[i]()
		}
		if r.rep.Prefix != "" {
			if left := Leftovers(r.rep.Prefix); len(left) > 0 {
				b.Errorf("namespaces left behind: %v", left)
			}
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(cpuPerS/float64(b.N), "agent-cpu-ms/s")
	b.ReportMetric(switchesPerS/float64(b.N), "agent-switches/s")
}
