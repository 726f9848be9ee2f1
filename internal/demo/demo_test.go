package demo

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/launcher"
)

// TestPreflightCleansAStaleDemo: a demo killed before it could tear down
// leaves its state dir; the next demo says so and cleans it up itself.
// (Its namespaces and processes go with it through launcher.Down, which
// the launcher's tests check.)
func TestPreflightCleansAStaleDemo(t *testing.T) {
	dataplanetest.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "demo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A controller that is gone: a PID no process has.
	stale := launcher.Foundation{Prefix: "trellis-000000", StateDir: dir, Controller: launcher.Process{PID: 1 << 22}}
	b, _ := json.Marshal(stale)
	if err := os.WriteFile(filepath.Join(dir, launcher.FoundationFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := preflight(Options{StateDir: dir, Out: &out}); err != nil {
		t.Fatalf("preflight over a stale demo = %v, want it cleaned up", err)
	}
	if !strings.Contains(out.String(), "cleaned up a stale demo foundation in "+dir) {
		t.Errorf("preflight said %q, want it to say it cleaned up", out.String())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("stale state dir: %v, want it removed", err)
	}
}

// TestPreflightRefusesARunningDemo: over a demo that still runs (--keep),
// preflight changes nothing and says how to stop it.
func TestPreflightRefusesARunningDemo(t *testing.T) {
	dataplanetest.RequireRoot(t)
	dir := t.TempDir()
	// A process whose command line is "sh controller" plays the running
	// controller (the launcher recognises its daemons by their role).
	if err := os.WriteFile(filepath.Join(dir, "controller"), []byte("sleep 60\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := exec.Command("sh", "controller")
	ctl.Dir = dir
	ctl.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-ctl.Process.Pid, syscall.SIGKILL); ctl.Wait() })
	// Its command line reads empty for a moment after Start returns (the
	// kernel sets it up after the exec pipe closes): wait until it is set,
	// as it long is for a demo that runs.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", ctl.Process.Pid))
		if string(b) == "sh\x00controller\x00" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: command line %q, want sh controller", ctl.Process.Pid, b)
		}
	}
	running := launcher.Foundation{Prefix: "trellis-000001", StateDir: dir, Controller: launcher.Process{PID: ctl.Process.Pid}}
	b, _ := json.Marshal(running)
	if err := os.WriteFile(filepath.Join(dir, launcher.FoundationFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	err := preflight(Options{StateDir: dir, Out: &strings.Builder{}})
	if err == nil || !strings.Contains(err.Error(), "trellis down --purge --state-dir "+dir) {
		t.Fatalf("preflight over a running demo = %v, want how to stop it", err)
	}
	if _, err := os.Stat(filepath.Join(dir, launcher.FoundationFile)); err != nil {
		t.Errorf("preflight touched the running demo: %v", err)
	}
}
