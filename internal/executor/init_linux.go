package executor

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
// It expects to be the first process of a new mount namespace, started by
// Start or Exec: it makes all mounts private, detaches the host's named
// network namespaces from its view, bind-mounts --resolv FILE over
// /etc/resolv.conf and each --mount SRC:DST read-only, and then executes
// the command after "--" with its own environment, looking the program up
// in $PATH. It returns only on failure, with status 127 after writing the
// reason to stderr and to --status-fd.
func InitMain(args []string) int {
	var (
		resolv   string
		mounts   mountFlags
		statusFD = -1
	)
	fs := flag.NewFlagSet(InitCommand, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&resolv, "resolv", "", "file to bind-mount over /etc/resolv.conf")
	fs.Var(&mounts, "mount", "SRC:DST read-only bind mount (repeatable)")
	fs.IntVar(&statusFD, "status-fd", -1, "descriptor to write a failure to; closed on exec")
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
	if statusFD >= 0 {
		unix.CloseOnExec(statusFD)
	}
	if err := setupMounts(resolv, mounts); err != nil {
		return fail(err)
	}
	path, err := lookPath(command[0], os.Getenv("PATH"))
	if err != nil {
		return fail(err)
	}
	err = syscall.Exec(path, command, os.Environ())
	return fail(fmt.Errorf("exec %s: %w", path, err))
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

// setupMounts arranges the instance's view of the file system. Making /
// private first, recursively, is what keeps every later mount (and
// unmount) inside this namespace: a copy of a shared mount would otherwise
// propagate to the host.
func setupMounts(resolv string, mounts []Mount) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	detachNetnsMounts()
	if resolv != "" {
		if err := bindReadOnly(resolv, "/etc/resolv.conf"); err != nil {
			return err
		}
	}
	for _, m := range mounts {
		if err := makeTarget(m); err != nil {
			return err
		}
		if err := bindReadOnly(m.Source, m.Target); err != nil {
			return err
		}
	}
	return nil
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
