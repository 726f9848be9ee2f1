// Package executor runs app instances as processes, each in its own network
// namespace (wired beforehand through CNI, not by this package) and its own
// mount, PID, UTS and IPC namespaces, the way Cloud Foundry's executor runs
// containers on a cell. It is the minimal runtime of the local foundation:
// instances outlive the process that started them, are adopted again after
// it restarts, and can be entered with a one-off command (`trellis exec`).
//
// # Sandbox
//
// An instance's command never runs as root. It runs as the instance's own
// user (UserID: a uid and gid chosen per instance from [UIDBase,
// UIDBase+UIDCount), with no supplementary groups, named UserName in the
// instance's /etc/passwd and /etc/group), with no capabilities
// (the permitted, effective, inheritable, ambient and bounding sets are
// empty) and no_new_privs set, so no setuid program or file capability
// gives any back. It sees its own processes only (its own PID namespace and
// /proc), its own network devices (a sysfs mounted in its network
// namespace), its own hostname (its ID) and its own System V IPC. /tmp,
// /dev/shm and /home are private, empty tmpfs; HOME is Home, writable by the
// instance alone. The host's named network namespaces are not visible, and
// each Spec.Hide path (the agent's state dir and socket) is covered by an
// empty read-only directory or file, so the instance cannot see the cell's
// or other instances' keys even where file modes would let it. The rest of
// the host's file system is visible read-only in effect: the instance's user
// owns nothing there.
//
// Go cannot put itself into a new mount namespace: unshare(CLONE_NEWNS) and
// setns on a mount namespace fail in a multi-threaded process. So Start and
// Exec clone a child with new mount, PID, UTS and IPC namespaces from an OS
// thread switched into the instance's network namespace (the child inherits
// the thread's network namespace), and make that child a re-execution of
// the current binary as the hidden subcommand instance-init (see InitMain),
// the first process (PID 1) of the new PID namespace. instance-init makes
// every mount private so nothing propagates back to the host, mounts the
// instance's file system view, drops every privilege on one thread and
// starts the instance's command from it, then stays as the namespace's
// init: it forwards signals to the command, reaps orphans, and exits with
// the command's status. The kernel kills whatever is left in the namespace
// when it exits.
package executor

import (
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// InitCommand is the name of the hidden subcommand that must run InitMain:
// Start and Exec execute `Executable instance-init ARGS...`.
const InitCommand = "instance-init"

// Executable is the program that Start and Exec re-execute as
// instance-init. /proc/self/exe is the running binary, even after it was
// replaced on disk. A test binary handles instance-init in its TestMain.
var Executable = "/proc/self/exe"

// ErrNotRunning is returned by Adopt when the recorded process no longer
// runs (or its PID now belongs to another process).
var ErrNotRunning = errors.New("instance is not running")

// Spec is what an instance runs and where.
type Spec struct {
	// ID names the instance (its instance GUID) in errors and the record.
	ID string `json:"id"`
	// NetNS is the path of the instance's network namespace, for example
	// /run/netns/NAME.
	NetNS string `json:"netns"`
	// Command is the program and its arguments; a program name without a
	// slash is looked up in the PATH of Env.
	Command []string `json:"command"`
	// Env is the instance's whole environment; nothing of the caller's
	// environment is passed on.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; empty means /.
	Dir string `json:"dir,omitempty"`
	// ResolvConf, when not nil, is written to StateDir and bind-mounted
	// read-only over /etc/resolv.conf in the instance's mount namespace.
	ResolvConf []byte `json:"-"`
	// Mounts are extra read-only bind mounts in the instance's mount
	// namespace.
	Mounts []Mount `json:"mounts,omitempty"`
	// LogPath is the file the instance's stdout and stderr are appended
	// to; empty discards them.
	LogPath string `json:"log_path,omitempty"`
	// StateDir holds this instance's files: its record (process.json) and
	// its resolv.conf. It is created if missing.
	StateDir string `json:"state_dir"`
	// Hide lists host paths the instance must not see: an empty read-only
	// directory (for a directory) or an empty file (for anything else) is
	// mounted over each in its mount namespace. Missing paths are skipped.
	Hide []string `json:"hide,omitempty"`
}

// Mount is a read-only bind mount of Source (a file or directory on the
// host) onto Target inside the instance. A missing Target is created (an
// empty directory or file, and its parents) because a bind mount needs
// something to mount onto: on the host file system, or on the instance's
// private tmpfs for a Target under /tmp or /home.
type Mount struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

// The instance's user. Every instance runs as UserID(ID), uid and gid
// alike: a number in [UIDBase, UIDBase+UIDCount), above the ranges that
// systemd gives to system users, dynamic users and containers
// (0x70000000 = 1879048192), and below 2^31. Two instances on one machine
// get the same number only by a hash collision (about 1 in 2^28 for a
// pair), and even then see neither each other's processes nor files.
const (
	UIDBase  = 0x70000000
	UIDCount = 0x0fffffff
)

// Home is the instance's home directory, on a private tmpfs: writable by
// the instance's user alone, empty at start. Set HOME to it.
const Home = "/home/vcap"

// UserID returns the uid (and gid) that the instance called id runs as.
func UserID(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return UIDBase + int(h.Sum32()%UIDCount)
}

// Files in Spec.StateDir.
const (
	recordFile = "process.json"
	resolvFile = "resolv.conf"
	passwdFile = "passwd" // the host's /etc/passwd and the instance's user
	groupFile  = "group"  // the host's /etc/group and the instance's group
)

// UserName is the name of every instance's user (and group) in its
// /etc/passwd and /etc/group, as Cloud Foundry names it.
const UserName = "vcap"

// userFiles returns /etc/passwd and /etc/group for the instance running
// as uid: the host's (read from etc) with its user and group added.
func userFiles(etc string, uid int) (passwd, group []byte) {
	line := func(file, entry string) []byte {
		b, _ := os.ReadFile(filepath.Join(etc, file))
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		return append(b, entry...)
	}
	id := strconv.Itoa(uid)
	return line("passwd", UserName+":x:"+id+":"+id+"::"+Home+":/bin/sh\n"), line("group", UserName+":x:"+id+":\n")
}

func (s Spec) validate() error {
	if s.ID == "" {
		return errors.New("instance spec has no ID")
	}
	if s.NetNS == "" {
		return fmt.Errorf("instance %s: no network namespace", s.ID)
	}
	if s.StateDir == "" {
		return fmt.Errorf("instance %s: no state directory", s.ID)
	}
	for _, m := range s.Mounts {
		for _, p := range []string{m.Source, m.Target} {
			if !filepath.IsAbs(p) || strings.Contains(p, ":") {
				return fmt.Errorf("instance %s: mount path %q must be absolute and contain no ':'", s.ID, p)
			}
		}
	}
	for _, p := range s.Hide {
		if !filepath.IsAbs(p) || filepath.Clean(p) == "/" {
			return fmt.Errorf("instance %s: hidden path %q must be absolute and not /", s.ID, p)
		}
	}
	return nil
}

// record is what Start leaves in the state directory so that Adopt can
// find the process again after the caller restarts. StartTime guards
// against PID reuse.
type record struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // clock ticks after boot, /proc/PID/stat field 22
	Spec
}
