package executor

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitMain is the hidden subcommand instance-init: args are what follows
// its name. Wire it into the binary's command line before anything else
// runs (no configuration, no logging set-up), for example in main:
//
//	if len(os.Args) > 1 && os.Args[1] == executor.InitCommand {
//		os.Exit(executor.InitMain(os.Args[2:]))
//	}
//
// It expects to be the first process of new mount, PID, UTS and IPC
// namespaces, started by Start or Exec. It makes all mounts private,
// detaches the host's named network namespaces from its view, mounts its
// own /proc and /sys, private tmpfs on /tmp, /dev/shm and /home (with
// Home), bind-mounts --resolv FILE over /etc/resolv.conf and each --mount
// SRC:DST read-only, covers each --hide PATH, and sets the hostname. Then it
// drops every privilege on one thread and starts the command after "--"
// from it, as --uid and --gid (unless --root), with its own environment,
// in --dir, looking the program up in $PATH. It stays as the namespace's
// init: it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
// to the command's process group, reaps every orphan, and returns the
// command's exit status (128+N when signal N killed it). It returns 127
// when it could not start the command, after writing the reason to stderr
// and to --status-fd, which it closes once the command runs.
func InitMain(args []string) int {
	var (
		o        initOptions
		statusFD = -1
	)
	fs := flag.NewFlagSet(InitCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.resolv, "resolv", "", "file to bind-mount over /etc/resolv.conf")
	fs.Var(&o.mounts, "mount", "SRC:DST read-only bind mount (repeatable)")
	fs.Var(&o.hide, "hide", "PATH to cover with an empty one (repeatable)")
	fs.StringVar(&o.hostname, "hostname", "", "the instance's hostname")
	fs.StringVar(&o.dir, "dir", "/", "working directory of the command")
	fs.IntVar(&o.uid, "uid", -1, "user ID of the command")
	fs.IntVar(&o.gid, "gid", -1, "group ID of the command")
	fs.BoolVar(&o.root, "root", false, "run the command as root, with every privilege (operators' exec)")
	fs.IntVar(&statusFD, "status-fd", -1, "descriptor to write a failure to; closed once the command runs")
	fail := func(err error) int {
		msg := InitCommand + ": " + err.Error() + "\n"
		os.Stderr.WriteString(msg)
		if statusFD >= 0 {
			unix.Write(statusFD, []byte(msg))
		}
		return 127
	}
	if err := fs.Parse(args); err != nil {
		return fail(err)
	}
	command := fs.Args()
	if len(command) == 0 {
		return fail(errors.New("no command after --"))
	}
	if !o.root && (o.uid <= 0 || o.gid <= 0) {
		return fail(errors.New("no unprivileged --uid and --gid (and no --root)"))
	}
	if statusFD >= 0 {
		unix.CloseOnExec(statusFD)
	}
	// Privileges are dropped on this thread only, and the command is
	// started from it: never unlocked, so no other goroutine runs here.
	runtime.LockOSThread()

	// The program is found and opened before the mounts: it may be under
	// /tmp, which a private tmpfs then covers.
	prog, path, lookErr := openProgram(command[0], os.Getenv("PATH"))
	if err := setupMounts(o); err != nil {
		return fail(err)
	}
	if prog == nil {
		if prog, path, lookErr = openProgram(command[0], os.Getenv("PATH")); prog == nil {
			return fail(lookErr)
		}
	}
	if o.hostname != "" {
		if err := unix.Sethostname([]byte(o.hostname)); err != nil {
			return fail(fmt.Errorf("set hostname: %w", err))
		}
	}
	cmd := &exec.Cmd{Path: path, Args: command, Env: os.Environ(), Dir: o.dir,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	if st, err := os.Stat(o.dir); err != nil {
		return fail(fmt.Errorf("working directory: %w", err))
	} else if !st.IsDir() {
		return fail(fmt.Errorf("working directory %s is not a directory", o.dir))
	}
	if !o.root {
		if !executableBy(o.dir, o.uid, o.gid) {
			return fail(fmt.Errorf("working directory %s: not searchable by the instance's user (uid %d)", o.dir, o.uid))
		}
		var err error
		if cmd.Path, err = exposeProgram(prog, path, o.uid, o.gid); err != nil {
			return fail(err)
		}
		if err := dropPrivileges(); err != nil {
			return fail(err)
		}
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(o.uid), Gid: uint32(o.gid), Groups: []uint32{}}
	}
	prog.Close()
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2)
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	if statusFD >= 0 {
		unix.Close(statusFD)
	}
	child := cmd.Process.Pid
	go func() {
		for sig := range sigs {
			_ = unix.Kill(-child, sig.(syscall.Signal))
		}
	}()
	return reap(child)
}

// initOptions are instance-init's flags.
type initOptions struct {
	resolv   string
	mounts   mountFlags
	hide     stringFlags
	hostname string
	dir      string
	uid, gid int
	root     bool
}

// reap waits for every child (orphans of the namespace become ours) until
// child exits, and returns child's status.
func reap(child int) int {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			os.Stderr.WriteString(InitCommand + ": wait: " + err.Error() + "\n")
			return 127
		}
		if pid != child {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
}

// openProgram looks the program up and opens it (O_PATH: to bind-mount it,
// not to read it).
func openProgram(file, pathEnv string) (*os.File, string, error) {
	path, err := lookPath(file, pathEnv)
	if err != nil {
		return nil, "", err
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), path, nil
}

// programDir is where a program that the instance's user could not
// execute where it is, outside /tmp and /home, is bind-mounted.
const programDir = "/tmp/.trellis-bin"

// exposeProgram returns the path the instance's user runs the program prog
// (found at path) by. A program it cannot reach (in a directory of mode
// 0700, or under the /tmp that the private tmpfs now covers) is
// bind-mounted read-only, at its own path under /tmp and /home, else in
// programDir: the instance sees that one file, not the directory it is in.
func exposeProgram(prog *os.File, path string, uid, gid int) (string, error) {
	if executableBy(path, uid, gid) {
		return path, nil
	}
	target := path
	if !under(path, "/tmp") && !under(path, "/home") {
		target = filepath.Join(programDir, filepath.Base(path))
	}
	src := "/proc/self/fd/" + strconv.Itoa(int(prog.Fd()))
	if err := makeTarget(Mount{Source: src, Target: target}); err != nil {
		return "", err
	}
	if err := bindReadOnly(src, target); err != nil {
		return "", err
	}
	if !executableBy(target, uid, gid) {
		return "", fmt.Errorf("%s: not executable by the instance's user (uid %d)", path, uid)
	}
	return target, nil
}

func under(path, dir string) bool { return strings.HasPrefix(path, dir+"/") }

// executableBy reports whether uid and gid may execute path (search it, if
// a directory). It switches
// this thread's file system IDs (which drops its file capabilities) to
// ask, and back.
func executableBy(path string, uid, gid int) bool {
	unix.Setfsgid(gid)
	unix.Setfsuid(uid)
	err := unix.Faccessat(unix.AT_FDCWD, path, unix.X_OK, unix.AT_EACCESS)
	unix.Setfsuid(0)
	unix.Setfsgid(0)
	return err == nil
}

// dropPrivileges sets no_new_privs and empties the bounding, ambient and
// inheritable capability sets of this thread, which the command inherits;
// switching to a non-zero uid then empties its permitted and effective
// sets. The thread itself keeps its effective capabilities: it is still
// the namespace's init.
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	last := 63
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("get capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	return nil
}

// stringFlags collects a repeatable flag.
type stringFlags []string

func (s *stringFlags) String() string { return fmt.Sprint(*s) }

func (s *stringFlags) Set(v string) error {
	if !filepath.IsAbs(v) {
		return fmt.Errorf("%q is not absolute", v)
	}
	*s = append(*s, v)
	return nil
}

// mountFlags collects --mount SRC:DST.
type mountFlags []Mount

func (m *mountFlags) String() string { return fmt.Sprint(*m) }

func (m *mountFlags) Set(s string) error {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || !filepath.IsAbs(src) || !filepath.IsAbs(dst) {
		return fmt.Errorf("--mount %q: want SRC:DST, both absolute", s)
	}
	*m = append(*m, Mount{Source: src, Target: dst})
	return nil
}

// Sizes of the private tmpfs: memory is taken only as files fill them.
const (
	tmpSize  = "256m"
	homeSize = "256m"
	shmSize  = "64m"
)

// setupMounts arranges the instance's view of the file system. Making /
// private first, recursively, is what keeps every later mount (and
// unmount) inside this namespace: a copy of a shared mount would otherwise
// propagate to the host.
func setupMounts(o initOptions) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	detachNetnsMounts()
	// The sources are opened before the tmpfs cover any of them (a state
	// dir under /tmp) and bind-mounted through their descriptors.
	var binds []bind
	defer func() {
		for _, b := range binds {
			b.src.Close()
		}
	}()
	if o.resolv != "" {
		o.mounts = append([]Mount{{Source: o.resolv, Target: "/etc/resolv.conf"}}, o.mounts...)
	}
	for _, m := range o.mounts {
		fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.Source, err)
		}
		binds = append(binds, bind{Mount: m, src: os.NewFile(uintptr(fd), m.Source)})
	}
	const nosuid = unix.MS_NOSUID | unix.MS_NODEV
	mounts := []struct {
		fstype, target string
		flags          uintptr
		data           string
		optional       bool
	}{
		// This PID namespace's processes only.
		{"proc", "/proc", nosuid | unix.MS_NOEXEC, "", false},
		// Mounted from the instance's network namespace, sysfs lists its
		// own interfaces under /sys/class/net.
		{"sysfs", "/sys", nosuid | unix.MS_NOEXEC | unix.MS_RDONLY, "", false},
		{"tmpfs", "/tmp", nosuid, "mode=1777,size=" + tmpSize, false},
		{"tmpfs", "/dev/shm", nosuid | unix.MS_NOEXEC, "mode=1777,size=" + shmSize, true},
		{"tmpfs", "/home", nosuid, "mode=0755,size=" + homeSize, false},
	}
	for _, m := range mounts {
		if _, err := os.Stat(m.target); err != nil {
			if m.optional {
				continue
			}
			if err := os.MkdirAll(m.target, 0o755); err != nil {
				return fmt.Errorf("mount target: %w", err)
			}
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	if err := os.Mkdir(Home, 0o700); err != nil {
		return fmt.Errorf("make %s: %w", Home, err)
	}
	if !o.root {
		if err := os.Chown(Home, o.uid, o.gid); err != nil {
			return fmt.Errorf("make %s: %w", Home, err)
		}
	}
	for _, b := range binds {
		src := "/proc/self/fd/" + strconv.Itoa(int(b.src.Fd()))
		if err := makeTarget(Mount{Source: src, Target: b.Target}); err != nil {
			return err
		}
		if err := bindReadOnly(src, b.Target); err != nil {
			return fmt.Errorf("mount %s: %w", b.Source, err)
		}
	}
	for _, p := range o.hide {
		if err := hidePath(p); err != nil {
			return err
		}
	}
	return nil
}

// bind is a mount whose source is open.
type bind struct {
	Mount
	src *os.File
}

// hidePath covers path with an empty read-only directory, or with
// /dev/null when it is not a directory (a file or a socket). Missing
// paths are left alone.
func hidePath(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hide %s: %w", path, err)
	}
	if st.IsDir() {
		flags := uintptr(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if err := unix.Mount("tmpfs", path, "tmpfs", flags, "mode=0755,size=4k"); err != nil {
			return fmt.Errorf("hide %s: %w", path, err)
		}
		return nil
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("hide %s: a symbolic link; hide its target", path)
	}
	return bindReadOnly(os.DevNull, path)
}

// detachNetnsMounts unmounts, in this mount namespace only, the host's
// named network namespaces (/run/netns/NAME): the instance has no use for
// them, and its copies would keep those namespaces alive after the host
// deletes them. Best effort.
func detachNetnsMounts() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := unescapeMountinfo(fields[4])
		for _, dir := range []string{"/run/netns", "/var/run/netns"} {
			if p == dir || strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	// Deepest first; a detached parent takes its children along anyway.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// makeTarget creates a missing mount target like its source: a directory,
// or an empty file (with its parent directories).
func makeTarget(m Mount) error {
	src, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("mount %s: %w", m.Source, err)
	}
	if src.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount target: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
		return fmt.Errorf("mount target: %w", err)
	}
	f, err := os.OpenFile(m.Target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mount target: %w", err)
	}
	return f.Close()
}

// bindReadOnly bind-mounts src onto dst and makes that mount read-only (a
// bind mount takes its flags only from a remount).
func bindReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s to %s: %w", src, dst, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV)
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", dst, err)
	}
	return nil
}

// lookPath finds file in the directories of pathEnv, or in a standard PATH
// when the instance's environment has none. A name with a slash is used as
// it is.
func lookPath(file, pathEnv string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	if pathEnv == "" {
		pathEnv = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in PATH %s", file, pathEnv)
}
