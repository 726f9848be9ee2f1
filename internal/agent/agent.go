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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/dns"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// Config configures an agent.
type Config struct {
	ControllerURL string // https://… ; needed to join (then remembered)
	JoinToken     string // one-time, for the first start
	CACertFile    string // the controller's CA, for the first start
	StateDir      string
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
	controller *controllerClient
	containers *containers
	instances  *instances
	enforcer   *enforcer
	tls        *identities
	metrics    *prometheus.Registry
	dns        *dns.Server

	mu       sync.Mutex
	state    api.CellState
	applied  bool
	applyErr error
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
	a := &Agent{cfg: cfg, log: cfg.Log}
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
	dev, ip, mtu, err := underlay(a.nsPath, cfg.UnderlayInterface)
	if err != nil {
		return nil, err
	}
	var rejoined bool
	a.id, a.controller, rejoined, err = loadOrJoin(ctx, a.cfg, ip.String())
	if err != nil {
		return nil, err
	}
	subnet, err := netip.ParsePrefix(a.id.Cell.Subnet)
	if err != nil {
		return nil, fmt.Errorf("cell lease %q: %w", a.id.Cell.Subnet, err)
	}
	if a.id.Cell.UnderlayIP != ip.String() {
		return nil, fmt.Errorf("underlay address %s of %s differs from %s the cell joined with: delete the cell (trellis delete-cell %s) and join again", ip, dev, a.id.Cell.UnderlayIP, a.id.Cell.Name)
	}
	a.cell = dataplane.Cell{UnderlayDevice: dev, UnderlayIP: ip, Subnet: subnet, MTU: mtu}
	a.containers, err = loadContainers(filepath.Join(cfg.StateDir, "containers"), subnet, mtu-dataplane.VXLANOverhead)
	if err != nil {
		return nil, err
	}
	for _, name := range a.containers.dropped {
		a.log.Warn("removed an unreadable container record (torn by a crash?)", "file", name)
	}
	if rejoined {
		a.registerAgain(ctx)
	}
	a.metrics = prometheus.NewRegistry()
	// The runtime's and the process's own figures (GC pauses, RSS, CPU), as
	// the controller exposes them: the agent shares one Go runtime with the
	// TLS proxy of every local instance.
	a.metrics.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	report := func(ctx context.Context, evs api.FlowEvents) error {
		return a.controller.do(ctx, "POST", "/trellis/v1/cell/flows", evs, nil)
	}
	a.enforcer = newEnforcer(dataplane.New(a.nsPath, a.log), a.log, a.containers, a.desired, report, a.metrics)
	if a.tls, err = newIdentities(a, a.metrics); err != nil {
		return nil, err
	}
	if cfg.RunInstances {
		a.instances, err = newInstances(a)
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
			err := a.controller.register(rctx, rec.Identity.InstanceGUID, api.InstanceRegistration{
				AppGUID: rec.Identity.AppGUID, Index: rec.Identity.Index, IP: rec.IP.String(), ContainerID: rec.ContainerID})
			cancel()
			if err != nil {
				a.log.Warn("register instance again", "container", rec.ContainerID, "instance", rec.Identity.InstanceGUID, "err", err)
			}
		}
	}
}

// underlay finds the underlay device, its IPv4 address and MTU in ns.
func underlay(nsPath, name string) (string, netip.Addr, int, error) {
	h, err := netns.Handle(nsPath)
	if err != nil {
		return "", netip.Addr{}, 0, err
	}
	defer h.Close()
	var link netlink.Link
	if name != "" {
		link, err = h.LinkByName(name)
		if err != nil {
			return "", netip.Addr{}, 0, fmt.Errorf("--underlay-interface %s: %w", name, err)
		}
	} else {
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return "", netip.Addr{}, 0, err
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				link, err = h.LinkByIndex(r.LinkIndex)
				if err != nil {
					return "", netip.Addr{}, 0, err
				}
				break
			}
		}
		if link == nil {
			return "", netip.Addr{}, 0, errors.New("no default route to find the underlay device by: give --underlay-interface")
		}
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return "", netip.Addr{}, 0, fmt.Errorf("underlay device %s has no IPv4 address", link.Attrs().Name)
	}
	ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	return link.Attrs().Name, ip, link.Attrs().MTU, nil
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
		a.controller.http.CloseIdleConnections()
	}()
	// The last known state first: the dataplane keeps working while the
	// controller is down.
	if b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, lastStateFile)); err == nil {
		var st api.CellState
		if json.Unmarshal(b, &st) == nil {
			a.apply(ctx, st)
		}
	}
	sock := a.cfg.Socket
	if sock == "" {
		sock = filepath.Join(a.cfg.StateDir, "agent.sock")
	}
	ln, err := listenUnix(sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := &http.Server{Handler: (&socketServer{a: a}).handler(), ReadHeaderTimeout: 10 * time.Second}
	bg.Go(func() { srv.Serve(ln) })
	defer srv.Close()
	if a.instances != nil {
		bg.Go(func() { a.instances.loop(ctx) })
	}
	bg.Go(func() { a.enforcer.watchFlows(ctx) })
	bg.Go(func() { a.tls.loop(ctx) })
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
		st, err := a.controller.state(pollCtx, after, wait)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if isForgotten(err) {
				return fmt.Errorf("the controller no longer knows cell %s: %w; to join again, start the agent with the same --state-dir and a new --join-token", a.id.Cell.Name, err)
			}
			a.log.Warn("watch desired state: keeping the last one", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = time.Second
		a.apply(ctx, st)
		a.retryReleases(ctx)
		after = st.Revision
		if ready != nil && a.ready() {
			ready()
			ready = nil
		}
	}
	if a.cfg.LeaveOnExit {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.controller.leave(lctx); err != nil {
			a.log.Warn("leave the foundation", "err", err)
		} else {
			a.log.Info("left the foundation", "cell", a.id.Cell.Name)
		}
		cancel()
	}
	a.log.Info("agent stopped", "cell", a.id.Cell.Name)
	return nil
}

// apply makes the kernel (and the executor) match st, and keeps st.
// The DNS table goes first: it needs nothing else, and a started or
// stopped instance then shows in answers without waiting for the overlay,
// the policy table and the saved state (DNS opens no access by itself).
func (a *Agent) apply(ctx context.Context, st api.CellState) {
	if a.dns != nil {
		a.dns.SetTable(dnsTable(st))
	}
	overlay, err := a.overlay(st)
	if err == nil {
		err = a.enforcer.apply(ctx, st, overlay)
	}
	if err != nil {
		a.log.Error("apply "+failedPart(err), "revision", st.Revision, "err", err)
	}
	a.mu.Lock()
	a.state, a.applied, a.applyErr = st, err == nil, err
	a.mu.Unlock()
	if err := saveJSON(filepath.Join(a.cfg.StateDir, lastStateFile), st); err != nil {
		a.log.Warn("save desired state", "err", err)
	}
	if a.instances != nil {
		a.instances.poke()
	}
	if a.tls != nil {
		a.tls.poke()
	}
}

// overlay is the cell's place in the overlay that st describes.
func (a *Agent) overlay(st api.CellState) (*dataplane.Overlay, error) {
	overlay, err := netip.ParsePrefix(st.Overlay.CIDR)
	if err != nil {
		return nil, &dataplane.SetError{Part: "overlay", Err: fmt.Errorf("overlay %q: %w", st.Overlay.CIDR, err)}
	}
	c := a.cell
	c.Overlay, c.VNI, c.Port = overlay, st.Overlay.VNI, st.Overlay.Port
	var peers []dataplane.Peer
	for _, p := range st.Peers {
		ip, err1 := netip.ParseAddr(p.UnderlayIP)
		sub, err2 := netip.ParsePrefix(p.Subnet)
		if err1 != nil || err2 != nil {
			a.log.Warn("skip malformed peer", "peer", p.Name)
			continue
		}
		peers = append(peers, dataplane.Peer{UnderlayIP: ip, Subnet: sub})
	}
	return &dataplane.Overlay{Cell: c, Peers: peers}, nil
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
	a.mu.Lock()
	defer a.mu.Unlock()
	st := api.AgentStatus{Cell: a.id.Cell.Name, Subnet: a.cell.Subnet.String(), Revision: a.state.Revision, Ready: a.applied}
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
	if err := a.enforcer.apply(ctx, a.desired(), nil); err != nil {
		a.log.Error("apply policy", "err", err)
	}
}
