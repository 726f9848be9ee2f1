package executor

import (
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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/netns"
	"golang.org/x/sys/unix"
)

// Process is a running instance: one that Start started or Adopt found.
type Process struct {
	pid       int
	startTime uint64
	spec      Spec

	done     chan struct{}
	exitCode int // valid after done; -1 when unknown

	stopMu  sync.Mutex
	stopped bool
}

// PID returns the process ID of the instance, which is also the ID of its
// process group and session.
func (p *Process) PID() int { return p.pid }

// StartTime returns when the process started, in clock ticks after boot
// (field 22 of /proc/PID/stat); with the PID it names the process uniquely.
func (p *Process) StartTime() uint64 { return p.startTime }

// Spec returns the spec the instance was started with. After Adopt,
// ResolvConf is read back from the state directory.
func (p *Process) Spec() Spec { return p.spec }

// Done is closed when the instance's process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitCode returns the exit status of a process that Start started, after
// Done is closed: its exit code, or 128+N when signal N killed it. It
// returns -1 while the process runs and for an adopted process, whose
// status only its parent could collect.
func (p *Process) ExitCode() int {
	select {
	case <-p.done:
		return p.exitCode
	default:
		return -1
	}
}

// Start starts the instance described by spec in its network namespace and
// new mount, PID, UTS and IPC namespaces, unprivileged (see the package
// documentation), as the leader of a new session, and records it in
// spec.StateDir. The recorded process is the instance's init (see
// InitMain); the command is its child. It returns once the instance's command has been executed,
// or with an error if setting up its namespace or finding its command
// failed. The instance is not tied to the caller: it keeps running when the
// caller exits, and Adopt finds it again.
func Start(spec Spec) (*Process, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if len(spec.Command) == 0 {
		return nil, fmt.Errorf("instance %s: no command", spec.ID)
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("instance %s: %w", spec.ID, err)
	}
	if p, err := Adopt(spec.StateDir); err == nil {
		return nil, fmt.Errorf("instance %s is already running as pid %d", spec.ID, p.pid)
	}

	log, err := openLog(spec.LogPath)
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", spec.ID, err)
	}
	defer log.Close()
	cmd, err := initCmd(context.Background(), spec, spec.Command, false)
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", spec.ID, err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: namespaces, Setsid: true}
	if err := run(cmd, spec.NetNS); err != nil {
		removeFiles(spec.StateDir)
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}

	p := &Process{pid: cmd.Process.Pid, spec: spec, done: make(chan struct{}), exitCode: -1}
	// The process is ours until we Wait for it, so its stat stays readable.
	st, err := readStat(p.pid)
	if err == nil {
		p.startTime = st.startTime
		err = writeRecord(record{PID: p.pid, StartTime: p.startTime, Spec: spec})
	}
	if err != nil {
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		_ = cmd.Wait()
		removeFiles(spec.StateDir)
		return nil, fmt.Errorf("start instance %s: %w", spec.ID, err)
	}
	go func() {
		_ = cmd.Wait()
		p.exitCode = exitCode(cmd.ProcessState)
		close(p.done)
	}()
	return p, nil
}

// Exec runs command once inside the instance of spec: in its network
// namespace, as its user and as unprivileged (see the package
// documentation), with its environment, working directory, hostname and a
// mount view like the instance's (its own mount namespace with the same
// mounts), and with the given streams (nil means /dev/null). The command
// has a PID namespace, /tmp and /home of its own: it does not see the
// instance's processes or temporary files. It returns the command's
// exit code, or 128+N when signal N killed it; an error means the command
// could not be run. Cancelling ctx kills the command.
//
// Exec returns when the command exits: it does not wait for stdin to reach
// end of file (a copy blocked reading stdin ends when stdin does), and it
// waits at most a second for output that processes left behind by the
// command still write.
func Exec(ctx context.Context, spec Spec, stdin io.Reader, stdout, stderr io.Writer, command []string) (int, error) {
	return execIn(ctx, spec, false, stdin, stdout, stderr, command)
}

// ExecAsRoot is Exec for operators: the command runs as root with every
// capability (in the instance's namespaces, with its mounts), as
// `trellis exec --root` does for an admin. Never run an app's command so.
func ExecAsRoot(ctx context.Context, spec Spec, stdin io.Reader, stdout, stderr io.Writer, command []string) (int, error) {
	return execIn(ctx, spec, true, stdin, stdout, stderr, command)
}

// namespaces are those that instance-init gets of its own: all but the
// network namespace, which it inherits from the thread that starts it.
const namespaces = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

func execIn(ctx context.Context, spec Spec, root bool, stdin io.Reader, stdout, stderr io.Writer, command []string) (int, error) {
	if err := spec.validate(); err != nil {
		return -1, err
	}
	if len(command) == 0 {
		return -1, fmt.Errorf("exec in instance %s: no command", spec.ID)
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return -1, fmt.Errorf("exec in instance %s: %w", spec.ID, err)
	}
	cmd, err := initCmd(ctx, spec, command, root)
	if err != nil {
		return -1, fmt.Errorf("exec in instance %s: %w", spec.ID, err)
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: namespaces}

	// Feed stdin through a pipe of our own that is closed when the
	// command exits, so that Exec does not wait for stdin to end.
	var stdinW *os.File
	switch in := stdin.(type) {
	case nil:
	case *os.File:
		cmd.Stdin = in
	default:
		r, w, err := os.Pipe()
		if err != nil {
			return -1, fmt.Errorf("exec in instance %s: %w", spec.ID, err)
		}
		defer r.Close()
		cmd.Stdin, stdinW = r, w
	}
	if err := run(cmd, spec.NetNS); err != nil {
		if stdinW != nil {
			stdinW.Close()
		}
		return -1, fmt.Errorf("exec in instance %s: %w", spec.ID, err)
	}
	if stdinW != nil {
		go func() {
			_, _ = io.Copy(stdinW, stdin)
			stdinW.Close()
		}()
	}
	err = cmd.Wait()
	if stdinW != nil {
		stdinW.Close() // ends the copy at its next write
	}
	if cmd.ProcessState == nil {
		return -1, fmt.Errorf("exec in instance %s: %w", spec.ID, err)
	}
	if ctx.Err() != nil {
		return exitCode(cmd.ProcessState), fmt.Errorf("exec in instance %s: %w", spec.ID, ctx.Err())
	}
	return exitCode(cmd.ProcessState), nil
}

// initCmd builds the command that runs instance-init for spec and command,
// as the instance's user or, if root, as root. Cancelling ctx kills
// instance-init, and with it every process of its PID namespace.
func initCmd(ctx context.Context, spec Spec, command []string, root bool) (*exec.Cmd, error) {
	args := []string{InitCommand, "--hostname", hostname(spec.ID)}
	if root {
		args = append(args, "--root")
	} else {
		uid := strconv.Itoa(UserID(spec.ID))
		args = append(args, "--uid", uid, "--gid", uid)
	}
	if spec.Dir != "" {
		args = append(args, "--dir", spec.Dir)
	}
	// The instance's user has a name: in /etc/passwd and /etc/group.
	passwd, group := userFiles("/etc", UserID(spec.ID))
	for _, f := range []struct {
		name, target string
		data         []byte
	}{{passwdFile, "/etc/passwd", passwd}, {groupFile, "/etc/group", group}} {
		path := filepath.Join(spec.StateDir, f.name)
		if err := writeFileAtomic(path, f.data, 0o644); err != nil {
			return nil, err
		}
		args = append(args, "--mount", path+":"+f.target)
	}
	for _, p := range spec.Hide {
		args = append(args, "--hide", p)
	}
	if spec.ResolvConf != nil {
		path := filepath.Join(spec.StateDir, resolvFile)
		if err := writeFileAtomic(path, spec.ResolvConf, 0o644); err != nil {
			return nil, err
		}
		args = append(args, "--resolv", path)
	}
	for _, m := range spec.Mounts {
		args = append(args, "--mount", m.Source+":"+m.Target)
	}
	args = append(args, "--status-fd", "3", "--")
	args = append(args, command...)
	cmd := exec.CommandContext(ctx, Executable, args...)
	cmd.Env = append([]string{}, spec.Env...) // never nil: nil would pass our environment on
	// The command's working directory, spec.Dir, is entered after the
	// mounts; instance-init starts in /.
	cmd.Dir = "/"
	return cmd, nil
}

// hostname is the instance's hostname for its ID: at most 64 bytes, as
// the kernel allows.
func hostname(id string) string { return id[:min(len(id), 64)] }

// run starts cmd from a thread in the network namespace at nsPath and
// returns once instance-init has executed the command, or with the error
// that instance-init reported.
func run(cmd *exec.Cmd, nsPath string) error {
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.ExtraFiles = []*os.File{statusW} // fd 3, see initCmd
	err = netns.Do(nsPath, cmd.Start)
	statusW.Close()
	if err != nil {
		statusR.Close()
		return err
	}
	// instance-init closes its end when it executes the command and writes
	// the reason when it cannot.
	msg, _ := io.ReadAll(statusR)
	statusR.Close()
	if len(msg) > 0 {
		_ = cmd.Wait()
		return errors.New(string(bytes.TrimSpace(msg)))
	}
	return nil
}

func openLog(path string) (*os.File, error) {
	if path == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

func exitCode(st *os.ProcessState) int {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// Adopt finds the instance recorded in stateDir by an earlier Start (of
// this process or of one before a restart) and returns it if it still
// runs. It returns an error wrapping ErrNotRunning when the process has
// exited or its PID now names another process; the record is left for the
// caller to clean up with the state directory.
func Adopt(stateDir string) (*Process, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, recordFile))
	if err != nil {
		return nil, fmt.Errorf("adopt instance in %s: %w", stateDir, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("adopt instance in %s: %s: %w", stateDir, recordFile, err)
	}
	if rec.PID <= 0 {
		return nil, fmt.Errorf("adopt instance in %s: %s has no pid", stateDir, recordFile)
	}
	if rec.ResolvConf, err = os.ReadFile(filepath.Join(stateDir, resolvFile)); errors.Is(err, fs.ErrNotExist) {
		rec.ResolvConf = nil
	} else if err != nil {
		return nil, fmt.Errorf("adopt instance %s: %w", rec.ID, err)
	}
	notRunning := fmt.Errorf("adopt instance %s (pid %d): %w", rec.ID, rec.PID, ErrNotRunning)

	// Open the pidfd first and check the process afterwards: if it is
	// still the recorded one then, the pidfd refers to it.
	pidfd, err := unix.PidfdOpen(rec.PID, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, notRunning
	}
	if err != nil && !errors.Is(err, unix.ENOSYS) {
		return nil, fmt.Errorf("adopt instance %s: pidfd_open %d: %w", rec.ID, rec.PID, err)
	}
	if st, err := readStat(rec.PID); err != nil || st.startTime != rec.StartTime || st.state == 'Z' || st.state == 'X' {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return nil, notRunning
	}
	p := &Process{pid: rec.PID, startTime: rec.StartTime, spec: rec.Spec, done: make(chan struct{}), exitCode: -1}
	if pidfd >= 0 {
		go p.awaitPidfd(pidfd)
	} else {
		go p.pollProc()
	}
	return p, nil
}

// awaitPidfd closes p.done when the pidfd becomes readable: the process
// has exited. The runtime's poller waits, not a thread.
func (p *Process) awaitPidfd(pidfd int) {
	defer close(p.done)
	f := os.NewFile(uintptr(pidfd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		p.pollProc()
		return
	}
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err != nil && !errors.Is(err, unix.EINTR) || n > 0
	})
	if err != nil {
		p.pollProc()
	}
}

// pollProc returns when the process has exited, checking /proc; it is the
// fallback for kernels without pidfd_open.
func (p *Process) pollProc() {
	for p.alive() {
		time.Sleep(250 * time.Millisecond)
	}
}

// alive reports whether the process still runs (and is not a zombie).
func (p *Process) alive() bool {
	st, err := readStat(p.pid)
	return err == nil && st.startTime == p.startTime && st.state != 'Z' && st.state != 'X'
}

// Stop stops the instance: SIGTERM to its process group, SIGKILL to the
// group after grace if the process has not exited by then, and once it has
// exited SIGKILL to what is left of the group until none of it runs. Then
// it removes the record (and resolv.conf) from the state directory. Stop is
// idempotent; it returns an error only when ctx ends first. Processes that
// left the group (a daemon calling setsid) are not stopped.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.stopped {
		return nil
	}
	if !p.exited() {
		_ = unix.Kill(-p.pid, unix.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	if !p.exited() {
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		select {
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("stop instance %s (pid %d): %w", p.spec.ID, p.pid, ctx.Err())
		}
	}
	// Children the leader left behind keep the group ID in use, so it
	// cannot have been reused for another group yet.
	if err := killGroup(ctx, p.pid); err != nil {
		return fmt.Errorf("stop instance %s (pid %d): %w", p.spec.ID, p.pid, err)
	}
	p.stopped = true
	for _, name := range []string{recordFile, resolvFile, passwdFile, groupFile} {
		if err := os.Remove(filepath.Join(p.spec.StateDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("stop instance %s: %w", p.spec.ID, err)
		}
	}
	return nil
}

// removeFiles removes what initCmd wrote to stateDir, after a failed start.
func removeFiles(stateDir string) {
	for _, name := range []string{resolvFile, passwdFile, groupFile} {
		os.Remove(filepath.Join(stateDir, name))
	}
}

// killGroup sends SIGKILL to process group pgid until none of its members
// runs any more (zombies do not count: their parent, or init, reaps them).
func killGroup(ctx context.Context, pgid int) error {
	for {
		if err := unix.Kill(-pgid, unix.SIGKILL); errors.Is(err, unix.ESRCH) || !groupRuns(pgid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// groupRuns reports whether a process of group pgid runs (is not a zombie).
func groupRuns(pgid int) bool {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.pgrp == pgid && st.state != 'Z' && st.state != 'X' {
			return true
		}
	}
	return false
}

func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// procStat is what we read of /proc/PID/stat.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses /proc/PID/stat. The command name (field 2) is in
// parentheses and may contain spaces and parentheses, so the fields are
// counted after the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	pgrp, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat process group: %w", err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat start time: %w", err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, startTime: start}, nil
}

func writeRecord(rec record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(rec.StateDir, recordFile), append(b, '\n'), 0o600)
}

// writeFileAtomic replaces path with data so that no reader sees half of
// it, and an instance that has the old file bind-mounted keeps it. No
// fsync: an instance's files do not outlive the machine.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return identity.ReplaceFile(path, data, perm)
}
