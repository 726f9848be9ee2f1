package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// requireTool skips the test when the command name is not installed; with
// CI=true it fails instead, saying missing (the error with the install hint).
func requireTool(t testing.TB, name string, missing error) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(missing)
	}
	t.Skip(missing)
}

// logTable logs rep as the table the bench command prints.
func logTable(t testing.TB, rep *Report) {
	t.Helper()
	var table bytes.Buffer
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
}

// wantFigures fails t for each of ids that rep has no figure of.
func wantFigures(t testing.TB, rep *Report, ids ...string) {
	t.Helper()
	have := map[string]bool{}
	for _, f := range rep.Figures {
		have[f.ID] = true
	}
	for _, id := range ids {
		if !have[id] {
			t.Errorf("no figure %s", id)
		}
	}
}

// checkJSONRoundTrip checks that rep's JSON reads back with all its figures.
func checkJSONRoundTrip(t *testing.T, rep *Report) {
	t.Helper()
	var b bytes.Buffer
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Figures) != len(rep.Figures) {
		t.Errorf("JSON round trip = %v, %d figures", err, len(back.Figures))
	}
}

// logWriter passes progress lines to t.Log and calls onLine for each.
type logWriter struct {
	t      testing.TB
	mu     sync.Mutex
	onLine func(string)
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	line := strings.TrimRight(string(b), "\n")
	w.t.Log(line)
	if w.onLine != nil {
		w.onLine(line)
	}
	return len(b), nil
}

// children lists the processes whose parent is this test process and whose
// command is iperf3.
func iperf3Children(t *testing.T) []string {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var found []string
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(iperf3") {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			found = append(found, strings.Fields(s)[0])
		}
	}
	return found
}

func TestOverlayQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	requireTool(t, "iperf3", ErrNoIPerf3)
	prefix := NewPrefix()
	rep, err := Overlay(context.Background(), OverlayOptions{Quick: true, Progress: &logWriter{t: t}, Prefix: prefix, Exe: buildTrellis(t)})
	if left := Leftovers(prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	if kids := iperf3Children(t); len(kids) > 0 {
		t.Errorf("iperf3 processes left running: %v", kids)
	}
	if err != nil {
		t.Fatalf("Overlay(quick) = %v", err)
	}
	if rep.Prefix != prefix {
		t.Errorf("report prefix = %q, want %q", rep.Prefix, prefix)
	}
	wantIDs := []string{
		"overlay/tcp-1-vs-plain", "overlay/tcp-1-vs-vxlan", "overlay/tcp-1-vs-veth", "overlay/tcp-1-plain-conntrack-vs-plain", "overlay/tcp-1-vs-plain-conntrack",
		"overlay/tcp-4-vs-plain", "overlay/tcp-4-vs-vxlan", "overlay/tcp-4-vs-veth", "overlay/tcp-4-plain-conntrack-vs-plain", "overlay/tcp-4-vs-plain-conntrack",
		"overlay/wg-tcp-1-vs-bare-wg", "overlay/wg-tcp-1-vs-off", "overlay/wg-cpu-1-vs-bare-wg",
		"overlay/wg-tcp-4-vs-bare-wg", "overlay/wg-tcp-4-vs-off", "overlay/wg-cpu-4-vs-bare-wg",
		"overlay/wg-rr-p50-vs-bare-wg", "overlay/wg-rr-p50-vs-off", "overlay/wg-rr-p99-vs-bare-wg", "overlay/wg-rr-p99-vs-off",
		"overlay/setup-p50", "overlay/setup-p99", "overlay/setup-growth", "overlay/setup-burst-p50", "overlay/setup-burst-p99", "overlay/setup-wiring-p50", "overlay/setup-wiring-growth",
		"overlay/plugin-start", "overlay/plugin-start-trellis",
	}
	var ids []string
	for _, f := range rep.Figures {
		ids = append(ids, f.ID)
		if !(f.Value > 0 && f.Baseline > 0 && f.Ratio > 0) {
			t.Errorf("figure %s: value %v, baseline %v, ratio %v; want all positive", f.ID, f.Value, f.Baseline, f.Ratio)
		}
		if (f.Goal == "") != (f.Pass == nil) {
			t.Errorf("figure %s: goal %q with pass %v", f.ID, f.Goal, f.Pass)
		}
	}
	if strings.Join(ids, " ") != strings.Join(wantIDs, " ") {
		t.Errorf("figures %v, want %v", ids, wantIDs)
	}

	var b bytes.Buffer
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Figures []struct {
			Name     string  `json:"name"`
			Value    float64 `json:"value"`
			Unit     string  `json:"unit"`
			Baseline float64 `json:"baseline"`
			Ratio    float64 `json:"ratio"`
			Goal     string  `json:"goal"`
			Pass     *bool   `json:"pass"`
		} `json:"figures"`
	}
	if err := json.Unmarshal(b.Bytes(), &parsed); err != nil {
		t.Fatalf("report JSON does not parse: %v\n%s", err, b.String())
	}
	if len(parsed.Figures) != len(wantIDs) {
		t.Errorf("report JSON has %d figures, want %d", len(parsed.Figures), len(wantIDs))
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
}

// TestOverlayCancelled cancels a run while iperf3 measures and checks that
// it stops with the context's error and leaves no namespace or process.
func TestOverlayCancelled(t *testing.T) {
	dataplanetest.RequireRoot(t)
	requireTool(t, "iperf3", ErrNoIPerf3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := NewPrefix()
	progress := &logWriter{t: t, onLine: func(line string) {
		if strings.Contains(line, "throughput run") {
			cancel() // during the measurement that follows the first
		}
	}}
	_, err := Overlay(ctx, OverlayOptions{Quick: true, Progress: progress, Prefix: prefix})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Overlay(cancelled) = %v, want context.Canceled", err)
	}
	if left := Leftovers(prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	if kids := iperf3Children(t); len(kids) > 0 {
		t.Errorf("iperf3 processes left running: %v", kids)
	}
}

func TestOverlayWithoutIPerf3(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Overlay(context.Background(), OverlayOptions{Quick: true})
	if !errors.Is(err, ErrNoIPerf3) {
		t.Fatalf("Overlay without iperf3 in PATH = %v, want %v", err, ErrNoIPerf3)
	}
	if got, want := err.Error(), "iperf3 is missing: apt-get install iperf3"; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}
}

// buildTrellis builds the trellis binary for the benches' local
// foundations, with trellis-cni next to it (the plugin they install), and
// returns its path.
func buildTrellis(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	exe := filepath.Join(dir, "trellis")
	// Static, as the README builds them.
	build := exec.Command("go", "build", "-o", dir+"/",
		"github.com/trellis-c2c/trellis/cmd/trellis", "github.com/trellis-c2c/trellis/cmd/trellis-cni")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build trellis: %v\n%s", err, out)
	}
	return exe
}
