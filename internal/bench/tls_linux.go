package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// TLS measures the cell's TLS termination on port 61443 (internal/proxy in
// the agent) on a real two-cell local foundation, against plaintext to the
// app's port 8080 and against haproxy terminating TLS for the same app with
// the same certificate, in the same run and on the same core budget: the
// agent of the app's cell and haproxy each get a CPU of their own, one at a
// time; the load generator and the app share the other.
//
//   - latency added at 1,000 requests/s over keep-alive connections, p50
//     and p99 (61443 minus 8080; goals 0.15 and 0.5 ms), and a new
//     connection's handshake and request (informative);
//   - throughput: requests/s with 16 closed-loop keep-alive clients, and a
//     bulk stream through one TLS connection (goals: at least haproxy's),
//     with the terminator's CPU per request and per GB (informative);
//   - memory per served instance: the agent's RSS with 100 more idle
//     instances minus without, over 100 (goal 64 KiB).
//
// It needs root and haproxy. The foundation's namespaces are deleted and
// every process it started stopped before TLS returns, also when it fails
// or ctx ends.
func TLS(ctx context.Context, o TLSOptions) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the tls bench needs root: it builds a local foundation in network namespaces")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		return nil, ErrNoHAProxy
	}
	p := tlsParamsFor(o.Quick)
	if o.LatencyRounds > 0 {
		p.latRounds = o.LatencyRounds
	}
	r := &tlsRun{ctx: ctx, out: cmp.Or[io.Writer](o.Progress, io.Discard), p: p, haproxy: haproxy, o: o}
	rep = &Report{Bench: "tls", Quick: o.Quick, Started: time.Now(), CPUs: runtime.NumCPU(), LoadStart: loadavg(),
		Samples: map[string][]float64{}}
	r.rep = rep
	defer func() {
		r.logf("taking everything down")
		for i := len(r.undo) - 1; i >= 0; i-- {
			r.undo[i]()
		}
		if r.rep.Prefix != "" {
			if left := Leftovers(r.rep.Prefix); len(left) > 0 {
				err = errors.Join(err, fmt.Errorf("namespaces left behind: %s", strings.Join(left, " ")))
			}
		}
		if ctx.Err() != nil && err != nil && !errors.Is(err, ctx.Err()) {
			err = errors.Join(ctx.Err(), err)
		}
		if err != nil {
			rep = nil
			return
		}
		rep = r.rep
		rep.Seconds = time.Since(rep.Started).Seconds()
		rep.LoadEnd = loadavg()
	}()

	if err := r.foundation(o.Exe); err != nil {
		return nil, err
	}
	if err := r.apps(); err != nil {
		return nil, err
	}
	if !o.LatencyOnly {
		if err := r.memory(); err != nil {
			return nil, err
		}
	}
	if err := r.pin(); err != nil {
		return nil, err
	}
	if err := r.startHAProxy(); err != nil {
		return nil, err
	}
	if err := r.measure(); err != nil {
		return nil, err
	}
	return rep, nil
}

// tlsRun is one TLS bench run.
type tlsRun struct {
	ctx     context.Context
	o       TLSOptions
	out     io.Writer
	p       tlsParams
	rep     *Report
	haproxy string   // its path
	undo    []func() // run last to first when the run ends
	dir     string   // the run's files: the foundation's state dir, haproxy's configuration

	f       *launcher.Foundation
	api     *api.Client
	space   string
	cell1   string // cell GUIDs
	cell2   string
	agent   int    // PID of cell2's agent: the proxy measured
	front   inst   // the load generator's sockets are opened in its namespace
	backend inst   // the sample app
	bulk    inst   // no app: the bench serves its 8080 (see serveBulk)
	bundle  []byte // the platform CA bundle the client trusts

	gen, srv int   // CPUs of the load generator and the app, and of the TLS terminator
	pinned   bool  // false with one CPU: everything shares it
	appPIDs  []int // the backend app's processes

	haproxyPID int
	lat1       map[string][]float64 // latency samples with every party on one CPU
	// latRounds and latRounds1 hold the same samples by round: [path][round].
	latRounds, latRounds1 map[string][][]float64
	haproxyDone           chan struct{}
	haproxyVer            string
	negotiated            map[string]string // target key → "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519"
	idleSeconds           float64           // from scaling the idle app to all of it served
	rss                   [2]int            // the agent's RSS in KiB without and with the idle instances
	// work and work1 are the terminators' work per request in the
	// latency rounds, placement by placement.
	work, work1 latWork
}

// inst is an app instance of the run.
type inst struct {
	app, guid, ip, netns string
}

func (r *tlsRun) logf(format string, args ...any) {
	fmt.Fprintf(r.out, "bench tls: "+format+"\n", args...)
}

// foundation starts a two-cell local foundation, taken down at the end.
func (r *tlsRun) foundation(exe string) error {
	dir, err := os.MkdirTemp("", "trellis-bench-tls-")
	if err != nil {
		return err
	}
	r.dir = dir
	r.undo = append(r.undo, func() { os.RemoveAll(dir) })
	r.logf("starting a local foundation with 2 cells in %s", dir)
	f, err := launcher.Up(r.ctx, launcher.Options{StateDir: filepath.Join(dir, "foundation"), Cells: 2, Exe: exe})
	r.undo = append(r.undo, func() {
		if err := launcher.Down(context.WithoutCancel(r.ctx), filepath.Join(dir, "foundation"), true, io.Discard); err != nil {
			r.logf("taking the foundation down: %v", err)
		}
	})
	if f != nil {
		r.rep.Prefix = f.Prefix
	}
	if err != nil {
		return err
	}
	r.f = f
	r.agent = f.Cells[1].Agent.PID
	cfg, err := api.LoadClientConfig(f.Admin)
	if err != nil {
		return err
	}
	if r.api, err = api.NewClient(cfg); err != nil {
		return err
	}
	spaces, err := r.api.Spaces(r.ctx, api.SpaceFilter{Names: []string{"default"}})
	if err != nil || len(spaces) == 0 {
		return fmt.Errorf("default space: %v", err)
	}
	r.space = spaces[0].GUID
	cells, err := r.api.Cells(r.ctx)
	if err != nil {
		return err
	}
	for _, c := range cells {
		switch c.Name {
		case f.Cells[0].Name:
			r.cell1 = c.GUID
		case f.Cells[1].Name:
			r.cell2 = c.GUID
		}
	}
	if r.cell1 == "" || r.cell2 == "" {
		return fmt.Errorf("cells %v: want %s and %s", cells, f.Cells[0].Name, f.Cells[1].Name)
	}
	return nil
}

// push creates an app pinned to cell, with command ("" for the sample app)
// and n instances, and starts it.
func (r *tlsRun) push(name, cell string, n int, command ...string) (string, error) {
	a, err := r.api.CreateApp(r.ctx, r.space, name)
	if err != nil {
		return "", err
	}
	u := api.AppUpdate{CellGUID: &cell}
	if len(command) > 0 {
		u.Command = &command
	}
	if _, err := r.api.UpdateApp(r.ctx, a.GUID, u); err != nil {
		return "", err
	}
	if n != 1 {
		if _, err := r.api.ScaleApp(r.ctx, a.GUID, n); err != nil {
			return "", err
		}
	}
	_, err = r.api.AppAction(r.ctx, a.GUID, "start")
	return a.GUID, err
}

// running waits for app's first instance to run and returns it.
func (r *tlsRun) running(name, app string, cell launcher.Cell) (inst, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ins, err := r.api.Instances(r.ctx, app)
		if err != nil {
			return inst{}, err
		}
		for _, in := range ins {
			if in.State != "RUNNING" || in.IP == "" {
				continue
			}
			if spec, err := agent.InstanceSpec(cell.StateDir, in.GUID); err == nil {
				return inst{app: name, guid: in.GUID, ip: in.IP, netns: spec.NetNS}, nil
			}
		}
		if time.Now().After(deadline) {
			return inst{}, fmt.Errorf("the instance of %s did not run within 60 s; see %s", name, cell.Agent.Log)
		}
		if err := r.wait(50 * time.Millisecond); err != nil {
			return inst{}, err
		}
	}
}

// wait waits d, or less when the run is cancelled.
func (r *tlsRun) wait(d time.Duration) error {
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// apps pushes frontend (cell1), and backend (the sample app) and bulk (no
// app: the bench serves its port) on cell2; allows frontend to reach both
// on 8080, 61443 and haproxy's ports; and waits until all of it answers.
func (r *tlsRun) apps() error {
	r.logf("pushing frontend (cell1), backend and bulk (cell2); policies frontend → backend, bulk on tcp %d, %d, %d/%d, and backend on %d",
		tlsAppPort, tlsProxyPort, tlsHAProxyPort, tlsHAProxyBulk, tlsRelayPort)
	front, err := r.push("frontend", r.cell1, 1)
	if err != nil {
		return err
	}
	back, err := r.push("backend", r.cell2, 1)
	if err != nil {
		return err
	}
	bulk, err := r.push("bulk", r.cell2, 1, "sleep", "infinity")
	if err != nil {
		return err
	}
	var ps []api.Policy
	for _, d := range []struct {
		app   string
		ports []int
	}{{back, []int{tlsAppPort, tlsProxyPort, tlsHAProxyPort, tlsRelayPort}}, {bulk, []int{tlsAppPort, tlsProxyPort, tlsHAProxyBulk}}} {
		for _, port := range d.ports {
			ps = append(ps, api.Policy{Source: api.Source{ID: front},
				Destination: api.Destination{ID: d.app, Protocol: "tcp", Ports: api.Ports{Start: port, End: port}}})
		}
	}
	if err := r.api.CreatePolicies(r.ctx, ps); err != nil {
		return err
	}
	if r.front, err = r.running("frontend", front, r.f.Cells[0]); err != nil {
		return err
	}
	if r.backend, err = r.running("backend", back, r.f.Cells[1]); err != nil {
		return err
	}
	if r.bulk, err = r.running("bulk", bulk, r.f.Cells[1]); err != nil {
		return err
	}
	if err := r.serveBulk(); err != nil {
		return err
	}
	r.bundle, err = os.ReadFile(filepath.Join(r.f.Cells[0].StateDir, "system-certs", "trusted-ca.crt"))
	if err != nil {
		return fmt.Errorf("the platform CA bundle: %w", err)
	}
	// Everything answers: plaintext first, then 61443 with a verified
	// certificate (the agent serves an instance once it has one).
	for _, t := range []tlsTarget{r.target(r.backend, pathPlain, tlsAppPort), r.target(r.bulk, pathPlain, tlsAppPort),
		r.target(r.backend, pathOurs, tlsProxyPort), r.target(r.bulk, pathOurs, tlsProxyPort)} {
		if err := r.reachable(t, "agent"); err != nil {
			return err
		}
	}
	return nil
}

// reachable waits until t answers a connection (and a handshake) from the
// frontend.
func (r *tlsRun) reachable(t tlsTarget, who string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _, err := r.open(t, 2*time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s of %s does not answer the frontend within 30 s: %w (is 61443 served by the %s?)", t.addr, t.inst, err, who)
		}
		if err := r.wait(50 * time.Millisecond); err != nil {
			return err
		}
	}
}

// serveBulk listens on the bulk instance's 8080 — in its namespace, where
// no app listens — and sends an endless stream to every connection until it
// closes: the bulk source behind 8080, 61443 and haproxy alike.
func (r *tlsRun) serveBulk() error {
	var ln net.Listener
	err := netns.Do(r.bulk.netns, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(r.bulk.ip, strconv.Itoa(tlsAppPort)))
		return err
	})
	if err != nil {
		return fmt.Errorf("bulk source: %w", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := bytes.Repeat([]byte("trellis bench bulk stream\n"), 10<<10) // 260 KiB
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				for {
					if _, err := c.Write(buf); err != nil {
						break
					}
				}
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	r.undo = append(r.undo, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return nil
}

// memory measures the agent's RSS with the instances it serves so far
// (backend, bulk) and with idle more: an app whose instances sleep, all
// served on 61443 (the agent's trellis_proxy_instances gauge).
func (r *tlsRun) memory() error {
	base, err := r.served()
	if err != nil {
		return err
	}
	if base < 2 {
		return fmt.Errorf("the agent of %s serves %v instances on 61443, want at least backend and bulk", r.f.Cells[1].Name, base)
	}
	if r.rss[0], err = r.settledRSS(); err != nil {
		return err
	}
	n := r.p.idle
	r.logf("memory: agent of cell2 RSS %d KiB serving %.0f instances; starting %d idle instances", r.rss[0], base, n)
	start := time.Now()
	if err := r.attachIdle(n); err != nil {
		return err
	}
	deadline := time.Now().Add(60*time.Second + time.Duration(n)*time.Second)
	for {
		v, err := r.served()
		if err != nil {
			return err
		}
		if v >= base+float64(n) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent of cell2 serves %.0f instances on 61443 after %s, want %.0f", v, time.Since(start).Round(time.Second), base+float64(n))
		}
		if err := r.wait(100 * time.Millisecond); err != nil {
			return err
		}
	}
	r.idleSeconds = time.Since(start).Seconds()
	if r.rss[1], err = r.settledRSS(); err != nil {
		return err
	}
	per := float64(r.rss[1]-r.rss[0]) / float64(n)
	r.logf("memory: %d idle instances served after %.1f s; RSS %d KiB: %.1f KiB per instance", n, r.idleSeconds, r.rss[1], per)
	return nil
}

// attachIdle attaches n containers to cell2 the way any CNI runtime does —
// their namespaces made here, trellis-cni run by libcni inside the cell —
// as instances of an app that runs nothing in them: what a served instance
// costs the agent on a real host, where the runtime runs the containers
// (the local foundation's executor, which also runs their processes, is
// not part of a real agent). The namespaces carry the foundation's prefix,
// so taking it down deletes them.
func (r *tlsRun) attachIdle(n int) error {
	cell := r.f.Cells[1]
	app, err := r.api.CreateApp(r.ctx, r.space, "idle")
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromFile(cell.CNIConfList)
	if err != nil {
		return fmt.Errorf("cell2's CNI config: %w", err)
	}
	cache, err := os.MkdirTemp("", "trbench-cni-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	plugin := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(r.f.CNIPlugin)}, cache, nil)
	for i := range n {
		name := fmt.Sprintf("%s-idle-%d", r.f.Prefix, i)
		path, err := netns.Create(name)
		if err != nil {
			return err
		}
		rt := &libcni.RuntimeConf{ContainerID: name, NetNS: path, IfName: "eth0", Args: [][2]string{
			{"TRELLIS_APP_GUID", app.GUID}, {"TRELLIS_INSTANCE_GUID", uuid.NewString()}, {"TRELLIS_INDEX", strconv.Itoa(i)}}}
		err = netns.Do(netns.Path(cell.NetNS), func() error {
			_, err := plugin.AddNetworkList(r.ctx, list, rt)
			return err
		})
		if err != nil {
			return fmt.Errorf("attach idle container %d to cell2: %w", i, err)
		}
	}
	return nil
}

// served reads the number of instances the agent of cell2 serves on 61443.
func (r *tlsRun) served() (float64, error) {
	b, err := api.NewAgentClient(r.f.Cells[1].Socket).Metrics(r.ctx)
	if err != nil {
		return 0, fmt.Errorf("metrics of the agent of cell2: %w", err)
	}
	v, ok := gauge(string(b), "trellis_proxy_instances")
	if !ok {
		return 0, errors.New("the agent of cell2 has no trellis_proxy_instances metric: it does not serve 61443 (built without internal/agent/tls.go?)")
	}
	return v, nil
}

// settledRSS reads the agent's RSS several times, 300 ms apart, and keeps
// the least: garbage the Go runtime has not yet returned shows as noise
// that only goes down while the agent idles.
func (r *tlsRun) settledRSS() (int, error) {
	least := math.MaxInt
	for i := range r.p.settle {
		if i > 0 {
			if err := r.wait(300 * time.Millisecond); err != nil {
				return 0, err
			}
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.agent))
		if err != nil {
			return 0, fmt.Errorf("the agent of cell2: %w", err)
		}
		kib, err := vmRSS(string(b))
		if err != nil {
			return 0, fmt.Errorf("the agent of cell2: %w", err)
		}
		least = min(least, kib)
	}
	return least, nil
}

// pin gives the agent of cell2 — the proxy — a CPU of its own, and the
// app's process the generator's. This process (the load generator) is
// pinned by measure.
func (r *tlsRun) pin() error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return fmt.Errorf("cpu affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		r.logf("one CPU only: load generator, app and TLS terminators share it")
		return nil
	}
	r.gen, r.srv, r.pinned = cpus[0], cpus[1], true
	if err := pinProcess(r.agent, r.srv); err != nil {
		return fmt.Errorf("pin the agent of cell2: %w", err)
	}
	pids, err := pidsIn(r.backend.netns)
	if err != nil {
		return err
	}
	if len(pids) == 0 {
		return errors.New("no process in the backend instance's namespace")
	}
	r.appPIDs = pids
	if err := r.pinApp(r.gen); err != nil {
		return err
	}
	r.logf("pinned: load generator and backend app (pid %v) to CPU %d; agent of cell2 (pid %d) and haproxy to CPU %d", pids, r.gen, r.agent, r.srv)
	return nil
}

// pinApp moves the backend app's processes to cpu.
func (r *tlsRun) pinApp(cpu int) error {
	for _, pid := range r.appPIDs {
		if err := pinProcess(pid, cpu); err != nil {
			return fmt.Errorf("pin the backend app (pid %d) to CPU %d: %w", pid, cpu, err)
		}
	}
	return nil
}

// pinProcess sets the CPU affinity of every thread of pid to cpu (twice:
// a thread started meanwhile inherits its creator's mask). A Go process
// follows with GOMAXPROCS within a second.
func pinProcess(pid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	for range 2 {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("set affinity of thread %d: %w", tid, err)
			}
		}
	}
	return nil
}

// pidsIn lists the processes whose network namespace is the one at path.
func pidsIn(path string) ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// startHAProxy starts the baseline in the backend instance's namespace, on
// the terminator CPU, with the instances' own certificates: backend on
// tlsHAProxyPort, and in the bulk instance's namespace the bulk source on
// tlsHAProxyBulk.
func (r *tlsRun) startHAProxy() error {
	var fronts []haproxyTLS
	for _, f := range []struct {
		name string
		in   inst
		port int
		ns   string
	}{{"backend", r.backend, tlsHAProxyPort, ""}, {"bulk", r.bulk, tlsHAProxyBulk, filepath.Base(r.bulk.netns)}} {
		creds := filepath.Join(r.f.Cells[1].StateDir, "credentials", f.in.guid)
		crt, err := os.ReadFile(filepath.Join(creds, "instance.crt"))
		if err != nil {
			return fmt.Errorf("the certificate of %s: %w", f.name, err)
		}
		key, err := os.ReadFile(filepath.Join(creds, "instance.key"))
		if err != nil {
			return fmt.Errorf("the key of %s: %w", f.name, err)
		}
		pem := filepath.Join(r.dir, f.name+".pem")
		if err := os.WriteFile(pem, append(append(crt, '\n'), key...), 0o600); err != nil {
			return err
		}
		fronts = append(fronts, haproxyTLS{Name: f.name, Port: f.port, NetNS: f.ns, Cert: pem,
			App: net.JoinHostPort(f.in.ip, strconv.Itoa(tlsAppPort))})
	}
	fronts = append(fronts, haproxyTLS{Name: "relay", Port: tlsRelayPort,
		App: net.JoinHostPort(r.backend.ip, strconv.Itoa(tlsAppPort))})
	cfgPath := filepath.Join(r.dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(haproxyConfig(fronts)), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(r.haproxy, "-v").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			r.haproxyVer = f[2]
		}
	}
	logPath := filepath.Join(r.dir, "haproxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	said := func() string {
		b, _ := os.ReadFile(logPath)
		return strings.TrimSpace(string(b))
	}
	cmd := exec.Command(r.haproxy, "-db", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own, as the launcher gives the agent (and a host
	// its services): with the kernel's autogroups (sched_autogroup_enabled)
	// each session is a scheduling group, and haproxy in the bench's
	// session shared the load generator's group. On one CPU the scheduler
	// then let it preempt the generator at once where the agent, in a group
	// of its own, waited (perf sched over one-CPU rounds: a wakeup waited
	// over 0.1 ms for the CPU 4.6% of the times, haproxy's 1.2%; p99 0.18
	// against 0.11 ms).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setsid: true}
	r.logf("starting haproxy %s in the backend instance's namespace (nbthread 1, mode tcp)", r.haproxyVer)
	err = netns.Do(r.backend.netns, func() error {
		if !r.pinned {
			return cmd.Start()
		}
		// The child inherits this thread's namespace and CPU mask.
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		set.Set(r.srv)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return err
		}
		serr := cmd.Start()
		return errors.Join(serr, unix.SchedSetaffinity(0, &old))
	})
	if err != nil {
		return fmt.Errorf("start haproxy: %w", err)
	}
	r.haproxyPID = cmd.Process.Pid
	r.haproxyDone = make(chan struct{})
	go func() { cmd.Wait(); close(r.haproxyDone) }()
	r.undo = append(r.undo, func() { cmd.Process.Kill(); <-r.haproxyDone })
	for _, t := range []tlsTarget{r.target(r.backend, pathHAProxy, tlsHAProxyPort), r.target(r.bulk, pathHAProxy, tlsHAProxyBulk),
		r.target(r.backend, pathRelay, tlsRelayPort)} {
		if err := r.reachable(t, "haproxy"); err != nil {
			select {
			case <-r.haproxyDone:
				return fmt.Errorf("haproxy exited: %s", said())
			default:
			}
			return fmt.Errorf("%w: haproxy says: %s", err, said())
		}
	}
	return nil
}

// The paths of the bench, as the series of their samples are named.
const (
	pathOurs    = "trellis-61443" // TLS through the agent's proxy
	pathPlain   = "plain-8080"    // plaintext straight to the app
	pathHAProxy = "haproxy"       // TLS through haproxy
	pathRelay   = "relay-8081"    // plaintext through haproxy: the extra hop alone
)

// tlsTarget is one way from the frontend to an app: plaintext to 8080,
// TLS through 61443, TLS through haproxy, or plaintext through haproxy.
type tlsTarget struct {
	key  string // series of the samples: pathOurs, pathPlain, pathHAProxy, pathRelay
	inst string // the app, for errors
	addr string
	tls  *tls.Config // nil for plaintext
}

// target is the way key to in on port.
func (r *tlsRun) target(in inst, key string, port int) tlsTarget {
	t := tlsTarget{key: key, inst: in.app, addr: net.JoinHostPort(in.ip, strconv.Itoa(port))}
	if key != pathPlain && key != pathRelay {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.bundle)
		// X25519 only: haproxy's OpenSSL 3.0 has no hybrid post-quantum
		// group, which Go would otherwise prefer with the proxy.
		t.tls = &tls.Config{RootCAs: pool, ServerName: in.guid, MinVersion: tls.VersionTLS12,
			CurvePreferences: []tls.CurveID{tls.X25519}}
	}
	return t
}

// open connects to t from the frontend's namespace (and, for TLS,
// handshakes, verifying the certificate) and returns the connection and
// when its connect began. Its deadline is now+life.
func (r *tlsRun) open(t tlsTarget, life time.Duration) (*httpConn, time.Time, error) {
	var raw net.Conn
	var began time.Time
	err := netns.Do(r.front.netns, func() (err error) {
		began = time.Now()
		raw, err = net.DialTimeout("tcp4", t.addr, 5*time.Second)
		return err
	})
	if err != nil {
		return nil, began, err
	}
	raw.SetDeadline(time.Now().Add(life))
	c := raw
	if t.tls != nil {
		tc := tls.Client(raw, t.tls)
		if err := tc.HandshakeContext(r.ctx); err != nil {
			raw.Close()
			return nil, began, fmt.Errorf("handshake with %s: %w", t.addr, err)
		}
		if r.negotiated == nil {
			r.negotiated = map[string]string{}
		}
		if _, ok := r.negotiated[t.key]; !ok {
			cs := tc.ConnectionState()
			r.negotiated[t.key] = fmt.Sprintf("%s, %s, %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID)
		}
		c = tc
	}
	return &httpConn{Conn: c, br: bufio.NewReaderSize(c, 16<<10)}, began, nil
}

// httpConn is a keep-alive HTTP/1.1 client connection.
type httpConn struct {
	net.Conn
	br *bufio.Reader
}

var getRoot = []byte("GET / HTTP/1.1\r\nHost: backend\r\nUser-Agent: trellis-bench\r\n\r\n")

// get asks for GET / and reads the whole answer, which must be a 200.
func (h *httpConn) get() error {
	if _, err := h.Write(getRoot); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET / answered %s", resp.Status)
	}
	return err
}

// measure pins this process to the generator CPU and runs every figure.
func (r *tlsRun) measure() error {
	if r.pinned {
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		set.Set(r.gen)
		procs := runtime.GOMAXPROCS(1)
		for range 2 {
			if err := setThreadsAffinity(&set); err != nil {
				setThreadsAffinity(&old)
				runtime.GOMAXPROCS(procs)
				return err
			}
		}
		defer func() {
			setThreadsAffinity(&old)
			runtime.GOMAXPROCS(procs)
		}()
	}
	agentCPU, haproxyCPU := processCPU(r.agent), processCPU(r.haproxyPID)
	app := []tlsTarget{
		r.target(r.backend, pathOurs, tlsProxyPort),
		r.target(r.backend, pathPlain, tlsAppPort),
		r.target(r.backend, pathHAProxy, tlsHAProxyPort),
	}
	// The latency rounds also time the hop alone: haproxy relaying
	// plaintext, on the terminators' CPU.
	latPaths := append(slices.Clone(app), r.target(r.backend, pathRelay, tlsRelayPort))
	bulk := []tlsTarget{
		r.target(r.bulk, pathOurs, tlsProxyPort),
		r.target(r.bulk, pathPlain, tlsAppPort),
		r.target(r.bulk, pathHAProxy, tlsHAProxyBulk),
	}
	cpuOf := map[string]func() time.Duration{pathOurs: agentCPU, pathHAProxy: haproxyCPU}
	p := r.p
	lat, byRound, err := r.latencyRounds("latency", latPaths, &r.work)
	if err != nil {
		return err
	}
	r.latRounds = byRound
	// The same with every party on one CPU, as on a busy cell: the
	// terminators join the generator and the app, so that a request makes
	// no cross-CPU wakeup (each costs an inter-processor interrupt, dear
	// on a VM) and what is left is the terminators' own work.
	lat1 := map[string][]float64{}
	if r.pinned {
		if err := r.pinTerminators(r.gen); err != nil {
			return err
		}
		if lat1, r.latRounds1, err = r.latencyRounds("latency on one CPU", latPaths, &r.work1); err != nil {
			return err
		}
		if err := r.pinTerminators(r.srv); err != nil {
			return err
		}
	}
	r.lat1 = lat1
	if r.o.LatencyOnly {
		r.latencyFigures(lat)
		return nil
	}

	hs := map[string][]float64{}
	r.logf("new connections: %d round(s) of %d per path, one at a time", p.rounds, p.handshakes)
	for i := range p.rounds {
		for _, t := range rotate(app, i) {
			xs, err := r.newConnections(t, p.handshakes)
			if err != nil {
				return fmt.Errorf("new connections %s: %w", t.key, err)
			}
			hs[t.key] = append(hs[t.key], xs...)
			r.logf("  %s: p50 %.3f ms, p99 %.3f ms", t.key, percentile(xs, 50), percentile(xs, 99))
		}
	}
	rps, cpuReq := map[string][]float64{}, map[string][]float64{}
	// The app joins the terminators, so that their CPU saturates first and
	// the rate measures them: the client alone on its CPU has capacity to
	// spare, the app costs every path the same.
	if r.pinned {
		if err := r.pinApp(r.srv); err != nil {
			return err
		}
		if err := r.wait(1500 * time.Millisecond); err != nil {
			return err
		}
	}
	r.logf("requests/s: %d round(s) of %s per path, %d closed-loop keep-alive clients", p.rounds, p.rps, tlsRPSConns)
	for i := range p.rounds {
		for _, t := range rotate(app, i) {
			v, per, err := r.closedLoop(t, cpuOf[t.key])
			if err != nil {
				return fmt.Errorf("requests/s %s: %w", t.key, err)
			}
			rps[t.key] = append(rps[t.key], v)
			if cpuOf[t.key] != nil {
				cpuReq[t.key] = append(cpuReq[t.key], per)
			}
			r.logf("  %s: %.0f requests/s, terminator CPU %.1f µs per request", t.key, v, per)
		}
	}
	if r.pinned {
		if err := r.pinApp(r.gen); err != nil {
			return err
		}
	}
	gbps, cpuGB := map[string][]float64{}, map[string][]float64{}
	r.logf("bulk: %d round(s) of %s per path, one connection", p.rounds, p.bulk)
	for i := range p.rounds {
		for _, t := range rotate(bulk, i) {
			v, per, err := r.stream(t, cpuOf[t.key])
			if err != nil {
				return fmt.Errorf("bulk %s: %w", t.key, err)
			}
			gbps[t.key] = append(gbps[t.key], v)
			if cpuOf[t.key] != nil {
				cpuGB[t.key] = append(cpuGB[t.key], per)
			}
			r.logf("  %s: %.2f Gbit/s, terminator CPU %.0f ms per GB", t.key, v, per)
		}
	}
	r.figures(lat, hs, rps, cpuReq, gbps, cpuGB)
	return nil
}

// latencyRounds warms every path up (which also lets pinned Go processes
// settle on one P: their runtime looks at its CPU mask once a second),
// then times the rounds of fixed-rate requests, the paths in rotating
// order, and returns every path's samples in ms, pooled and by round. It
// fills work with what the terminator of each TLS path spent per request.
func (r *tlsRun) latencyRounds(what string, paths []tlsTarget, work *latWork) (map[string][]float64, map[string][][]float64, error) {
	for _, t := range paths {
		if _, err := r.fixedRate(t, tlsLatencyRate, tlsLatencyConns, time.Second/2); err != nil {
			return nil, nil, fmt.Errorf("warm-up %s: %w", t.key, err)
		}
	}
	p := r.p
	r.logf("%s: %d round(s) of %s per path at %d requests/s over %d keep-alive connections", what, p.latRounds, p.latency, tlsLatencyRate, tlsLatencyConns)
	lat, byRound := map[string][]float64{}, map[string][][]float64{}
	*work = latWork{cpu: map[string][]float64{}, switches: map[string][]float64{}}
	terminator := map[string]int{pathOurs: r.agent, pathHAProxy: r.haproxyPID}
	for i := range p.latRounds {
		for _, t := range rotate(paths, i) {
			pid, measured := terminator[t.key]
			cpu0, cs0 := threadsWork(pid)
			xs, err := r.fixedRate(t, tlsLatencyRate, tlsLatencyConns, p.latency)
			if err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w", what, t.key, err)
			}
			if cpu1, cs1 := threadsWork(pid); measured && len(xs) > 0 {
				n := float64(len(xs))
				work.cpu[t.key] = append(work.cpu[t.key], float64((cpu1-cpu0).Nanoseconds())/1000/n)
				work.switches[t.key] = append(work.switches[t.key], float64(cs1-cs0)/n)
			}
			lat[t.key] = append(lat[t.key], xs...)
			byRound[t.key] = append(byRound[t.key], xs)
			r.logf("  %s: p50 %.3f ms, p99 %.3f ms", t.key, percentile(xs, 50), percentile(xs, 99))
		}
	}
	return lat, byRound, nil
}

// latWork is what a terminator spent per request in latency rounds, by
// path and round: CPU time in µs and context switches.
type latWork struct{ cpu, switches map[string][]float64 }

// threadsWork returns the CPU time and the context switches (voluntary and
// not) of all threads of pid so far; zeros for pid 0 or when it is gone.
// The CPU time is the scheduler's (/proc/PID/task/TID/schedstat, in ns),
// so it counts the network stack's work done on the process's behalf in
// its system calls, as the kernel charges it.
func threadsWork(pid int) (cpu time.Duration, switches int64) {
	if pid == 0 {
		return 0, 0
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0
	}
	for _, t := range tasks {
		if b, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				cpu += time.Duration(ns)
			}
		}
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "status"))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switches += n
			}
		}
	}
	return cpu, switches
}

// rotate is the paths of round i: each takes every place in turn.
func rotate(ts []tlsTarget, i int) []tlsTarget {
	return append(slices.Clone(ts[i%len(ts):]), ts[:i%len(ts)]...)
}

// pinTerminators moves the agent of cell2 and haproxy to cpu, and waits
// for the Go runtime to notice (it looks at its CPU mask once a second).
func (r *tlsRun) pinTerminators(cpu int) error {
	for _, pid := range []int{r.agent, r.haproxyPID} {
		if err := pinProcess(pid, cpu); err != nil {
			return fmt.Errorf("pin pid %d to CPU %d: %w", pid, cpu, err)
		}
	}
	return r.wait(1500 * time.Millisecond)
}

// fixedRate sends GET / at rate per second for d over conns keep-alive
// connections (request i on connection i mod conns), open loop, and
// returns every request's latency in ms (see requestStart).
func (r *tlsRun) fixedRate(t tlsTarget, rate, conns int, d time.Duration) ([]float64, error) {
	cs := make([]*httpConn, conns)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range cs {
		c, _, err := r.open(t, d+10*time.Second)
		if err != nil {
			return nil, err
		}
		cs[i] = c
	}
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]float64, n)
	start := time.Now().Add(10 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for j, c := range cs {
		wg.Go(func() {
			var prevDone time.Time
			for i := j; i < n; i += conns {
				if err := r.ctx.Err(); err != nil {
					errs[j] = err
					return
				}
				due := start.Add(time.Duration(i) * interval)
				if w := time.Until(due); w > 0 {
					time.Sleep(w)
				}
				began := requestStart(due, prevDone, time.Now())
				if err := c.get(); err != nil {
					errs[j] = fmt.Errorf("request %d: %w", i, err)
					return
				}
				prevDone = time.Now()
				lat[i] = ms(prevDone.Sub(began))
			}
		})
	}
	wg.Wait()
	if err := r.ctx.Err(); err != nil {
		return nil, err
	}
	return lat, errors.Join(errs...)
}

// newConnections opens n connections one after the other and on each asks
// GET / once: the latency of connect, handshake and request, in ms.
func (r *tlsRun) newConnections(t tlsTarget, n int) ([]float64, error) {
	var lat []float64
	for range n {
		if err := r.ctx.Err(); err != nil {
			return nil, err
		}
		c, began, err := r.open(t, 10*time.Second)
		if err != nil {
			return nil, err
		}
		err = c.get()
		done := time.Now()
		c.Close()
		if err != nil {
			return nil, err
		}
		lat = append(lat, ms(done.Sub(began)))
	}
	return lat, nil
}

// closedLoop runs tlsRPSConns clients that each send GET / again as soon as
// the answer is in, and returns the requests per second after the warm-up
// and the terminator's CPU per request in µs (0 without one).
func (r *tlsRun) closedLoop(t tlsTarget, cpu func() time.Duration) (float64, float64, error) {
	var count atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make([]error, tlsRPSConns)
	for j := range tlsRPSConns {
		c, _, err := r.open(t, r.p.warm+r.p.rps+10*time.Second)
		if err != nil {
			stop.Store(true)
			wg.Wait()
			return 0, 0, err
		}
		wg.Go(func() {
			defer c.Close()
			for !stop.Load() {
				if err := c.get(); err != nil {
					errs[j] = err
					return
				}
				count.Add(1)
			}
		})
	}
	err := r.wait(r.p.warm)
	c0, cpu0, t0 := count.Load(), readCPU(cpu), time.Now()
	if err == nil {
		err = r.wait(r.p.rps)
	}
	c1, cpu1, t1 := count.Load(), readCPU(cpu), time.Now()
	stop.Store(true)
	wg.Wait()
	if err != nil {
		return 0, 0, err
	}
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	n := float64(c1 - c0)
	if n == 0 {
		return 0, 0, errors.New("no request completed")
	}
	return n / t1.Sub(t0).Seconds(), float64((cpu1 - cpu0).Microseconds()) / n, nil
}

// stream reads the bulk source through one connection and returns the
// rate after the warm-up in Gbit/s and the terminator's CPU per GB in ms
// (0 without one).
func (r *tlsRun) stream(t tlsTarget, cpu func() time.Duration) (float64, float64, error) {
	c, _, err := r.open(t, r.p.warm+r.p.bulk+10*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	var total, b0 int64
	var t0 time.Time
	var cpu0 time.Duration
	start := time.Now()
	for {
		n, err := c.Read(buf)
		total += int64(n)
		if err != nil {
			return 0, 0, err
		}
		now := time.Now()
		if t0.IsZero() && now.Sub(start) >= r.p.warm {
			b0, t0, cpu0 = total, now, readCPU(cpu)
		}
		if !t0.IsZero() && now.Sub(t0) >= r.p.bulk {
			got := float64(total - b0)
			return got * 8 / now.Sub(t0).Seconds() / 1e9, (readCPU(cpu) - cpu0).Seconds() * 1000 / (got / 1e9), nil
		}
		if err := r.ctx.Err(); err != nil {
			return 0, 0, err
		}
	}
}

// readCPU calls cpu, or returns 0 for no terminator.
func readCPU(cpu func() time.Duration) time.Duration {
	if cpu == nil {
		return 0
	}
	return cpu()
}

// addedLatency adds the figures of latency added by 61443 (p50 and p99
// of its samples in lat minus the same of 8080's), against haproxy's TLS
// and against the hop alone, and the goals: per round (byRound), the
// latency 61443 added over the latency haproxy's TLS added, p50 and p99,
// the median of the rounds' ratios at most 1.
func (r *tlsRun) addedLatency(lat map[string][]float64, byRound map[string][][]float64, id, name, haName string) {
	added := func(k string, p float64) float64 { return percentile(lat[k], p) - percentile(lat[pathPlain], p) }
	const relayName = "added by the hop alone: haproxy relaying plaintext (mode tcp, no TLS)"
	for _, p := range []float64{50, 99} {
		r.rep.Figures = append(r.rep.Figures, addedRatioFigure(byRound, p,
			fmt.Sprintf("%s-p%.0f-vs-haproxy", id, p), fmt.Sprintf("%s, p%.0f, added by 61443 over added by %s, per round", name, p, haName)))
	}
	r.rep.Figures = append(r.rep.Figures,
		newFigure(id+"-p50", name+", p50 (61443 − 8080)", "ms",
			added(pathOurs, 50), added(pathHAProxy, 50), "added by "+haName, nil),
		newFigure(id+"-p99", name+", p99 (61443 − 8080)", "ms",
			added(pathOurs, 99), added(pathHAProxy, 99), "added by "+haName, nil),
		newFigure(id+"-hop-p50", name+", p50, against the hop alone", "ms",
			added(pathOurs, 50), added(pathRelay, 50), relayName, nil),
		newFigure(id+"-hop-p99", name+", p99, against the hop alone", "ms",
			added(pathOurs, 99), added(pathRelay, 99), relayName, nil))
}

// addedRatioFigure is the goal figure of addedLatency at percentile p: in
// each round, the latency 61443 added (its percentile minus 8080's of the
// same round) and the latency haproxy's TLS added; the value and the
// baseline are the medians of those, the ratio the median of the rounds'
// ratios, held to at most 1. A round in which haproxy added nothing or
// less (noise can make a difference negative) has no ratio: it is left
// out, and the baseline's name says how many rounds counted.
func addedRatioFigure(byRound map[string][][]float64, p float64, id, name string) Figure {
	ours, ha, plain := byRound[pathOurs], byRound[pathHAProxy], byRound[pathPlain]
	var xs, base, ratios []float64
	for i := range min(len(ours), len(ha), len(plain)) {
		x := percentile(ours[i], p) - percentile(plain[i], p)
		b := percentile(ha[i], p) - percentile(plain[i], p)
		xs, base = append(xs, x), append(base, b)
		if b > 0 {
			ratios = append(ratios, x/b)
		}
	}
	f := newFigure(id, name, "ms", median(xs), median(base), "", nil)
	f.BaselineName = fmt.Sprintf("added by haproxy's TLS in the same rounds; ratio: median of %d rounds' ratios (%d rounds, %d left out: haproxy added nothing)",
		len(ratios), len(xs), len(xs)-len(ratios))
	f.Ratio = 0
	if len(ratios) > 0 {
		f.Ratio = median(ratios)
	}
	f.judge(&goal{ratio: true, atMost: true, limit: 1})
	if len(ratios) == 0 {
		fail := false // no round to judge by
		f.Pass = &fail
	}
	return f
}

// workFigures adds what the terminators spent per request in the latency
// rounds (informative): what their latency is made of, apart from waiting.
func (r *tlsRun) workFigures(w latWork, id, rate, haName string) {
	name := "terminator per request at " + rate + " (agent of the cell, all its threads, vs haproxy)"
	r.rep.Figures = append(r.rep.Figures,
		newPairedFigure(id+"-cpu", "CPU time of the "+name, "µs", w.cpu[pathOurs], w.cpu[pathHAProxy], haName, nil),
		newPairedFigure(id+"-switches", "context switches of the "+name, "switches", w.switches[pathOurs], w.switches[pathHAProxy], haName, nil))
}

// latencyFigures adds the latency rounds' samples and figures: the latency
// added by 61443 against haproxy's, in both placements, and what the
// terminators spent per request meanwhile.
func (r *tlsRun) latencyFigures(lat map[string][]float64) {
	rep := r.rep
	haName := "haproxy " + r.haproxyVer + " (nbthread 1)"
	rate := fmt.Sprintf("%d requests/s", tlsLatencyRate)
	for _, k := range []string{pathOurs, pathPlain, pathHAProxy, pathRelay} {
		rep.Samples["tls-latency/"+k] = roundMS(lat[k])
	}
	r.addedLatency(lat, r.latRounds, "tls/added-latency", "latency added by TLS on 61443 at "+rate, haName)
	r.workFigures(r.work, "tls/latency-work", rate, haName)
	if len(r.lat1) > 0 {
		for _, k := range []string{pathOurs, pathPlain, pathHAProxy, pathRelay} {
			rep.Samples["tls-latency-one-cpu/"+k] = roundMS(r.lat1[k])
		}
		r.addedLatency(r.lat1, r.latRounds1, "tls/added-latency-one-cpu", "latency added by TLS on 61443 at "+rate+", all on one CPU", haName)
		r.workFigures(r.work1, "tls/latency-work-one-cpu", rate+", all on one CPU", haName)
	}
}

// figures turns the samples into the report's figures and notes.
func (r *tlsRun) figures(lat, hs, rps, cpuReq, gbps, cpuGB map[string][]float64) {
	rep := r.rep
	const ours, plain, ha, relay = pathOurs, pathPlain, pathHAProxy, pathRelay
	haName := "haproxy " + r.haproxyVer + " (nbthread 1)"
	r.latencyFigures(lat)
	rate := fmt.Sprintf("%d requests/s", tlsLatencyRate)
	for _, k := range []string{ours, plain, ha} {
		rep.Samples["tls-handshake/"+k] = roundMS(hs[k])
		rep.Samples["tls-rps/"+k] = rps[k]
		rep.Samples["tls-bulk/"+k] = gbps[k]
	}
	rep.Figures = append(rep.Figures,
		newFigure("tls/latency-p50", "GET / through 61443 at "+rate+", p50", "ms",
			percentile(lat[ours], 50), percentile(lat[plain], 50), "plaintext 8080", nil),
		newFigure("tls/latency-p99", "GET / through 61443 at "+rate+", p99", "ms",
			percentile(lat[ours], 99), percentile(lat[plain], 99), "plaintext 8080", nil),
		newFigure("tls/handshake-request-p50", "new connection: connect, handshake, GET / through 61443, p50", "ms",
			percentile(hs[ours], 50), percentile(hs[ha], 50), haName, nil),
		newFigure("tls/handshake-request-p99", "new connection: connect, handshake, GET / through 61443, p99", "ms",
			percentile(hs[ours], 99), percentile(hs[ha], 99), haName, nil),
		newFigure("tls/rps-vs-haproxy", fmt.Sprintf("GET / requests/s through 61443, %d keep-alive clients", tlsRPSConns), "requests/s",
			median(rps[ours]), median(rps[ha]), haName, &goal{ratio: true, limit: 1}),
		newFigure("tls/rps-vs-plaintext", fmt.Sprintf("GET / requests/s through 61443, %d keep-alive clients", tlsRPSConns), "requests/s",
			median(rps[ours]), median(rps[plain]), "plaintext 8080", nil),
		newFigure("tls/bulk-vs-haproxy", "bulk stream through one TLS connection on 61443", "Gbit/s",
			median(gbps[ours]), median(gbps[ha]), haName, &goal{ratio: true, limit: 1}),
		newFigure("tls/bulk-vs-plaintext", "bulk stream through one TLS connection on 61443", "Gbit/s",
			median(gbps[ours]), median(gbps[plain]), "plaintext 8080", nil),
		newFigure("tls/cpu-per-request", "terminator CPU per request (agent of the cell vs haproxy)", "µs",
			median(cpuReq[ours]), median(cpuReq[ha]), haName, nil),
		newFigure("tls/cpu-per-gb", "terminator CPU per GB of bulk stream (agent of the cell vs haproxy)", "ms",
			median(cpuGB[ours]), median(cpuGB[ha]), haName, nil),
		newFigure("tls/memory-per-instance", fmt.Sprintf("agent RSS per served instance (%d idle instances)", r.p.idle), "KiB",
			float64(r.rss[1]-r.rss[0])/float64(r.p.idle), envoyReservation,
			"Cloud Foundry's per-container Envoy reservation (documented, not measured)", &goal{atMost: true, limit: 64}),
	)

	pin := fmt.Sprintf("the load generator (this process, GOMAXPROCS=1) and the backend app pinned to CPU %d; the agent of cell2 (all its threads: the proxy and the rest of the agent, idle otherwise) and haproxy pinned to CPU %d, measured one at a time; so a request through a terminator (or the plaintext relay) crosses CPUs four times, one to 8080 none; the figures marked \"all on one CPU\" repeat the latency rounds with the terminators moved to CPU %d as well (no cross-CPU wakeup); for the requests/s rounds the app moves to CPU %d, with the terminators", r.gen, r.srv, r.gen, r.srv)
	if !r.pinned {
		pin = "one CPU only: generator, app and terminator share it"
	}
	var nego []string
	for _, k := range []string{ours, ha} {
		nego = append(nego, k+": "+r.negotiated[k])
	}
	rep.Notes = append(rep.Notes,
		fmt.Sprintf("tls: a local foundation of 2 cells (%s); frontend on cell1, backend (the sample app) and bulk (no app: the bench serves its 8080) on cell2; the load generator runs in the bench process with its sockets in frontend's network namespace, so every request crosses the overlay (VXLAN) between the cells", r.f.Prefix),
		"tls: four paths to the same app: plaintext to INSTANCE_IP:8080; TLS to 61443, which the agent of cell2 terminates (internal/proxy) and forwards to 8080 inside the instance's namespace; TLS to haproxy "+r.haproxyVer+" started in the instance's namespace (mode tcp, nbthread 1, no session tickets, the ciphers of the proxy) with the instance's own certificate and key, forwarding to INSTANCE_IP:8080; for the latency rounds only, the same haproxy relaying plaintext from port 8081 to INSTANCE_IP:8080 (the extra hop, without TLS: what any terminator outside the app costs on this machine); the client verifies the certificate chain against the platform CA, SNI = instance GUID, X25519 only (Go would prefer X25519MLKEM768 with the proxy, which haproxy's OpenSSL 3.0 lacks); negotiated: "+strings.Join(nego, "; "),
		"tls: "+pin,
		fmt.Sprintf("tls latency: GET / of the sample app, open loop at a fixed %d requests/s spread over %d keep-alive connections, %d round(s) of %s per path (order rotating), samples pooled; a request counts from when it was sent, or from when it was due if the previous answer on its connection came later (no coordinated omission); added latency = percentile of 61443 (or haproxy) − the same percentile of 8080, so the overlay and the app cancel out; the goal compares them round by round: in each round, 61443's added latency over haproxy's, p50 and p99, the median of the rounds' ratios at most 1 (rounds where haproxy added nothing left out, and counted); in the same runs, each terminator's work per request (informative, paired by round): the CPU time of all its threads as the scheduler counts it (/proc/PID/task/*/schedstat: the network stack's work done in its system calls included; for the agent, whatever else it did meanwhile too) and its context switches, over the run's requests",
			tlsLatencyRate, tlsLatencyConns, r.p.latRounds, r.p.latency),
		fmt.Sprintf("tls new connections: %d per path and round, one at a time: TCP connect, full handshake (ECDSA P-256 certificate, chain verified), GET /, close, timed from connect to the end of the answer", r.p.handshakes),
		fmt.Sprintf("tls requests/s: GET / of the sample app by %d closed-loop clients on keep-alive connections, %s measured after %s of warm-up, median of %d round(s); the app shares the terminators' CPU and the client has the other to itself, so that the terminator's CPU saturates first and the rate compares the terminators (the app costs every path the same); the terminator CPU per request is its process's user+system time over the requests",
			tlsRPSConns, r.p.rps, r.p.warm, r.p.rounds),
		fmt.Sprintf("tls bulk: the bench sends an endless stream on the bulk instance's 8080; one connection reads it for %s after %s of warm-up, median of %d round(s); the terminator CPU per GB is its process's user+system time over the bytes (softirq time not counted)",
			r.p.bulk, r.p.warm, r.p.rounds),
		fmt.Sprintf("tls memory: VmRSS of the agent of cell2 (least of %d reads 300 ms apart) serving backend and bulk (%d KiB), then with %d more containers attached through trellis-cni by libcni as any runtime does (namespaces made by the bench, no process in them: on a real host the runtime, not the agent, runs containers), each registered, certified and served on 61443 (the agent's trellis_proxy_instances gauge; %.1f s from the first ADD to all served) (%d KiB), difference over %d; measured before any traffic; it is everything the agent keeps per instance (proxy listener, certificate, records, ...) with the Go heap's slack (GOGC=100); the idle instances stay for the rest of the run, as on a real cell",
			r.p.settle, r.rss[0], r.p.idle, r.idleSeconds, r.rss[1], r.p.idle),
	)
}
