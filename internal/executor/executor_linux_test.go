package executor_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/netns"
	"golang.org/x/sys/unix"
)

// startAndExitCommand makes the test binary a caller that starts an
// instance and exits, as an agent killed with -9 would: the instance must
// live on, and Adopt must find it.
const startAndExitCommand = "executor-test-start-and-exit"

// execSharedCommand makes the test binary Exec from a mount namespace of
// its own whose mounts are shared, as on a systemd host (this machine's are
// private), and fail if a mount propagates back to it.
const execSharedCommand = "executor-test-exec-shared"

// helperSpec is what the test sends startAndExit on stdin.
type helperSpec struct {
	executor.Spec
	Resolv []byte
}

func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case executor.InitCommand:
			os.Exit(executor.InitMain(os.Args[2:]))
		case startAndExitCommand:
			os.Exit(startAndExit())
		case execSharedCommand:
			os.Exit(execShared())
		case probeCommand:
			os.Exit(probe())
		}
	}
	if os.Geteuid() == 0 {
		// Instances orphaned by startAndExit become our children instead
		// of the machine's init's, so that this process can reap them.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "set child subreaper: %v\n", err)
			os.Exit(1)
		}
	}
	code := dataplanetest.Run(m)
	if left := liveChildren(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "processes left behind: %v\n", left)
		for _, pid := range left {
			unix.Kill(pid, unix.SIGKILL)
		}
		code = 1
	}
	for {
		if pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil); pid <= 0 || err != nil {
			break
		}
	}
	os.Exit(code)
}

func startAndExit() int {
	var hs helperSpec
	if err := json.NewDecoder(os.Stdin).Decode(&hs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hs.Spec.ResolvConf = hs.Resolv
	p, err := executor.Start(hs.Spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(p.PID())
	return 0
}

func execShared() int {
	var hs helperSpec
	if err := json.NewDecoder(os.Stdin).Decode(&hs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hs.Spec.ResolvConf = hs.Resolv
	// Private first: this namespace's copies must leave the host's peer
	// groups before they are made shared among themselves.
	for _, flags := range []uintptr{unix.MS_REC | unix.MS_PRIVATE, unix.MS_REC | unix.MS_SHARED} {
		if err := unix.Mount("", "/", "", flags, ""); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	before, _ := os.ReadFile("/proc/self/mountinfo")
	if !bytes.Contains(before, []byte(" shared:")) {
		fmt.Fprintln(os.Stderr, "mounts are not shared")
		return 1
	}
	before = withoutForeignNetns(before)
	code, err := executor.Exec(context.Background(), hs.Spec, nil, os.Stdout, os.Stderr, []string{"cat", "/etc/resolv.conf"})
	if err != nil || code != 0 {
		fmt.Fprintln(os.Stderr, code, err)
		return 1
	}
	after, _ := os.ReadFile("/proc/self/mountinfo")
	after = withoutForeignNetns(after)
	if !bytes.Equal(before, after) {
		fmt.Fprintf(os.Stderr, "mounts changed:\n%s", cmp.Diff(string(before), string(after)))
		return 1
	}
	return 0
}

// withoutForeignNetns drops the mountinfo lines of named namespaces that
// other tests on the machine create and delete meanwhile (/run/netns is a
// shared mount, so their churn reaches this copy too).
func withoutForeignNetns(mountinfo []byte) []byte {
	var out []byte
	for l := range strings.Lines(string(mountinfo)) {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], netns.Dir+"/") && !strings.HasPrefix(f[4], netns.Path(dataplanetest.Prefix)) {
			continue
		}
		out = append(out, l...)
	}
	return out
}

// liveChildren lists this process's children that are not zombies.
func liveChildren() []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 || f[0] == "Z" || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		pids = append(pids, pid)
	}
	return pids
}

// newNetns creates a network namespace that is deleted when the test ends,
// and checks then that the test left no mount in this process's view.
func newNetns(t *testing.T, name string) string {
	t.Helper()
	path := dataplanetest.Namespace(t, name)
	before := mountinfo(t)
	t.Cleanup(func() {
		if diff := cmp.Diff(before, mountinfo(t)); diff != "" {
			t.Errorf("mounts of the test process changed (-before +after):\n%s", diff)
		}
	})
	return path
}

// mountinfo returns the mount points of this process, leaving out the
// namespaces that other test runs on the machine create and delete.
func mountinfo(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if strings.HasPrefix(f[4], netns.Dir+"/") && !strings.HasPrefix(f[4], netns.Path(dataplanetest.Prefix)) {
			continue
		}
		lines = append(lines, strings.Join(f[3:], " ")) // without mount IDs
	}
	return lines
}

// netnsInode returns what readlink /proc/PID/ns/net says for the namespace
// at path: net:[INODE].
func netnsInode(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

const testResolv = "nameserver 169.254.0.2\nsearch apps.internal\n"

func newSpec(t *testing.T, nsPath string, command ...string) executor.Spec {
	t.Helper()
	dir := t.TempDir()
	return executor.Spec{
		ID:         "instance-" + filepath.Base(dir),
		NetNS:      nsPath,
		Command:    command,
		Env:        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		ResolvConf: []byte(testResolv),
		LogPath:    filepath.Join(dir, "log", "instance.log"),
		StateDir:   filepath.Join(dir, "state"),
	}
}

// stopAtEnd stops p when the test ends, whatever happened.
func stopAtEnd(t *testing.T, p *executor.Process) {
	t.Cleanup(func() {
		if err := p.Stop(context.Background(), 0); err != nil {
			t.Error(err)
		}
	})
}

// waitFor polls cond until it is true, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitDone(t *testing.T, p *executor.Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d: Done not closed after 10s", p.PID())
	}
}

// alive reports whether pid runs (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return f[0] != "Z" && f[0] != "X"
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// interfaces returns the interface names in a /proc/net/dev listing.
func interfaces(netdev string) []string {
	var names []string
	sc := bufio.NewScanner(strings.NewReader(netdev))
	for sc.Scan() {
		if name, _, ok := strings.Cut(sc.Text(), ":"); ok {
			names = append(names, strings.TrimSpace(name))
		}
	}
	slices.Sort(names)
	return names
}

// logLines polls the log at path until it has a line "ready", failing
// the test after 10 seconds, and returns its "key: value" lines.
func logLines(t *testing.T, path string) map[string]string {
	t.Helper()
	var b []byte
	waitFor(t, "the instance to be ready", func() bool {
		b, _ = os.ReadFile(path)
		return bytes.Contains(b, []byte("\nready\n")) || bytes.HasPrefix(b, []byte("ready\n"))
	})
	lines := map[string]string{}
	for l := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ": "); ok {
			lines[k] = v
		}
	}
	return lines
}

// pidNamespace returns the inode of the PID namespace of pid.
func pidNamespace(t *testing.T, pid int) string {
	t.Helper()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// inPIDNamespace lists the processes of the machine in PID namespace ns.
func inPIDNamespace(ns string) []int {
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		if l, err := os.Readlink(d + "/ns/pid"); err == nil && l == ns {
			pid, _ := strconv.Atoi(filepath.Base(d))
			if alive(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func TestStartStop(t *testing.T) {
	dataplanetest.RequireRoot(t)
	hostResolv := readFile(t, "/etc/resolv.conf")
	ns := newNetns(t, "start")
	spec := newSpec(t, ns, "/bin/sh", "-c", `
		echo "resolv: $(cat /etc/resolv.conf | tr '\n' ' ')"
		echo "netdev: $(tail -n +3 /proc/self/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
		echo "netns: $(readlink /proc/self/ns/net)"
		echo "env: $GREETING"
		echo "pwd: $(pwd)"
		echo "uid: $(id -u) $(id -g) $(id -G)"
		echo "user: $(id -un) $(id -gn) $HOME"
		echo "hostname: $(hostname)"
		echo to-stderr >&2
		sleep 1000 &
		echo ready
		wait`)
	spec.Env = append(spec.Env, "GREETING=hello instance", "HOME="+executor.Home)
	spec.Dir = "/etc"

	p, err := executor.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, p)
	got := logLines(t, spec.LogPath)
	uid := strconv.Itoa(executor.UserID(spec.ID))
	want := map[string]string{
		"resolv":   strings.ReplaceAll(testResolv, "\n", " "),
		"netdev":   "lo ",
		"netns":    netnsInode(t, ns),
		"env":      "hello instance",
		"pwd":      "/etc",
		"uid":      uid + " " + uid + " " + uid,
		"user":     "vcap vcap " + executor.Home,
		"hostname": spec.ID,
	}
	for k, v := range want {
		if strings.TrimSpace(got[k]) != strings.TrimSpace(v) {
			t.Errorf("instance %s = %q, want %q", k, got[k], v)
		}
	}
	if log := readFile(t, spec.LogPath); !strings.Contains(log, "to-stderr\n") {
		t.Errorf("log = %q, want the command's stderr in it", log)
	}
	if got := readFile(t, "/etc/resolv.conf"); got != hostResolv {
		t.Errorf("host /etc/resolv.conf = %q, want %q", got, hostResolv)
	}
	if p.ExitCode() != -1 {
		t.Errorf("ExitCode() of a running instance = %d, want -1", p.ExitCode())
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:])); f[19] != strconv.FormatUint(p.StartTime(), 10) {
		t.Errorf("StartTime() = %d, /proc says %s", p.StartTime(), f[19])
	}
	// The record names the process.
	var rec map[string]any
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(spec.StateDir, "process.json"))), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["id"] != spec.ID || rec["pid"] != float64(p.PID()) || rec["netns"] != ns || rec["start_time"] != float64(p.StartTime()) {
		t.Errorf("record = %v, want id %s, pid %d, netns %s, start time %d", rec, spec.ID, p.PID(), ns, p.StartTime())
	}
	if _, err := executor.Start(spec); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Start on one state dir = %v, want an already-running error", err)
	}

	// The instance's init, sh and sleep run in the instance's PID namespace.
	pidns := pidNamespace(t, p.PID())
	if pids := inPIDNamespace(pidns); len(pids) != 3 {
		t.Errorf("processes in the instance's PID namespace = %v, want init, sh and sleep", pids)
	}
	if err := p.Stop(t.Context(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if got, want := p.ExitCode(), 128+int(syscall.SIGTERM); got != want {
		t.Errorf("ExitCode() after Stop = %d, want %d", got, want)
	}
	if pids := inPIDNamespace(pidns); len(pids) != 0 {
		t.Errorf("after Stop: processes %v still run in the instance's PID namespace", pids)
	}
	if _, err := os.Stat(filepath.Join(spec.StateDir, "process.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("record after Stop: %v, want it removed", err)
	}
	if err := p.Stop(t.Context(), time.Second); err != nil {
		t.Errorf("second Stop = %v, want nil", err)
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "kill")
	// Ignoring SIGTERM is inherited by the sleeps, so only SIGKILL ends it.
	spec := newSpec(t, ns, "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 0.05; done`)
	p, err := executor.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, p)
	logLines(t, spec.LogPath)
	if err := p.Stop(t.Context(), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got, want := p.ExitCode(), 128+int(syscall.SIGKILL); got != want {
		t.Errorf("ExitCode() after Stop = %d, want %d", got, want)
	}
}

func TestExitDetected(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "exit")
	spec := newSpec(t, ns, "sh", "-c", "exit 7")
	p, err := executor.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, p)
	waitDone(t, p)
	if got := p.ExitCode(); got != 7 {
		t.Errorf("ExitCode() = %d, want 7", got)
	}
	if err := p.Stop(t.Context(), time.Second); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(spec.StateDir); len(entries) != 0 {
		t.Errorf("state dir after Stop has %v, want nothing", entries)
	}
}

func TestStartFails(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "fail")
	tests := []struct {
		name    string
		spec    executor.Spec
		wantErr string
	}{
		{"command not found", newSpec(t, ns, "no-such-command-here"), "no-such-command-here: command not found"},
		{"no netns", newSpec(t, netns.Path(dataplanetest.Prefix+"missing"), "true"), "no such file"},
		{"missing mount source", func() executor.Spec {
			s := newSpec(t, ns, "true")
			s.Mounts = []executor.Mount{{Source: "/nonexistent/source", Target: filepath.Join(t.TempDir(), "x")}}
			return s
		}(), "/nonexistent/source"},
		{"no command", newSpec(t, ns), "no command"},
		{"relative mount", func() executor.Spec {
			s := newSpec(t, ns, "true")
			s.Mounts = []executor.Mount{{Source: "relative", Target: "/x"}}
			return s
		}(), "must be absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := executor.Start(tt.spec)
			if err == nil {
				p.Stop(context.Background(), 0)
				t.Fatalf("Start(%v) succeeded, want error %q", tt.spec.Command, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Start(%v) = %v, want error with %q", tt.spec.Command, err, tt.wantErr)
			}
			if entries, _ := os.ReadDir(tt.spec.StateDir); len(entries) != 0 {
				t.Errorf("state dir after a failed Start has %v, want nothing", entries)
			}
		})
	}
}

// startInHelper starts spec from another process that exits at once, as
// an agent that is killed, and returns the instance's PID.
func startInHelper(t *testing.T, spec executor.Spec) int {
	t.Helper()
	in, err := json.Marshal(helperSpec{Spec: spec, Resolv: spec.ResolvConf})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", startAndExitCommand)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("start in helper: %v: %s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("helper printed %q", out)
	}
	t.Cleanup(func() { unix.Kill(-pid, unix.SIGKILL) }) // in case the test fails before Stop
	return pid
}

func TestAdoptAfterRestart(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "adopt")
	spec := newSpec(t, ns, "sleep", "1000")
	spec.Mounts = []executor.Mount{{Source: t.TempDir(), Target: filepath.Join(t.TempDir(), "creds")}}
	pid := startInHelper(t, spec)

	p, err := executor.Adopt(spec.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() != pid {
		t.Errorf("Adopt: PID() = %d, want %d", p.PID(), pid)
	}
	if diff := cmp.Diff(spec, p.Spec()); diff != "" {
		t.Errorf("Adopt: Spec() mismatch (-want +got):\n%s", diff)
	}
	select {
	case <-p.Done():
		t.Fatal("Done closed for a running instance")
	default:
	}
	// The adopted spec is enough to exec in the instance.
	var out bytes.Buffer
	code, err := executor.Exec(t.Context(), p.Spec(), nil, &out, &out, []string{"readlink", "/proc/self/ns/net"})
	if err != nil || code != 0 || strings.TrimSpace(out.String()) != netnsInode(t, ns) {
		t.Errorf("Exec with the adopted spec = %d, %v, output %q; want 0, nil, %s", code, err, out.String(), netnsInode(t, ns))
	}

	if err := p.Stop(t.Context(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if alive(pid) {
		t.Errorf("pid %d alive after Stop", pid)
	}
	if p.ExitCode() != -1 {
		t.Errorf("ExitCode() of an adopted process = %d, want -1 (unknown)", p.ExitCode())
	}
	if _, err := executor.Adopt(spec.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Adopt after Stop = %v, want a missing record", err)
	}
}

func TestAdoptedExitDetected(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "adoptexit")
	spec := newSpec(t, ns, "sleep", "1000")
	pid := startInHelper(t, spec)
	p, err := executor.Adopt(spec.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, p)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	if _, err := executor.Adopt(spec.StateDir); !errors.Is(err, executor.ErrNotRunning) {
		t.Errorf("Adopt of an exited instance = %v, want ErrNotRunning", err)
	}
}

// TestAdoptChecksStartTime needs no root: a record whose PID runs but
// started at another time names a reused PID.
func TestAdoptChecksStartTime(t *testing.T) {
	dir := t.TempDir()
	rec := fmt.Sprintf(`{"id":"x","pid":%d,"start_time":1,"netns":"/run/netns/x","command":["sleep"],"state_dir":%q}`, os.Getpid(), dir)
	if err := os.WriteFile(filepath.Join(dir, "process.json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := executor.Adopt(dir); !errors.Is(err, executor.ErrNotRunning) {
		t.Errorf("Adopt of a reused PID = %v, want ErrNotRunning", err)
	}
}

func TestExec(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "exec")
	tmp := t.TempDir()
	secret := filepath.Join(tmp, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := newSpec(t, ns)
	if err := os.Chown(secret, executor.UserID(spec.ID), executor.UserID(spec.ID)); err != nil {
		t.Fatal(err)
	}
	// Missing, and under the instance's private /tmp: made there.
	target := filepath.Join(tmp, "inside", "creds", "cred.txt")
	spec.Mounts = []executor.Mount{{Source: secret, Target: target}}
	spec.Env = append(spec.Env, "T="+target)
	spec.Dir = filepath.Dir(target)
	hostResolv := readFile(t, "/etc/resolv.conf")

	var stdout, stderr bytes.Buffer
	code, err := executor.Exec(t.Context(), spec, strings.NewReader("from stdin\n"), &stdout, &stderr, []string{"sh", "-c", `
		cat
		cat /etc/resolv.conf
		cat "$T"
		echo x > "$T" && echo WRITABLE
		readlink /proc/self/ns/net
		pwd
		echo oops >&2
		exit 3`})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Errorf("Exec exit code = %d, want 3", code)
	}
	want := "from stdin\n" + testResolv + "s3cret\n" + netnsInode(t, ns) + "\n" + spec.Dir + "\n"
	if got := stdout.String(); got != want {
		t.Errorf("Exec stdout = %q, want %q", got, want)
	}
	if got := stderr.String(); !strings.Contains(got, "Read-only file system") || !strings.HasSuffix(got, "oops\n") {
		t.Errorf("Exec stderr = %q, want a read-only error and oops", got)
	}
	if _, err := os.Stat(filepath.Join(tmp, "inside")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mount target on the host: %v, want none (it is on the instance's /tmp)", err)
	}
	if got := readFile(t, "/etc/resolv.conf"); got != hostResolv {
		t.Errorf("host /etc/resolv.conf after Exec = %q, want %q", got, hostResolv)
	}
}

// TestNoMountPropagation checks that the instance's mounts stay in its
// mount namespace even when the caller's mounts are shared.
func TestNoMountPropagation(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "shared")
	spec := newSpec(t, ns)
	spec.Mounts = []executor.Mount{{Source: t.TempDir(), Target: filepath.Join(t.TempDir(), "creds")}}
	in, err := json.Marshal(helperSpec{Spec: spec, Resolv: spec.ResolvConf})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", execSharedCommand)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS}
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("exec from a shared mount namespace: %v\n%s", err, stderr.String())
	}
	if string(out) != testResolv {
		t.Errorf("instance /etc/resolv.conf = %q, want %q", out, testResolv)
	}
}

func TestExecFails(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "execfail")
	spec := newSpec(t, ns)
	if code, err := executor.Exec(t.Context(), spec, nil, nil, nil, []string{"no-such-command-here"}); err == nil {
		t.Errorf("Exec of a missing command = %d, nil; want an error", code)
	}
	if code, err := executor.Exec(t.Context(), spec, nil, nil, nil, nil); err == nil {
		t.Errorf("Exec with no command = %d, nil; want an error", code)
	}
}

func TestExecDoesNotWaitForStdin(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "stdin")
	stdin, w := io.Pipe() // never written: stdin never ends
	defer w.Close()
	done := make(chan error, 1)
	go func() {
		code, err := executor.Exec(t.Context(), newSpec(t, ns), stdin, nil, nil, []string{"true"})
		if err == nil && code != 0 {
			err = fmt.Errorf("exit code %d", code)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Exec(true) with an endless stdin = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exec(true) with an endless stdin did not return")
	}
}

func TestExecCancel(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "cancel")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	code, err := executor.Exec(ctx, newSpec(t, ns), nil, nil, nil, []string{"sleep", "1000"})
	if !errors.Is(err, context.DeadlineExceeded) || code != 128+int(syscall.SIGKILL) {
		t.Errorf("Exec(sleep) past its deadline = %d, %v; want %d, deadline exceeded", code, err, 128+int(syscall.SIGKILL))
	}
}
