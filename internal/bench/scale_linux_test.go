package bench

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestScaleQuick runs the quick scale bench end to end on a real local
// foundation (the trellis binary is built for it) and checks that every
// figure is there.
func TestScaleQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	exe := buildTrellis(t)
	rep, err := Scale(t.Context(), ScaleOptions{Quick: true, Exe: exe, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("Scale = %v", err)
	}
	wantFigures(t, rep, "scale/api-app-create", "scale/api-policy-create", "scale/policy-add-enforced-p50",
		"scale/policy-add-enforced-p99", "scale/policy-add-cells-woken", "scale/policy-add-bytes-per-cell",
		"scale/policy-add-bytes-vs-size", "scale/policy-add-controller-cpu", "scale/policy-add-agent-cpu",
		"scale/route-change-bytes-per-cell", "scale/route-change-controller-cpu", "scale/route-change-agent-cpu",
		"scale/route-change-dns-p99", "scale/agent-cold-start", "scale/controller-rss", "scale/agent-rss")
	for _, f := range rep.Figures {
		// CPU per change is a process's CPU clock less an idle rate: at
		// the quick sizes (three cells, a small store) the idle window's
		// noise (a garbage collection) can outweigh a change.
		if f.Value <= 0 && !strings.HasSuffix(f.ID, "-cpu") {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
		// Deltas: a change costs a cell less than its whole state.
		if strings.HasSuffix(f.ID, "-bytes-per-cell") && f.Value >= f.Baseline {
			t.Errorf("figure %s = %v bytes, want less than the whole states' %v", f.ID, f.Value, f.Baseline)
		}
	}
	for _, n := range rep.Notes {
		t.Log(n)
	}
	checkJSONRoundTrip(t, rep)
}

// TestCPUNanos checks the bench's CPU clock of a process: another process's
// (a child that spins) advances while it runs, in nanoseconds, and agrees
// with what the kernel counts in /proc/PID/stat's ticks; a process that
// does not exist is an error.
func TestCPUNanos(t *testing.T) {
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; read x")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	first, err := cpuNanos(cmd.Process.Pid)
	if err != nil {
		t.Fatalf("cpuNanos(child) = %v", err)
	}
	// Wait until the loop is done: the child then blocks on its input.
	var last int64
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "S" {
			if last, err = cpuNanos(cmd.Process.Pid); err != nil {
				t.Fatal(err)
			}
			ticks := statTicks(t, string(b))
			// The ticks are the same clock, rounded down to 10 ms.
			if last < ticks*10e6 || last-first <= 0 {
				t.Errorf("cpuNanos = %d then %d; want more, and at least /proc/PID/stat's %d ticks of 10 ms", first, last, ticks)
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	const noPID = 1<<22 + 1 // above PID_MAX_LIMIT
	if _, err := cpuNanos(noPID); err == nil {
		t.Errorf("cpuNanos(no such process) = nil error")
	}
}

// statTicks returns utime + stime from a /proc/PID/stat line.
func statTicks(t *testing.T, s string) int64 {
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	k, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("parse %q: %v %v", s, err1, err2)
	}
	return u + k
}
