// Package executor runs app instances as processes, each in its own network
// namespace (wired beforehand through CNI, not by this package) and its own
// mount namespace, the way Cloud Foundry's executor runs containers on a
// cell. It is the minimal runtime of the local foundation: instances outlive
// the process that started them, are adopted again after it restarts, and
// can be entered with a one-off command (`trellis exec`).
//
// Go cannot put itself into a new mount namespace: unshare(CLONE_NEWNS) and
// setns on a mount namespace fail in a multi-threaded process. So Start and
// Exec clone a child with CLONE_NEWNS from an OS thread switched into the
// instance's network namespace (the child inherits the thread's network
// namespace), and make that child a re-execution of the current binary as
// the hidden subcommand instance-init (see InitMain). Alone in its new mount
// namespace, instance-init makes every mount private so nothing propagates
// back to the host, bind-mounts the instance's resolv.conf and extra mounts,
// and executes the instance's command in its place.
package executor

import (
	"errors"
	"fmt"
	"path/filepath"
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
}

// Mount is a read-only bind mount of Source (a file or directory on the
// host) onto Target inside the instance. A missing Target is created on the
// host file system (an empty directory or file, and its parents) because a
// bind mount needs something to mount onto.
type Mount struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

// Files in Spec.StateDir.
const (
	recordFile = "process.json"
	resolvFile = "resolv.conf"
)

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
