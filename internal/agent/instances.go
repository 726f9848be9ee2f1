package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// AppPort is the port every instance's app listens on (PORT).
const AppPort = 8080

// instances is the local foundation's executor: it runs the instances the
// controller places on this cell, each a process in its own network
// namespace (wired through the CNI plugin by libcni, as any runtime would)
// and its own mount namespace.
type instances struct {
	log        *slog.Logger
	nsPath     string // the cell's network namespace, where CNI runs
	underlayIP string // the cell's, for CF_INSTANCE_IP
	nsPrefix   string // of instance namespace names
	state      func() (api.CellState, bool)
	creds      credentialDirs
	hide       []string // the agent's state dir and socket, hidden in every instance
	dir        string
	cni        *libcni.CNIConfig
	list       *libcni.NetworkConfigList
	wake       chan struct{}
	mu         sync.Mutex
	running    map[string]*instance
}

// instance is one instance the agent runs. Its meta is saved next to the
// executor's record so a restarted agent can adopt or clean it up.
type instance struct {
	Desired api.DesiredInstance `json:"desired"`
	NetNS   string              `json:"netns"` // namespace name
	IP      netip.Addr          `json:"ip"`
	Spec    executor.Spec       `json:"spec"`

	proc      *executor.Process
	watched   *executor.Process // the process watchExit waits for
	restarts  int
	nextStart time.Time
}

const instanceMetaFile = "instance.json"

// credentialDirs says where the cell keeps what an instance mounts: its
// key and certificate, and the trusted CA bundle.
type credentialDirs interface {
	credentialsDir(instance string) string
	systemCertsDir() string
}

// instancesConfig is what the executor is made of.
type instancesConfig struct {
	Log      *slog.Logger
	StateDir string // the agent's: instances/, bin/ and cni-cache/ go there
	NetNS    string // path of the cell's network namespace
	// UnderlayIP is the cell's address (an instance's CF_INSTANCE_IP).
	UnderlayIP netip.Addr
	Cell       string // the cell's name, in the CNI configuration
	Socket     string // the agent's CNI socket
	CNIBinDir  string // holds trellis-cni; "" links cni.PluginBinary of this binary into STATE/bin
	// NetNSPrefix prefixes the names of instance namespaces.
	NetNSPrefix string
	// State is the desired state last received, and whether it applied.
	State func() (api.CellState, bool)
	// Credentials are where each instance's identity is kept on the cell.
	Credentials credentialDirs
}

func newInstances(cfg instancesConfig) (*instances, error) {
	dir := filepath.Join(cfg.StateDir, "instances")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	bin := cfg.CNIBinDir
	if bin == "" {
		bin = filepath.Join(cfg.StateDir, "bin")
		if err := linkPlugin(bin); err != nil {
			return nil, err
		}
	}
	list, err := libcni.ConfListFromBytes(cni.ConfList("trellis", cfg.Cell, cfg.Socket))
	if err != nil {
		return nil, fmt.Errorf("load CNI config: %w", err)
	}
	in := &instances{log: cfg.Log, nsPath: cfg.NetNS, underlayIP: cfg.UnderlayIP.String(), nsPrefix: cfg.NetNSPrefix,
		state: cfg.State, creds: cfg.Credentials, hide: hiddenPaths(cfg.StateDir, cfg.Socket),
		dir: dir, list: list, wake: make(chan struct{}, 1), running: map[string]*instance{},
		cni: libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(cfg.StateDir, "cni-cache"), nil)}
	in.adopt()
	return in, nil
}

// hiddenPaths are what no instance may see of the agent: its state dir
// (the cell's key, every instance's key and record) and its socket, when
// that is elsewhere.
func hiddenPaths(stateDir, socket string) []string {
	paths := []string{stateDir}
	if abs, err := filepath.Abs(stateDir); err == nil {
		paths[0] = abs
	}
	if socket != "" {
		if abs, err := filepath.Abs(socket); err == nil && !strings.HasPrefix(abs, paths[0]+"/") {
			paths = append(paths, abs)
		}
	}
	return paths
}

// linkPlugin puts trellis-cni into dir: the trellis-cni binary next to this
// one, else this binary.
func linkPlugin(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	plugin := cni.PluginBinary(self)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	link := filepath.Join(dir, cni.PluginType)
	os.Remove(link)
	return os.Symlink(plugin, link)
}

// adopt finds the instances a previous run of the agent started.
func (in *instances) adopt() {
	entries, _ := os.ReadDir(in.dir)
	for _, e := range entries {
		dir := filepath.Join(in.dir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, instanceMetaFile))
		if err != nil {
			continue
		}
		var inst instance
		if err := json.Unmarshal(b, &inst); err != nil {
			in.log.Warn("skip unreadable instance", "dir", dir, "err", err)
			continue
		}
		if p, err := executor.Adopt(dir); err == nil {
			inst.proc = p
			in.log.Info("adopted instance", "instance", inst.Desired.GUID, "app", inst.Desired.AppName, "pid", p.PID())
		}
		in.running[inst.Desired.GUID] = &inst
	}
}

func (in *instances) poke() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// instancesRecheck is the longest the executor sleeps with nothing due: a
// safety net. What it acts on wakes it: a change of the desired state
// (poke), an instance's exit (watchExit), a restart's backoff ending (the
// timer). It used to look every second, for nothing most of the time: on a
// one-CPU cell the agent's only P, which the TLS proxy's requests wait for.
const instancesRecheck = 30 * time.Second

func (in *instances) loop(ctx context.Context) {
	t := time.NewTimer(instancesRecheck)
	defer t.Stop()
	for {
		wait := instancesRecheck
		if next := in.reconcile(ctx); !next.IsZero() {
			wait = min(max(time.Until(next), 0), instancesRecheck)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-in.wake:
		case <-t.C:
		}
	}
}

// reconcile starts what is desired and not running, restarts what exited
// (with backoff), and stops what is no longer desired. It returns when a
// restart held back by its backoff is next due (zero: none is).
func (in *instances) reconcile(ctx context.Context) (next time.Time) {
	st, ready := in.state()
	if !ready {
		return time.Time{} // the state's arrival pokes
	}
	want := map[string]api.DesiredInstance{}
	for _, d := range st.Instances {
		want[d.GUID] = d
	}
	in.mu.Lock()
	var stop []*instance
	for guid, inst := range in.running {
		if _, ok := want[guid]; !ok {
			stop = append(stop, inst)
			delete(in.running, guid)
		}
	}
	in.mu.Unlock()
	for _, inst := range stop {
		in.stop(ctx, inst)
	}
	for guid, d := range want {
		in.mu.Lock()
		inst := in.running[guid]
		in.mu.Unlock()
		switch {
		case inst == nil:
			inst = &instance{Desired: d}
			in.mu.Lock()
			in.running[guid] = inst
			in.mu.Unlock()
			in.start(ctx, inst)
		case inst.proc == nil || exited(inst.proc):
			if time.Now().After(inst.nextStart) {
				in.start(ctx, inst)
			}
		}
		if inst.proc != nil && !exited(inst.proc) {
			if inst.watched != inst.proc {
				inst.watched = inst.proc
				go in.watchExit(ctx, inst.proc)
			}
		} else if next.IsZero() || inst.nextStart.Before(next) {
			next = inst.nextStart
		}
	}
	return next
}

// watchExit pokes the loop when p exits, for its restart.
func (in *instances) watchExit(ctx context.Context, p *executor.Process) {
	select {
	case <-ctx.Done():
	case <-p.Done():
		in.poke()
	}
}

func exited(p *executor.Process) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

// start attaches the instance to the overlay (once) and starts its process.
func (in *instances) start(ctx context.Context, inst *instance) {
	d := inst.Desired
	log := in.log.With("instance", d.GUID, "app", d.AppName, "index", d.Index)
	if inst.proc != nil {
		log.Warn("instance exited: restarting", "exit_code", inst.proc.ExitCode(), "restarts", inst.restarts)
	}
	dir := filepath.Join(in.dir, d.GUID)
	if !inst.IP.IsValid() {
		if err := in.attach(ctx, inst, dir); err != nil {
			inst.restarts++
			inst.nextStart = time.Now().Add(backoff(inst.restarts))
			log.Error("attach instance to the overlay", "err", err, "retry_in", backoff(inst.restarts))
			return
		}
	}
	inst.Spec = in.spec(inst, dir)
	if err := saveJSON(filepath.Join(dir, instanceMetaFile), inst); err != nil {
		log.Error("save instance", "err", err)
	}
	p, err := executor.Start(inst.Spec)
	if err != nil {
		inst.restarts++
		inst.nextStart = time.Now().Add(backoff(inst.restarts))
		log.Error("start instance", "err", err, "retry_in", backoff(inst.restarts))
		return
	}
	if inst.proc != nil {
		inst.restarts++
		inst.nextStart = time.Now().Add(backoff(inst.restarts))
	}
	inst.proc = p
	log.Info("instance started", "pid", p.PID(), "ip", inst.IP)
}

func backoff(n int) time.Duration {
	return min(time.Duration(1<<min(n, 5))*time.Second/2, 30*time.Second)
}

// attach creates the instance's namespace and runs CNI ADD for it, from
// the cell's namespace as a runtime on the cell would.
func (in *instances) attach(ctx context.Context, inst *instance, dir string) error {
	d := inst.Desired
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	inst.NetNS = in.nsPrefix + d.GUID[:min(len(d.GUID), 13)]
	nsPath, err := netns.Create(inst.NetNS)
	if err != nil {
		return err
	}
	if err := saveJSON(filepath.Join(dir, instanceMetaFile), inst); err != nil {
		netns.Delete(inst.NetNS)
		return err
	}
	var res *types100.Result
	err = netns.Do(in.nsPath, func() error {
		r, err := in.cni.AddNetworkList(ctx, in.list, in.runtimeConf(inst, nsPath))
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err == nil && len(res.IPs) == 0 {
		err = errors.New("CNI result has no address")
	}
	if err != nil {
		netns.Delete(inst.NetNS)
		return fmt.Errorf("CNI ADD: %w", err)
	}
	inst.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	return nil
}

func (in *instances) runtimeConf(inst *instance, nsPath string) *libcni.RuntimeConf {
	d := inst.Desired
	return &libcni.RuntimeConf{
		ContainerID: d.GUID,
		NetNS:       nsPath,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"TRELLIS_APP_GUID", d.AppGUID},
			{"TRELLIS_SPACE_GUID", d.SpaceGUID},
			{"TRELLIS_ORG_GUID", d.OrgGUID},
			{"TRELLIS_INSTANCE_GUID", d.GUID},
			{"TRELLIS_INDEX", strconv.Itoa(d.Index)},
		},
	}
}

// spec is how the instance's process runs: the app's command (or the
// sample app) with the platform's environment, as Cloud Foundry sets it,
// unprivileged as the executor runs every instance (its own user, HOME on
// a private tmpfs), with the agent's state dir and socket hidden.
func (in *instances) spec(inst *instance, dir string) executor.Spec {
	d := inst.Desired
	command := d.Command
	if len(command) == 0 {
		self, _ := os.Executable()
		command = []string{self, "sample-app"}
	}
	port := strconv.Itoa(AppPort)
	env := map[string]string{
		"PATH":                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":                    executor.Home,
		"LANG":                    "C.UTF-8",
		"PORT":                    port,
		"CF_INSTANCE_GUID":        d.GUID,
		"CF_INSTANCE_INDEX":       strconv.Itoa(d.Index),
		"CF_INSTANCE_IP":          in.underlayIP,
		"CF_INSTANCE_INTERNAL_IP": inst.IP.String(),
		"CF_INSTANCE_PORT":        port,
		"CF_INSTANCE_ADDR":        net.JoinHostPort(inst.IP.String(), port),
		"CF_INSTANCE_PORTS":       fmt.Sprintf(`[{"internal":%s}]`, port),
		"CF_INSTANCE_CERT":        CredentialsDir + "/" + certFile,
		"CF_INSTANCE_KEY":         CredentialsDir + "/" + keyFile,
		"CF_SYSTEM_CERT_PATH":     SystemCertsDir,
		"SSL_CERT_FILE":           SystemCertsDir + "/" + bundleFile,
		"CURL_CA_BUNDLE":          SystemCertsDir + "/" + bundleFile,
		"TRELLIS_APP_NAME":        d.AppName,
		"TRELLIS_APP_GUID":        d.AppGUID,
	}
	for k, v := range d.Env {
		if _, platform := env[k]; !platform || k == "PATH" || k == "HOME" || k == "LANG" {
			env[k] = v
		}
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var envList []string
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}
	return executor.Spec{
		ID: d.GUID, NetNS: netns.Path(inst.NetNS), Command: command, Env: envList,
		ResolvConf: []byte("nameserver " + DNSAddr + "\n"),
		Mounts: []executor.Mount{
			{Source: in.creds.credentialsDir(d.GUID), Target: CredentialsDir},
			{Source: in.creds.systemCertsDir(), Target: SystemCertsDir},
		},
		LogPath: filepath.Join(dir, "app.log"), StateDir: dir, Hide: in.hide,
	}
}

// stop ends the instance's process, detaches it and removes its namespace.
func (in *instances) stop(ctx context.Context, inst *instance) {
	d := inst.Desired
	log := in.log.With("instance", d.GUID, "app", d.AppName, "index", d.Index)
	if inst.proc != nil {
		if err := inst.proc.Stop(ctx, 5*time.Second); err != nil {
			log.Warn("stop instance", "err", err)
		}
	}
	if inst.NetNS != "" {
		nsPath := netns.Path(inst.NetNS)
		err := netns.Do(in.nsPath, func() error {
			return in.cni.DelNetworkList(ctx, in.list, in.runtimeConf(inst, nsPath))
		})
		if err != nil {
			log.Warn("CNI DEL", "err", err)
		}
		if err := netns.Delete(inst.NetNS); err != nil {
			log.Warn("delete instance namespace", "err", err)
		}
	}
	os.Remove(filepath.Join(in.dir, d.GUID, instanceMetaFile))
	log.Info("instance stopped")
}

// InstanceSpec reads how a local instance runs from the state dir of the
// agent that runs it — what `trellis exec` needs to enter it, even while
// that agent is down.
func InstanceSpec(agentStateDir, guid string) (executor.Spec, error) {
	dir := filepath.Join(agentStateDir, "instances", guid)
	b, err := os.ReadFile(filepath.Join(dir, instanceMetaFile))
	if err != nil {
		return executor.Spec{}, fmt.Errorf("instance %s is not running on this cell: %w", guid, err)
	}
	var inst instance
	if err := json.Unmarshal(b, &inst); err != nil {
		return executor.Spec{}, fmt.Errorf("instance %s: %w", guid, err)
	}
	if inst.Spec.NetNS == "" {
		return executor.Spec{}, fmt.Errorf("instance %s has not started yet", guid)
	}
	inst.Spec.ResolvConf = []byte("nameserver " + DNSAddr + "\n")
	return inst.Spec, nil
}
