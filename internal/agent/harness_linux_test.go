package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/uuid"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/underlay"
)

// The tests of this package run real parts in one process: a controller
// (SQLite in a temporary state dir, serving on loopback), agents on cell
// namespaces of an underlay built per test, and the CNI plugin (this test
// binary, see TestMain) run by libcni inside a cell namespace. Every
// namespace carries dataplanetest.Prefix and is deleted when the test ends.

// world is one test's topology: an underlay with cells, and the namespaces
// the test makes for containers.
type world struct {
	t      *testing.T
	prefix string // namespace names start with it
	u      *underlay.Underlay
	log    *slog.Logger
	logs   *testWriter // what log wrote
}

// newWorld builds an underlay with n cells whose namespaces are named
// Prefix+tag+"-…", removed (and checked to be gone) when the test ends.
func newWorld(t *testing.T, tag string, n int) *world {
	t.Helper()
	dataplanetest.RequireRoot(t)
	tw := newTestWriter(t)
	w := &world{t: t, prefix: dataplanetest.Prefix + tag, log: loggerTo(tw), logs: tw}
	u, err := underlay.Build(w.prefix, n)
	if err != nil {
		t.Fatalf("underlay.Build: %v", err)
	}
	w.u = u
	t.Cleanup(func() {
		if err := u.Destroy(); err != nil {
			t.Errorf("destroy underlay: %v", err)
		}
		if left := w.leftovers(); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	return w
}

func (w *world) leftovers() []string {
	var left []string
	for _, n := range dataplanetest.Leftovers() {
		if strings.HasPrefix(n, w.prefix+"-") {
			left = append(left, n)
		}
	}
	return left
}

// cell returns cell i (1-based) of the underlay.
func (w *world) cell(i int) underlay.Cell { return w.u.Cells[i-1] }

// cellPath is the path of cell i's namespace.
func (w *world) cellPath(i int) string { return netns.Path(w.cell(i).NetNS) }

// namespace creates the namespace PREFIX-suffix, deleted when the test ends.
func (w *world) namespace(suffix string) string {
	w.t.Helper()
	return dataplanetest.Namespace(w.t, strings.TrimPrefix(w.prefix, dataplanetest.Prefix)+"-"+suffix)
}

// loggerTo logs to tw.
func loggerTo(tw *testWriter) *slog.Logger {
	return slog.New(slog.NewTextHandler(tw, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newTestWriter writes to the test's log (shown when it fails or with -v),
// keeps the lines for tests that look, and drops whatever is written after
// the test's last cleanup, when goroutines of a component that was shut
// down may still be finishing.
func newTestWriter(t *testing.T) *testWriter {
	tw := &testWriter{t: t}
	t.Cleanup(tw.close)
	return tw
}

type testWriter struct {
	mu     sync.Mutex
	t      *testing.T
	closed bool
	lines  []string // what was logged, for tests that look
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		line := strings.TrimSuffix(string(p), "\n")
		w.lines = append(w.lines, line)
		w.t.Log(line)
	}
	return len(p), nil
}

// logged returns the lines logged so far that contain every one of subs.
func (w *testWriter) logged(subs ...string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, l := range w.lines {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(l, s) }) {
			out = append(out, l)
		}
	}
	return out
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// ctrl is a controller running in this process.
type ctrl struct {
	t      *testing.T
	cfg    controller.Config
	url    string
	cancel context.CancelFunc
	done   chan error
	admin  *api.Client
}

// startController runs controller.Run with cfg until the test ends (or
// stop). cfg.Listen defaults to 127.0.0.1:0.
func startController(t *testing.T, w *world, cfg controller.Config) *ctrl {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	cfg.Log = w.log.With("component", "controller")
	c := &ctrl{t: t, cfg: cfg}
	c.start()
	t.Cleanup(func() { c.stop() })
	cc, err := api.LoadClientConfig(filepath.Join(cfg.StateDir, controller.AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if c.admin, err = api.NewClient(cc); err != nil {
		t.Fatal(err)
	}
	// These tests are about joining, attaching and surviving faults, not
	// about policy (internal/launcher tests that): let every instance
	// reach every other.
	if err := c.admin.SetEnforcement(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *ctrl) start() {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	cfg := c.cfg
	cfg.Ready = func(url string) { ready <- url }
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- controller.Run(ctx, cfg) }()
	select {
	case c.url = <-ready:
	case err := <-c.done:
		c.done <- err
		c.t.Fatalf("controller.Run: %v", err)
	case <-time.After(30 * time.Second):
		c.t.Fatal("controller not ready after 30s")
	}
}

// stop cancels the controller and waits for Run to return; it reports how
// long that took.
func (c *ctrl) stop() time.Duration {
	if c.cancel == nil {
		return 0
	}
	start := time.Now()
	c.cancel()
	c.cancel = nil
	select {
	case err := <-c.done:
		// Shutdown ends the agents' long polls: it must be quick and clean.
		if err != nil {
			c.t.Errorf("controller.Run returned %v %v after its cancellation", err, time.Since(start))
		} else if d := time.Since(start); d > 5*time.Second {
			c.t.Errorf("controller.Run took %v to shut down", d)
		}
	case <-time.After(30 * time.Second):
		c.t.Error("controller.Run did not return within 30s of its cancellation")
	}
	return time.Since(start)
}

func (c *ctrl) caFile() string { return filepath.Join(c.cfg.StateDir, "ca.crt") }

func (c *ctrl) joinToken(t *testing.T) string {
	t.Helper()
	tok, err := c.admin.CreateJoinToken(context.Background(), 0)
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	return tok.Token
}

// agentCfg is the configuration of a first start of an agent on cell i of w
// joining c; Name is "cellI".
func (w *world) agentCfg(t *testing.T, c *ctrl, i int) agent.Config {
	dir := t.TempDir()
	return agent.Config{
		ControllerURLs:    []string{c.url},
		JoinToken:         c.joinToken(t),
		CACertFile:        c.caFile(),
		StateDir:          dir,
		NetNS:             w.cell(i).NetNS,
		UnderlayInterface: underlay.Device,
		Name:              w.cell(i).Name,
		Socket:            filepath.Join(dir, "agent.sock"),
	}
}

// running is an agent running in this process.
type running struct {
	t      *testing.T
	cfg    agent.Config
	cancel context.CancelFunc
	done   chan error
	readyc chan struct{}
	err    error // what Run returned, once done
}

// startAgent runs agent.Run with cfg until the test ends (or stop) and
// waits until it is ready.
func (w *world) startAgent(t *testing.T, cfg agent.Config) *running {
	t.Helper()
	r := w.goAgent(t, cfg)
	select {
	case <-r.ready():
	case err := <-r.done:
		r.done <- err
		t.Fatalf("agent.Run(%s): %v", cfg.Name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("agent %s not ready after 30s", cfg.Name)
	}
	return r
}

// goAgent starts agent.Run without waiting.
func (w *world) goAgent(t *testing.T, cfg agent.Config) *running {
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan struct{})
	cfg.Log = w.log.With("component", "agent", "cell", cfg.Name)
	cfg.Ready = func() { close(readyc) }
	r := &running{t: t, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	r.readyc = readyc
	go func() { r.done <- agent.Run(ctx, cfg) }()
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *running) ready() <-chan struct{} { return r.readyc }

// stop cancels the agent and waits for Run to return, and returns what it
// returned.
func (r *running) stop() error {
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
		select {
		case r.err = <-r.done:
		case <-time.After(30 * time.Second):
			r.t.Errorf("agent.Run(%s) did not return within 30s of its cancellation", r.cfg.Name)
		}
	}
	return r.err
}

// exits waits up to timeout for Run to return by itself, and reports
// whether it did; r.err is what it returned.
func (r *running) exits(timeout time.Duration) bool {
	select {
	case r.err = <-r.done:
		r.cancel()
		r.cancel = nil
		return true
	case <-time.After(timeout):
		return false
	}
}

// runAgentFails runs an agent that must fail before it is ready and returns
// its error.
func (w *world) runAgentFails(t *testing.T, cfg agent.Config) error {
	t.Helper()
	r := w.goAgent(t, cfg)
	select {
	case <-r.ready():
		t.Fatalf("agent.Run(%s) became ready, want an error", cfg.Name)
	case err := <-r.done:
		r.cancel()
		r.cancel = nil
		if err == nil {
			t.Fatalf("agent.Run(%s) = nil, want an error", cfg.Name)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("agent.Run(%s) neither failed nor became ready in 30s", cfg.Name)
	}
	return nil
}

// poll calls cond every few milliseconds until it returns true or timeout
// passes, and returns how long it took.
func poll(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for {
		ok, err := cond()
		if ok {
			return time.Since(start)
		}
		last = err
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v (last error: %v)", what, timeout, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// handle is a netlink handle in the namespace at path, closed when the test
// ends.
func handle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	return dataplanetest.Handle(t, path)
}

// linkNames lists the links of the namespace at path, sorted.
func linkNames(t *testing.T, path string) []string {
	t.Helper()
	return dataplanetest.Links(t, path)
}

// routeTo reports whether the namespace of h has a route to exactly dst.
func routeTo(h *netlink.Handle, dst netip.Prefix) (bool, error) {
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == dst.String() {
			return true, nil
		}
	}
	return false, nil
}

// getContainer asks the agent at sock for a container's record, and says
// with which HTTP status it answered.
func getContainer(sock, id string) (int, api.Allocation, error) {
	a, err := api.NewAgentClient(sock).Container(context.Background(), id)
	var he *api.HTTPError
	if errors.As(err, &he) {
		return he.Status, a, nil
	}
	if err != nil {
		return 0, a, err
	}
	return http.StatusOK, a, nil
}

func agentStatus(t *testing.T, sock string) api.AgentStatus {
	t.Helper()
	st, err := api.NewAgentClient(sock).Status(context.Background())
	if err != nil {
		t.Fatalf("GET /v1/status: %v", err)
	}
	return st
}

// plugin is trellis-cni (this test binary) installed for libcni.
type plugin struct {
	cni *libcni.CNIConfig
}

func installPlugin(t *testing.T) *plugin {
	t.Helper()
	bin := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(bin, cni.PluginType)); err != nil {
		t.Fatal(err)
	}
	return &plugin{cni: libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)}
}

// container is a namespace the test made, wired (or not) by the plugin.
type container struct {
	id   string
	ns   string // path
	cell int
	rt   *libcni.RuntimeConf
	ip   netip.Addr
}

// newContainer makes the namespace of a container on cell for instance
// guid of app.
func (w *world) newContainer(id string, cell int, app, guid string) *container {
	w.t.Helper()
	c := &container{id: w.prefix + "-" + id, ns: w.namespace(id), cell: cell}
	c.rt = &libcni.RuntimeConf{ContainerID: c.id, NetNS: c.ns, IfName: "eth0", Args: [][2]string{
		{"TRELLIS_APP_GUID", app}, {"TRELLIS_INSTANCE_GUID", instGUID(guid)}}}
	return c
}

// instGUID is the instance GUID the tests give the instance they call
// name: a UUID, as the controller accepts, derived from name.
func instGUID(name string) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte("trellis-test:"+name)).String()
}

// startTwo starts the agents of cells 1 and 2 under c and waits until each
// has programmed the other as its peer.
func (w *world) startTwo(t *testing.T, c *ctrl) (a1, a2 *running) {
	t.Helper()
	a1 = w.startAgent(t, w.agentCfg(t, c, 1))
	a2 = w.startAgent(t, w.agentCfg(t, c, 2))
	cells := cellsByName(t, c)
	waitProgrammed(t, w.cellPath(1), peerOf(t, cells["cell2"]))
	waitProgrammed(t, w.cellPath(2), peerOf(t, cells["cell1"]))
	return a1, a2
}

// addPair attaches container ctr-a (instance inst-a) through cell1's
// conflist l1 and ctr-b (inst-b) through cell2's l2, both of app, and
// fails t if either ADD fails.
func (w *world) addPair(t *testing.T, p *plugin, l1, l2 *libcni.NetworkConfigList, app string) (a, b *container) {
	t.Helper()
	a = w.newContainer("ctr-a", 1, app, "inst-a")
	b = w.newContainer("ctr-b", 2, app, "inst-b")
	if err := w.add(p, l1, a, a.rt); err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	if err := w.add(p, l2, b, b.rt); err != nil {
		t.Fatalf("ADD b: %v", err)
	}
	return a, b
}

// cniList is the conflist a runtime on the agent's cell uses.
func cniList(t *testing.T, r *running) *libcni.NetworkConfigList {
	t.Helper()
	l, err := libcni.ConfListFromBytes(cni.ConfList("trellis", r.cfg.Name, r.cfg.Socket))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// add runs CNI ADD for c from the cell's namespace, as a runtime on the
// cell would, and records the address.
func (w *world) add(p *plugin, list *libcni.NetworkConfigList, c *container, rt *libcni.RuntimeConf) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res *current.Result
	err := netns.Do(w.cellPath(c.cell), func() error {
		r, err := p.cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return err
	}
	if len(res.IPs) != 1 {
		return fmt.Errorf("ADD result has %d addresses, want 1", len(res.IPs))
	}
	ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if ones, bits := res.IPs[0].Address.Mask.Size(); ones != 32 || bits != 32 {
		return fmt.Errorf("ADD result address %v, want a /32", res.IPs[0].Address)
	}
	c.ip = ip
	return nil
}

// inCell runs fn on a thread in cell i's namespace, where a runtime on the
// cell runs the plugin.
func (w *world) inCell(i int, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return netns.Do(w.cellPath(i), func() error { return fn(ctx) })
}

func (w *world) del(p *plugin, list *libcni.NetworkConfigList, c *container) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return netns.Do(w.cellPath(c.cell), func() error { return p.cni.DelNetworkList(ctx, list, c.rt) })
}

// echoServer serves TCP echo on port in the namespace at ns until the test
// ends.
func echoServer(t *testing.T, ns string, port int) {
	t.Helper()
	var ln net.Listener
	err := netns.Do(ns, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
			}()
		}
	}()
}

// dial opens a TCP connection from inside the namespace at ns, closed when
// the test ends.
func dial(t *testing.T, ns string, to netip.AddrPort) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := netns.Do(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", to.String(), 3*time.Second)
		return err
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// echoConn serves TCP echo in b's namespace and returns a connection to it
// from a's that has carried msg there and back; it fails the test, saying
// what, when it cannot.
func echoConn(t *testing.T, a, b *container, what, msg string) net.Conn {
	t.Helper()
	echoServer(t, b.ns, echoPort)
	conn, err := dial(t, a.ns, netip.AddrPortFrom(b.ip, echoPort))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := roundTrip(conn, msg); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return conn
}

// roundTrip sends msg on c and reads the echo.
func roundTrip(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(buf, []byte(msg)) {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// talk opens a new connection from one container to another's echo server
// and exchanges a message.
func talk(t *testing.T, from, to *container, port int) error {
	t.Helper()
	c, err := dial(t, from.ns, netip.AddrPortFrom(to.ip, uint16(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, "hello from "+from.id)
}

func wantErrorSays(t *testing.T, what string, err error, says ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want one saying %q", what, says)
	}
	t.Logf("%s: %v", what, err)
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: error %q does not say %q", what, err, s)
		}
	}
}
