package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// Down stops everything the foundation of stateDir runs — agents, app
// instances, the controller — and deletes all its namespaces. With purge it
// also deletes the state dir. It goes on past errors and reports them all.
func Down(ctx context.Context, stateDir string, purge bool, progress io.Writer) error {
	step := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	f, err := Load(stateDir)
	if errors.Is(err, fs.ErrNotExist) {
		if purge {
			return os.RemoveAll(stateDir)
		}
		return fmt.Errorf("no foundation in %s (nothing to take down)", stateDir)
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range f.Cells {
		// The agent started, or any restarted by hand on the same state dir.
		for _, pid := range daemons("agent", c.StateDir) {
			step("stopping the agent of %s (pid %d)", c.Name, pid)
			errs = append(errs, stop(pid, 5*time.Second))
		}
	}
	for _, c := range f.Cells {
		dirs, _ := filepath.Glob(filepath.Join(c.StateDir, "instances", "*"))
		for _, d := range dirs {
			p, err := executor.Adopt(d)
			if err != nil {
				continue
			}
			step("stopping instance %s on %s (pid %d)", filepath.Base(d), c.Name, p.PID())
			errs = append(errs, p.Stop(ctx, 3*time.Second))
		}
	}
	names := ownNamespaces(f.Prefix)
	for _, pid := range processesIn(names) {
		step("stopping process %d left in the foundation's namespaces", pid)
		errs = append(errs, stop(pid, 2*time.Second))
	}
	for _, d := range f.ControllerDirs() {
		for _, pid := range daemons("controller", d) {
			step("stopping the controller of %s (pid %d)", d, pid)
			errs = append(errs, stop(pid, 5*time.Second))
		}
	}
	if len(names) > 0 {
		step("deleting %d namespaces %s-*", len(names), f.Prefix)
	}
	for _, n := range names {
		errs = append(errs, netns.Delete(n))
	}
	for _, c := range f.Cells {
		os.Remove(c.Socket)
	}
	errs = append(errs, os.Remove(filepath.Join(stateDir, FoundationFile)))
	if purge {
		step("removing %s", stateDir)
		errs = append(errs, os.RemoveAll(stateDir))
	}
	return errors.Join(errs...)
}

// daemons lists the running `trellis ROLE ... --state-dir DIR` processes:
// those of this foundation, whoever started them.
func daemons(role, dir string) []int {
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) < 2 || args[1] != role || !running(pid) {
			continue
		}
		for i := 2; i+1 < len(args); i++ {
			if args[i] == "--state-dir" && args[i+1] == dir {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// ownNamespaces lists the named namespaces whose names start with prefix-.
func ownNamespaces(prefix string) []string {
	entries, _ := os.ReadDir(netns.Dir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// processesIn lists the processes whose network namespace is one of names.
func processesIn(names []string) []int {
	inodes := map[uint64]bool{}
	for _, n := range names {
		var st unix.Stat_t
		if unix.Stat(netns.Path(n), &st) == nil {
			inodes[st.Ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	procs, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && inodes[st.Ino] {
			out = append(out, pid)
		}
	}
	return out
}

// stop sends SIGTERM to pid, then SIGKILL after grace, and waits for it.
func stop(pid int, grace time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("stop pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !running(pid) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100 && running(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return !(i > 0 && i+2 < len(s) && s[i+2] == 'Z')
}
