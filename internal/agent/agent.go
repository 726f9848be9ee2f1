// Package agent is trellis's per-cell agent: it joins the foundation with a
// one-time token (then uses mutual TLS with a key made on the cell), keeps
// the cell's overlay lease, programs the VTEP and the routes to every other
// cell from the controller's desired state (watched by long poll, with a
// periodic full resync), serves the CNI plugin's unix-socket API and keeps
// its container records on disk so that a restarted agent adopts running
// containers, and — in the local foundation — runs the app instances the
// controller places on the cell.
package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/trellis-c2c/trellis/internal/wireguard/engine"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/dns"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// Config configures an agent.
type Config struct {
	// ControllerURLs are the controllers' URLs (https://…), tried in turn
	// when one does not answer; needed to join (then remembered).
	ControllerURLs []string
	JoinToken      string // one-time, for the first start
	CACertFile     string // the controller's CA, for the first start
	StateDir       string
	// NetNS names (or is the path of) the network namespace that plays this
	// host: kernel objects go there. Empty means the agent's own namespace
	// (real hosts only).
	NetNS string
	// UnderlayInterface is the device VXLAN runs over; default: the one of
	// the namespace's default route.
	UnderlayInterface string
	Name              string // cell name; default: the netns name, else the host name
	Socket            string // the CNI socket; default STATE/agent.sock
	// RunInstances makes the agent run the instances the controller places
	// here (the local foundation's executor).
	RunInstances bool
	// InstanceNetNSPrefix prefixes the names of instance namespaces.
	InstanceNetNSPrefix string
	// CNIBinDir holds trellis-cni for the executor's libcni calls.
	CNIBinDir string
	// DNSUpstreams are the servers names outside the internal domains are
	// forwarded to; none (the default) answers them REFUSED.
	DNSUpstreams []string
	// InstanceKeyType is the key instances' identity certificates are made
	// with: "ecdsa-p256" (default) or "rsa-3072".
	InstanceKeyType string
	// LeaveOnExit makes the cell leave the foundation when ctx ends.
	LeaveOnExit bool
	// Resync is the period of a full re-apply without changes; default and
	// at most 30s (the controller's longest poll).
	Resync time.Duration
	Log    *slog.Logger
	// Ready, if set, is called once the agent serves its socket with the
	// overlay applied.
	Ready func()
}

// Agent is one running cell agent.
type Agent struct {
	cfg        Config
	log        *slog.Logger
	nsPath     string
	cell       dataplane.Cell
	id         cellIdentity
	controller *api.Client
	containers *containers
	instances  *instances
	enforcer   *enforcer
	tls        *identities
	socket     *socketServer
	metrics    *prometheus.Registry
	dns        *dns.Server
	keys       *cellKeys // WireGuard
	saved      *stateFile
	// dnsTables builds the DNS tables, under mu (apply sets them, and
	// startDNS the first).
	dnsTables dnsTables

	mu       sync.Mutex
	state    api.CellState
	applied  bool
	applyErr error
	// appliedOverlay is the overlay last applied without error (nil before and
	// after a failure): what a new state's overlay is compared with.
	appliedOverlay *dataplane.Overlay
}

// lastStateFile keeps the last desired state, so that a restarted agent can
// apply it while the controller is down.
const lastStateFile = "state.json"

// maxStateWait is the longest the controller holds a poll of the cell state.
const maxStateWait = 30 * time.Second

// Run runs the agent until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	a, err := newAgent(ctx, cfg)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

func newAgent(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("--state-dir is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Log, saved: newStateFile(cfg.StateDir)}
	a.nsPath = "/proc/self/ns/net"
	if cfg.NetNS != "" {
		a.nsPath = cfg.NetNS
		if filepath.Base(cfg.NetNS) == cfg.NetNS {
			a.nsPath = netns.Path(cfg.NetNS)
		}
		if _, err := os.Stat(a.nsPath); err != nil {
			return nil, fmt.Errorf("--netns %s: %w", cfg.NetNS, err)
		}
	}
	if a.cfg.Name == "" {
		if cfg.NetNS != "" {
			a.cfg.Name = filepath.Base(a.nsPath)
		} else if h, err := os.Hostname(); err == nil {
			a.cfg.Name = h
		}
	}
	u, err := underlay(a.nsPath, cfg.UnderlayInterface)
	if err != nil {
		return nil, err
	}
	dev, ip, mtu := u.Device, u.IP, u.MTU
	var rejoined bool
	a.id, a.controller, rejoined, err = loadOrJoin(ctx, a.cfg, ip.String())
	if err != nil {
		return nil, err
	}
	subnet := a.id.Cell.Subnet
	if !subnet.IsValid() {
		return nil, fmt.Errorf("cell %s has no subnet lease: delete the cell (trellis delete-cell %s) and join again", a.id.Cell.Name, a.id.Cell.Name)
	}
	if a.id.Cell.UnderlayIP != ip {
		return nil, fmt.Errorf("underlay address %s of %s differs from %s the cell joined with: delete the cell (trellis delete-cell %s) and join again", ip, dev, a.id.Cell.UnderlayIP, a.id.Cell.Name)
	}
	a.cell = dataplane.Cell{UnderlayDevice: dev, UnderlayIP: ip, Subnet: subnet, MTU: mtu}
	a.containers, err = loadContainers(filepath.Join(cfg.StateDir, "containers"), subnet, dataplane.OverlayMTU(mtu, false))
	if err != nil {
		return nil, err
	}
	for _, name := range a.containers.dropped {
		a.log.Warn("removed an unreadable container record (torn by a crash?)", "file", name)
	}
	if rejoined {
		a.registerAgain(ctx)
	}
	if a.keys, err = newCellKeys(a.log, cfg.StateDir, a.controller.RegisterWireGuardKey); err != nil {
		return nil, err
	}
	a.metrics = prometheus.NewRegistry()
	// The runtime's and the process's own figures (GC pauses, RSS, CPU), as
	// the controller exposes them: the agent shares one Go runtime with the
	// TLS proxy of every local instance.
	a.metrics.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	a.metrics.MustRegister(newControllerCollector(a.controller))
	report := func(ctx context.Context, evs api.FlowEvents) error { return a.controller.ReportFlows(ctx, evs) }
	a.enforcer = newEnforcer(dataplane.New(a.nsPath, a.log).UseWireGuard(engine.Engines()), a.log, a.containers, a.desired, report, a.metrics)
	a.tls, err = newIdentities(identitiesConfig{Log: a.log, StateDir: cfg.StateDir, KeyType: cfg.InstanceKeyType, Registerer: a.metrics,
		Containers: a.containers, State: a.current, Certify: a.controller.InstanceCertificate, Record: a.enforcer.record})
	if err != nil {
		return nil, err
	}
	a.socket = &socketServer{log: a.log, nsPath: a.nsPath, containers: a.containers, metrics: a.metrics, registry: a.controller,
		certs: a.tls, applyPolicy: a.applyPolicy, agentStatus: a.status}
	if cfg.RunInstances {
		a.instances, err = newInstances(instancesConfig{Log: a.log, StateDir: cfg.StateDir, NetNS: a.nsPath, UnderlayIP: ip,
			Cell: a.id.Cell.Name, Socket: a.socketPath(), CNIBinDir: cfg.CNIBinDir, NetNSPrefix: cfg.InstanceNetNSPrefix,
			State: a.current, Credentials: a.tls})
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// registerAgain tells the controller, after the cell joined again, about
// the containers attached before: deleting the old cell deregistered them.
// A container whose address is outside the new lease cannot be reached any
// more; it is only reported.
func (a *Agent) registerAgain(ctx context.Context) {
	for _, rec := range a.containers.list() {
		switch {
		case rec.Deleting || !rec.Committed:
		case !a.cell.Subnet.Contains(rec.IP):
			a.log.Warn("container keeps an address of the cell's old lease, which is not routed: run CNI DEL and ADD for it",
				"container", rec.ContainerID, "ip", rec.IP, "subnet", a.cell.Subnet)
		default:
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := a.controller.RegisterInstance(rctx, rec.Identity.InstanceGUID, api.InstanceRegistration{
				AppGUID: rec.Identity.AppGUID, Index: rec.Identity.Index, IP: rec.IP.String(), ContainerID: rec.ContainerID})
			cancel()
			if err != nil {
				a.log.Warn("register instance again", "container", rec.ContainerID, "instance", rec.Identity.InstanceGUID, "err", err)
			}
		}
	}
}

// underlay finds the cell's underlay device in ns: name, or the device of
// the default route.
func underlay(nsPath, name string) (dataplane.Underlay, error) {
	u, err := dataplane.FindUnderlay(nsPath, name)
	switch {
	case errors.Is(err, dataplane.ErrNoDefaultRoute):
		return u, fmt.Errorf("%w: give --underlay-interface", err)
	case err != nil && name != "":
		return u, fmt.Errorf("--underlay-interface: %w", err)
	}
	return u, err
}

func (a *Agent) run(parent context.Context) error {
	// Everything started here stops before run returns, so that a
	// restarted agent finds its sockets (DNS on :53, the unix socket)
	// free.
	ctx, cancel := context.WithCancel(parent)
	var bg sync.WaitGroup
	defer func() {
		cancel()
		bg.Wait()
		// No connection to the controller outlives the agent (a server
		// shutting down would wait for it).
		a.controller.CloseIdleConnections()
		a.saved.close()
		a.enforcer.dp.Close()
	}()
	a.applyFirst(ctx)
	sock := a.socketPath()
	ln, err := listenUnix(sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := &http.Server{Handler: a.socket.handler(), ReadHeaderTimeout: 10 * time.Second}
	bg.Go(func() { srv.Serve(ln) })
	defer srv.Close()
	if a.instances != nil {
		bg.Go(func() { a.instances.loop(ctx) })
	}
	bg.Go(func() { a.enforcer.watchFlows(ctx) })
	bg.Go(func() { a.tls.loop(ctx) })
	bg.Go(func() { a.keys.loop(ctx) })
	if err := a.startDNS(ctx, &bg); err != nil {
		return err
	}
	a.log.Info("agent running", "cell", a.id.Cell.Name, "guid", a.id.Cell.GUID, "netns", a.nsPath, "underlay", a.cell.UnderlayDevice,
		"underlay_ip", a.cell.UnderlayIP, "subnet", a.cell.Subnet, "socket", sock)

	// The controller answers a long poll after at most maxStateWait.
	wait := min(a.cfg.Resync, maxStateWait)
	ready := a.cfg.Ready
	after := int64(-1)
	backoff := time.Second
	for ctx.Err() == nil {
		pollCtx, cancel := context.WithTimeout(ctx, wait+15*time.Second)
		// What changed since the state in force: a delta when the
		// controller still has that state, else the whole state.
		var have *api.CellState
		if d := a.desired(); after >= 0 && d.Revision == after {
			have = &d
		}
		st, delta, err := a.controller.CellStateChange(pollCtx, have, wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if isForgotten(err) {
				return fmt.Errorf("the controller no longer knows cell %s: %w; to join again, start the agent with the same --state-dir and a new --join-token", a.id.Cell.Name, err)
			}
			// Jittered, so that the cells of a foundation whose controllers
			// are all down do not come back to them at once.
			d := backoff/2 + rand.N(backoff/2+1)
			a.log.Warn("watch desired state: keeping the last one", "err", err, "retry_in", d.Round(time.Millisecond))
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = time.Second
		// after is the revision applied: a state older than it (from a
		// controller that numbers the cell's states lower) is not, and the
		// next poll waits for a state newer than the one in force.
		after = a.apply(ctx, st, delta)
		a.socket.retryReleases(ctx)
		if ready != nil && a.ready() {
			ready()
			ready = nil
		}
	}
	if a.cfg.LeaveOnExit {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.controller.LeaveCell(lctx); err != nil {
			a.log.Warn("leave the foundation", "err", err)
		} else {
			a.log.Info("left the foundation", "cell", a.id.Cell.Name)
		}
		cancel()
	}
	a.log.Info("agent stopped", "cell", a.id.Cell.Name)
	return nil
}

// firstPollTimeout bounds the agent's first question to the controllers at
// start, before it falls back to its saved state.
const firstPollTimeout = 3 * time.Second

// applyFirst applies, at start, the controllers' state of the cell when one
// answers at once, and else the last state saved (so that the dataplane
// works while no controller answers). A saved state older than the
// controllers' (a state file restored, or saved before changes made while
// the agent was stopped) is so never applied, not even for a moment: it
// could open what a removed policy closed. The saved state is the one in
// force all the same, for the rule that never applies an older state.
func (a *Agent) applyFirst(ctx context.Context) {
	saved, ok := a.saved.load()
	if !ok {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, firstPollTimeout)
	st, err := a.controller.CellStateFrom(pctx, nil, 0)
	cancel()
	a.mu.Lock()
	a.state = saved
	a.mu.Unlock()
	if err != nil {
		a.log.Info("no controller answered: applying the saved desired state", "revision", saved.Revision, "err", err)
		st = saved
	}
	a.apply(ctx, st, nil)
}

// apply makes the kernel (and the executor) match st, and keeps st; it
// returns the revision of the state in force after. d, if not nil, is the
// delta that took the state in force to st: the change alone is saved. A
// state older than the one kept (a lower revision: after a failover, a
// controller whose feed lags, or numbers the cell's states from an
// earlier start) is never applied: the kept one is applied again instead,
// as a resync.
// The DNS table goes first: it needs nothing else, and a started or
// stopped instance then shows in answers without waiting for the overlay,
// the policy table and the saved state (DNS opens no access by itself).
func (a *Agent) apply(ctx context.Context, st api.CellState, d *api.CellDelta) int64 {
	a.mu.Lock()
	kept, keptApplied, keptOverlay := a.state, a.applied, a.appliedOverlay
	a.mu.Unlock()
	replaced := st.Revision < kept.Revision
	if replaced {
		a.log.Info("skip a desired state older than the one in force", "revision", st.Revision, "in_force", kept.Revision,
			"controller", a.controller.Controller())
		st, d = kept, nil
	}
	if a.dns != nil && !sameDNS(kept, st) {
		a.mu.Lock()
		t := a.dnsTables.table(st)
		a.mu.Unlock()
		a.dns.SetTable(t)
	}
	overlay, err := a.overlay(st)
	applyOverlay := overlay
	if err == nil && keptApplied && st.Revision != kept.Revision && reflect.DeepEqual(overlay, keptOverlay) {
		// The overlay (peers, their keys, encryption, the cell's own key)
		// is the one applied last: the kernel has it. It is read back and
		// repaired at a resync (the same revision again) and whenever it
		// changes.
		applyOverlay = nil
	}
	if err == nil {
		err = a.enforcer.apply(ctx, st, applyOverlay)
	}
	if err != nil {
		overlay = nil
	}
	if err != nil {
		a.log.Error("apply "+failedPart(err), "revision", st.Revision, "err", err)
	} else {
		a.syncMTU(st)
	}
	a.mu.Lock()
	a.state, a.applied, a.applyErr, a.appliedOverlay = st, err == nil, err, overlay
	a.mu.Unlock()
	if !replaced { // else the state in force is saved already
		if err := a.saved.save(st, d); err != nil {
			a.log.Warn("save desired state", "err", err)
		}
	}
	if a.instances != nil {
		a.instances.poke()
	}
	if a.tls != nil {
		a.tls.poke()
	}
	return st.Revision
}

// socketPath is where the agent serves the CNI plugin.
func (a *Agent) socketPath() string {
	if a.cfg.Socket != "" {
		return a.cfg.Socket
	}
	return filepath.Join(a.cfg.StateDir, "agent.sock")
}

// current is the desired state last received, and whether it applied.
func (a *Agent) current() (api.CellState, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state, a.applied
}

// overlay is the cell's place in the overlay that st describes.
func (a *Agent) overlay(st api.CellState) (*dataplane.Overlay, error) {
	if !st.Overlay.CIDR.IsValid() {
		return nil, &dataplane.SetError{Part: "overlay", Err: errors.New("the desired state names no overlay")}
	}
	c := a.cell
	c.Overlay, c.VNI, c.Port = st.Overlay.CIDR, st.Overlay.VNI, st.Overlay.Port
	var peers []dataplane.Peer
	for _, p := range st.Peers {
		if !p.UnderlayIP.IsValid() || !p.Subnet.IsValid() {
			a.log.Warn("skip a peer without addresses", "peer", p.Name)
			continue
		}
		peers = append(peers, dataplane.Peer{UnderlayIP: p.UnderlayIP, Subnet: p.Subnet})
	}
	ov := &dataplane.Overlay{Cell: c, Peers: peers}
	a.wireGuardOverlay(st, ov)
	return ov, nil
}

func (a *Agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.applied
}

func (a *Agent) desired() api.CellState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

func (a *Agent) status() api.AgentStatus {
	wg := a.wireGuardEngine()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := api.AgentStatus{Cell: a.id.Cell.Name, Subnet: a.cell.Subnet.String(), Revision: a.state.Revision, Ready: a.applied,
		Controller: a.controller.Controller(), Failovers: a.controller.Failovers(), States: a.controller.StateStats(), WireGuard: wg}
	switch {
	case a.applyErr != nil:
		st.Reason = "desired state not applied: " + a.applyErr.Error()
	case !a.applied:
		st.Reason = "waiting for the first desired state from the controller"
	}
	return st
}

// applyPolicy re-applies the cell's policy for the current desired state,
// after a container was attached or detached here: a new instance's packets
// are marked (and its address protected) before its ADD returns.
func (a *Agent) applyPolicy(ctx context.Context) {
	if !a.ready() {
		return // the first desired state will do it
	}
	if err := a.enforcer.attached(ctx, a.desired()); err != nil {
		a.log.Error("apply policy", "err", err)
	}
}

// controllerCollector exposes which controller the agent's client talks to
// and how often it moved to another, read from the client at each scrape.
type controllerCollector struct {
	c                              *api.Client
	inUse, failovers               *prometheus.Desc
	stateAnswers, stateAnswerBytes *prometheus.Desc
}

func newControllerCollector(c *api.Client) controllerCollector {
	return controllerCollector{c: c,
		inUse: prometheus.NewDesc("trellis_agent_controller",
			"The controller the agent talks to now (1, with its URL).", []string{"url"}, nil),
		failovers: prometheus.NewDesc("trellis_agent_controller_failovers_total",
			"Times the agent moved to another controller because the one in use did not answer.", nil, nil),
		stateAnswers: prometheus.NewDesc("trellis_agent_state_answers_total",
			"Answers to the agent's polls of its desired state, by kind: a whole state, a delta applied, or a delta that did not fit (refused, then a whole state).", []string{"kind"}, nil),
		stateAnswerBytes: prometheus.NewDesc("trellis_agent_state_answer_bytes_total",
			"Bytes read in answers to the agent's polls of its desired state (heartbeats included).", nil, nil),
	}
}

func (cc controllerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cc.inUse
	ch <- cc.failovers
	ch <- cc.stateAnswers
	ch <- cc.stateAnswerBytes
}

func (cc controllerCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(cc.inUse, prometheus.GaugeValue, 1, cc.c.Controller())
	ch <- prometheus.MustNewConstMetric(cc.failovers, prometheus.CounterValue, float64(cc.c.Failovers()))
	s := cc.c.StateStats()
	ch <- prometheus.MustNewConstMetric(cc.stateAnswers, prometheus.CounterValue, float64(s.Fulls), "state")
	ch <- prometheus.MustNewConstMetric(cc.stateAnswers, prometheus.CounterValue, float64(s.Deltas), "delta")
	ch <- prometheus.MustNewConstMetric(cc.stateAnswers, prometheus.CounterValue, float64(s.Refused), "refused")
	ch <- prometheus.MustNewConstMetric(cc.stateAnswerBytes, prometheus.CounterValue, float64(s.Bytes))
}
