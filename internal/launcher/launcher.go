// Package launcher runs a complete local foundation on one machine: an
// underlay and cells as network namespaces, the controller on loopback and
// one agent per cell as processes, the CNI plugin and its configuration for
// every cell — and takes it all down again, leaving nothing behind.
package launcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/console"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/underlay"
)

// FoundationFile describes a running foundation inside its state dir.
const FoundationFile = "foundation.json"

// DefaultStateDir is where `trellis up` keeps its foundation by default.
const DefaultStateDir = "/var/lib/trellis/local"

// AdminFile is the admin client config (API URL, CA, admin token; mode
// 0600), in the foundation's state dir (STATE/admin.json) as in the
// controller's (STATE/controller/admin.json), which writes it.
const AdminFile = "admin.json"

// AdminPasswordFile holds the password of the foundation's admin user
// (mode 0600, in the state dir), who logs in with the cf CLI:
// `cf auth admin "$(cat STATE/admin-password)"`.
const AdminPasswordFile = "admin-password"

// AdminUser is the name of the foundation's admin user.
const AdminUser = "admin"

// Foundation is what `trellis up` started, as tools (and `down`) find it.
type Foundation struct {
	Prefix     string  `json:"prefix"` // every namespace's name starts with it
	StateDir   string  `json:"state_dir"`
	Underlay   string  `json:"underlay_netns"`
	Controller Process `json:"controller"`
	APIURL     string  `json:"api_url"`
	// Controllers are all the foundation's controllers, the first (the
	// one of Controller and APIURL) included, when it runs several
	// (Options.Controllers); empty for one.
	Controllers []ControllerProcess `json:"controllers,omitempty"`
	Admin       string              `json:"admin_config"` // STATE/admin.json
	CNIPlugin   string              `json:"cni_plugin"`
	Cells       []Cell              `json:"cells"`
	StartedAt   time.Time           `json:"started_at"`

	// AdminPassword is the file of the admin user's password
	// (STATE/admin-password).
	AdminPassword string `json:"admin_password_file,omitempty"`
	// Outside is the host outside the overlay that instances may reach
	// only where a security group allows it.
	Outside *Outside `json:"outside,omitempty"`
}

// Outside is the local foundation's outside world: a namespace routed
// from the underlay, holding IP (203.0.113.10) and running the sample app
// on tcp/80 and udp/80 and 53 (UDP echo).
type Outside struct {
	NetNS string  `json:"netns"`
	IP    string  `json:"ip"`
	App   Process `json:"app"`
}

// Cell is one cell of the foundation.
type Cell struct {
	Name        string  `json:"name"`
	NetNS       string  `json:"netns"`
	UnderlayIP  string  `json:"underlay_ip"`
	StateDir    string  `json:"state_dir"`
	Socket      string  `json:"agent_socket"`
	CNIConfList string  `json:"cni_conflist"`
	Agent       Process `json:"agent"`
}

// ControllerProcess is one of several controllers of a foundation.
type ControllerProcess struct {
	Process
	URL      string `json:"url"`
	StateDir string `json:"state_dir"`
}

// Process is a process the launcher started.
type Process struct {
	PID int    `json:"pid"`
	Log string `json:"log"`

	// done is closed when the process exits, for one started by this
	// launcher (nil for one loaded from foundation.json).
	done chan struct{}
}

// Options configure Up.
type Options struct {
	StateDir string
	Cells    int
	// Exe is the trellis binary to run; default the running one. The CNI
	// plugin installed is cni.PluginBinary(Exe): the trellis-cni binary
	// next to it, else Exe itself.
	Exe string
	// Progress receives one line per step.
	Progress io.Writer
	// InstanceCertValidity, when not zero, is how long instance identity
	// certificates are valid (the controller's --instance-cert-validity).
	InstanceCertValidity time.Duration
	// Controllers is how many controllers to run (0 means 1); more than
	// one share the PostgreSQL database DatabaseURL, and every agent and
	// the admin config know them all.
	Controllers int
	// DatabaseURL is the controllers' PostgreSQL database (postgres://…);
	// empty means SQLite in the controller's state dir (one controller).
	DatabaseURL string
	// Encryption is the new foundation's encryption between cells (the
	// controller's --encryption): "" or api.EncryptionOff, or
	// api.EncryptionWireGuard.
	Encryption string
}

// Load reads the foundation of stateDir.
func Load(stateDir string) (*Foundation, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, FoundationFile))
	if err != nil {
		return nil, err
	}
	var f Foundation
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("read %s: %w", FoundationFile, err)
	}
	return &f, nil
}

// Running reports whether the foundation's controller is still running.
func (f *Foundation) Running() bool { return f.Controller.alive("controller") }

// ErrAlreadyUp is returned by Up for a state dir whose foundation runs.
var ErrAlreadyUp = errors.New("already up")

// Up builds and starts a foundation, and returns once every cell's agent
// is ready. On failure (or when ctx ends first) it takes down what it made.
func Up(ctx context.Context, o Options) (f *Foundation, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("trellis up needs root: it creates network namespaces (run it as root)")
	}
	if o.Cells < 1 || o.Cells > 50 {
		return nil, fmt.Errorf("--cells %d: must be 1 to 50", o.Cells)
	}
	if o.Controllers < 0 || o.Controllers > 9 {
		return nil, fmt.Errorf("--controllers %d: must be 1 to 9", o.Controllers)
	}
	if o.Controllers > 1 && !strings.HasPrefix(o.DatabaseURL, "postgres://") && !strings.HasPrefix(o.DatabaseURL, "postgresql://") {
		return nil, fmt.Errorf("--controllers %d: several controllers share one PostgreSQL database: give --database-url postgres://… (scripts/postgres-up starts one)", o.Controllers)
	}
	progress := o.Progress
	if progress == nil {
		progress = io.Discard
	}
	step := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	if o.Exe == "" {
		if o.Exe, err = os.Executable(); err != nil {
			return nil, err
		}
		// A test binary run as `controller` would run its tests again,
		// and start foundations of its own: tests must name the binary.
		if strings.HasSuffix(o.Exe, ".test") {
			return nil, fmt.Errorf("launcher: %s is a test binary: set Options.Exe to a trellis binary", o.Exe)
		}
	}
	dir, err := filepath.Abs(o.StateDir)
	if err != nil {
		return nil, err
	}
	if old, err := Load(dir); err == nil {
		if old.Controller.alive("controller") {
			return nil, fmt.Errorf("state dir %s: a foundation is %w (controller pid %d): `trellis down --state-dir %s` first", dir, ErrAlreadyUp, old.Controller.PID, dir)
		}
		step("cleaning up a stale foundation in %s (its controller is gone)", dir)
		if err := Down(context.WithoutCancel(ctx), dir, false, progress); err != nil {
			return nil, fmt.Errorf("clean up the stale foundation: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	var b [3]byte
	rand.Read(b[:])
	f = &Foundation{Prefix: "trellis-" + hex.EncodeToString(b[:]), StateDir: dir, StartedAt: time.Now().UTC()}
	defer func() {
		if err != nil {
			step("setup failed: taking down what was made")
			f.save()
			Down(context.WithoutCancel(ctx), dir, false, io.Discard)
		}
	}()

	step("creating the underlay and %d cells (namespaces %s-*)", o.Cells, f.Prefix)
	u, err := underlay.Build(f.Prefix, o.Cells)
	if err != nil {
		return f, err
	}
	f.Underlay = u.NetNS
	for _, c := range u.Cells {
		cd := filepath.Join(dir, "cells", c.Name)
		f.Cells = append(f.Cells, Cell{Name: c.Name, NetNS: c.NetNS, UnderlayIP: c.IP.String(), StateDir: cd,
			Socket: filepath.Join(cd, "agent.sock"), CNIConfList: filepath.Join(dir, "cni", c.Name, "10-trellis.conflist")})
	}
	if err := f.save(); err != nil {
		return f, err
	}
	step("starting the sample app on the outside host %s (namespace %s)", underlay.OutsideIP, u.Outside)
	app, err := startIn(netns.Path(u.Outside), []string{"PORT=80"}, o.Exe, filepath.Join(dir, "logs", "outside.log"), "sample-app", "--also-port", "53")
	if err != nil {
		return f, err
	}
	f.Outside = &Outside{NetNS: u.Outside, IP: underlay.OutsideIP.String(), App: app}
	if err := f.save(); err != nil {
		return f, err
	}

	step("starting the controller")
	port, err := freePort()
	if err != nil {
		return f, err
	}
	ctrlDir := filepath.Join(dir, "controller")
	ctrlArgs := func(stateDir string, port int) []string {
		args := []string{"controller", "--state-dir", stateDir, "--listen", fmt.Sprintf("127.0.0.1:%d", port)}
		if o.InstanceCertValidity != 0 {
			args = append(args, "--instance-cert-validity", o.InstanceCertValidity.String())
		}
		if o.DatabaseURL != "" {
			args = append(args, "--database-url", o.DatabaseURL)
		}
		if o.Encryption != "" {
			args = append(args, "--encryption", o.Encryption)
		}
		return args
	}
	f.Controller, err = start(o.Exe, filepath.Join(dir, "logs", "controller.log"), ctrlArgs(ctrlDir, port)...)
	if err != nil {
		return f, err
	}
	f.APIURL = fmt.Sprintf("https://127.0.0.1:%d", port)
	f.save()
	client, err := waitController(ctx, f, filepath.Join(ctrlDir, AdminFile))
	if err != nil {
		return f, err
	}
	if o.Controllers > 1 {
		step("starting %d more controllers on the same database", o.Controllers-1)
		if client, err = f.startMoreControllers(ctx, o, ctrlArgs); err != nil {
			return f, err
		}
	}
	// The controller keeps its admin config in its own state dir; the
	// foundation's copy sits at the top, where `trellis up` tells the
	// operator to find it, with every controller's URL.
	f.Admin = filepath.Join(dir, AdminFile)
	if len(f.Controllers) == 0 {
		err = copyFile(filepath.Join(ctrlDir, AdminFile), f.Admin, 0o600)
	} else {
		var admin api.ClientConfig
		if admin, err = api.LoadClientConfig(filepath.Join(ctrlDir, AdminFile)); err == nil {
			admin.APIURLs = f.URLs()
			err = admin.Save(f.Admin)
		}
	}
	if err != nil {
		return f, fmt.Errorf("copy the admin config: %w", err)
	}
	f.AdminPassword = filepath.Join(dir, AdminPasswordFile)
	if err := ensureAdminUser(ctx, client, f.AdminPassword); err != nil {
		return f, fmt.Errorf("the admin user: %w", err)
	}
	f.save()

	plugin := cni.PluginBinary(o.Exe)
	if plugin == o.Exe {
		step("installing the CNI plugin and configuration for each cell: no %s next to %s, so the plugin is the trellis binary itself (slower to start; `CGO_ENABLED=0 go build -o . ./cmd/...` builds both)",
			cni.PluginType, o.Exe)
	} else {
		step("installing the CNI plugin (%s) and configuration for each cell", plugin)
	}
	f.CNIPlugin = filepath.Join(dir, "bin", cni.PluginType)
	if err := copyFile(plugin, f.CNIPlugin, 0o755); err != nil {
		return f, fmt.Errorf("install the CNI plugin: %w", err)
	}
	for _, c := range f.Cells {
		if err := os.MkdirAll(filepath.Dir(c.CNIConfList), 0o755); err != nil {
			return f, err
		}
		if err := identity.WriteFileAtomic(c.CNIConfList, cni.ConfList("trellis", c.Name, c.Socket), 0o644); err != nil {
			return f, err
		}
	}

	for i := range f.Cells {
		step("starting the agent of %s (%s, %s)", f.Cells[i].Name, f.Cells[i].NetNS, f.Cells[i].UnderlayIP)
		if err := f.StartAgent(ctx, client, i, o.Exe); err != nil {
			return f, err
		}
	}
	for _, c := range f.Cells {
		if err := waitAgent(ctx, c); err != nil {
			return f, err
		}
	}
	step("foundation up: %d cells", len(f.Cells))
	step("web console: %s (log in with the token in %s, or as user %s with the password in %s)", console.URL(f.APIURL), f.Admin, AdminUser, f.AdminPassword)
	return f, f.save()
}

// StartAgent starts the agent of cell i (again): with a join token the
// first time, on its kept identity afterwards. client is an admin client.
func (f *Foundation) StartAgent(ctx context.Context, client *api.Client, i int, exe string) error {
	c := &f.Cells[i]
	ctrlDir := filepath.Join(f.StateDir, "controller")
	args := []string{"agent", "--state-dir", c.StateDir, "--netns", c.NetNS, "--underlay-interface", underlay.Device,
		"--name", c.Name, "--run-instances", "--instance-netns-prefix", f.Prefix + "-" + c.Name + "-i-", "--controller", strings.Join(f.URLs(), ",")}
	if _, err := os.Stat(filepath.Join(c.StateDir, "cell.json")); err != nil {
		tok, err := client.CreateJoinToken(ctx, 600)
		if err != nil {
			return fmt.Errorf("join token for %s: %w", c.Name, err)
		}
		args = append(args, "--join-token", tok.Token, "--ca-cert", filepath.Join(ctrlDir, identity.CACertFile))
	}
	p, err := start(exe, filepath.Join(f.StateDir, "logs", c.Name+".log"), args...)
	if err != nil {
		return err
	}
	c.Agent = p
	return f.save()
}

// WaitAgent waits until the agent of cell i serves with its state applied.
func (f *Foundation) WaitAgent(ctx context.Context, i int) error { return waitAgent(ctx, f.Cells[i]) }

// URLs are the URLs of every controller of the foundation, the first's
// first.
func (f *Foundation) URLs() []string {
	if len(f.Controllers) == 0 {
		return []string{f.APIURL}
	}
	urls := make([]string, len(f.Controllers))
	for i, c := range f.Controllers {
		urls[i] = c.URL
	}
	return urls
}

// ControllerDirs are the state dirs of every controller of the foundation.
func (f *Foundation) ControllerDirs() []string {
	dirs := []string{filepath.Join(f.StateDir, "controller")}
	for _, c := range f.Controllers[min(1, len(f.Controllers)):] {
		dirs = append(dirs, c.StateDir)
	}
	return dirs
}

// startMoreControllers starts controllers 2 to o.Controllers next to the
// first (running, on o.DatabaseURL), each in a state dir of its own with the
// first's CA and admin token, and returns an admin client that knows them
// all once every one answers.
func (f *Foundation) startMoreControllers(ctx context.Context, o Options, args func(dir string, port int) []string) (*api.Client, error) {
	first := filepath.Join(f.StateDir, "controller")
	f.Controllers = []ControllerProcess{{Process: f.Controller, URL: f.APIURL, StateDir: first}}
	for i := 2; i <= o.Controllers; i++ {
		dir := filepath.Join(f.StateDir, fmt.Sprintf("controller-%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		for _, name := range []string{identity.CACertFile, identity.CAKeyFile} {
			if err := copyFile(filepath.Join(first, name), filepath.Join(dir, name), 0o600); err != nil {
				return nil, fmt.Errorf("give controller %d the CA: %w", i, err)
			}
		}
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		a := append(args(dir, port), "--admin-config", filepath.Join(first, AdminFile))
		p, err := start(o.Exe, filepath.Join(f.StateDir, "logs", fmt.Sprintf("controller-%d.log", i)), a...)
		if err != nil {
			return nil, err
		}
		f.Controllers = append(f.Controllers, ControllerProcess{Process: p, URL: fmt.Sprintf("https://127.0.0.1:%d", port), StateDir: dir})
		f.save()
	}
	cfg, err := api.LoadClientConfig(filepath.Join(first, AdminFile))
	if err != nil {
		return nil, err
	}
	for i, c := range f.Controllers[1:] {
		one := cfg
		one.APIURL = c.URL
		cl, err := api.NewClient(one)
		if err != nil {
			return nil, err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, err = cl.Health(ctx); err == nil {
				break
			}
			if c.exited("controller") {
				return nil, fmt.Errorf("controller %d exited; its log (%s) ends:\n%s", i+2, c.Log, lastLines(c.Log, 10))
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("controller %d did not answer within 60s; see %s", i+2, c.Log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	cfg.APIURLs = f.URLs()
	return api.NewClient(cfg)
}

func (f *Foundation) save() error {
	b, _ := json.MarshalIndent(f, "", "  ")
	return identity.WriteFileAtomic(filepath.Join(f.StateDir, FoundationFile), append(b, '\n'), 0o600)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// start runs the trellis binary with args as a daemon of its own session,
// logging to logPath, so it outlives the CLI that started it.
// startIn is start in the network namespace at nsPath, with env added.
// The child is forked from a thread in that namespace, so it starts there.
func startIn(nsPath string, env []string, exe, logPath string, args ...string) (p Process, err error) {
	err = netns.Do(nsPath, func() error {
		p, err = startEnv(env, exe, logPath, args...)
		return err
	})
	return p, err
}

func start(exe, logPath string, args ...string) (Process, error) {
	return startEnv(nil, exe, logPath, args...)
}

func startEnv(env []string, exe, logPath string, args ...string) (Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Process{}, err
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(append(os.Environ(), "TRELLIS_CONFIG=/dev/null"), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("start trellis %s: %w", args[0], err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // reap it if it dies while we run
	return Process{PID: cmd.Process.Pid, Log: logPath, done: done}, nil
}

// exited reports whether p has exited: by its Wait when this launcher
// started it, else as alive does. Right after a start, alive cannot tell:
// the kernel closes the exec pipe, and so lets Start return, before it
// sets the new program's arguments, and an empty /proc/PID/cmdline reads
// as another process (CI saw "the controller exited" with an empty log).
func (p Process) exited(role string) bool {
	if p.done != nil {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	}
	return !p.alive(role)
}

// alive reports whether p still runs as `trellis role` (not some other
// process that reused its PID).
func (p Process) alive(role string) bool {
	if p.PID <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) < 2 || args[1] != role {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID))
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited.
	if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
		return false
	}
	return true
}

// lastLines returns the end of a log file, for error messages.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitController waits until the controller answers at f.APIURL with the
// admin config it wrote to admin.
func waitController(ctx context.Context, f *Foundation, admin string) (*api.Client, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if cfg, err := api.LoadClientConfig(admin); err == nil && cfg.APIURL == f.APIURL {
			c, err := api.NewClient(cfg)
			if err == nil {
				if _, err := c.Health(ctx); err == nil {
					return c, nil
				}
			}
		}
		if f.Controller.exited("controller") {
			return nil, fmt.Errorf("the controller exited; its log (%s) ends:\n%s", f.Controller.Log, lastLines(f.Controller.Log, 10))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the controller did not answer within 60s; see %s", f.Controller.Log)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AgentStatus asks a cell's agent for its status over its socket; an agent
// that is not ready answers with its status too, saying why.
func AgentStatus(ctx context.Context, socket string) (api.AgentStatus, error) {
	return api.NewAgentClient(socket).Status(ctx)
}

func waitAgent(ctx context.Context, c Cell) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := AgentStatus(ctx, c.Socket)
		if err == nil && st.Ready {
			return nil
		}
		if c.Agent.exited("agent") {
			return fmt.Errorf("the agent of %s exited; its log (%s) ends:\n%s", c.Name, c.Agent.Log, lastLines(c.Agent.Log, 10))
		}
		if time.Now().After(deadline) {
			reason := st.Reason
			if err != nil {
				reason = err.Error()
			}
			return fmt.Errorf("the agent of %s is not ready after 60s (%s); see %s", c.Name, reason, c.Agent.Log)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return identity.WriteFileAtomic(dst, b, mode)
}
