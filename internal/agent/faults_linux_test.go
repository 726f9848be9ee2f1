package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
	"github.com/trellis-c2c/trellis/internal/underlay"
)

// procCtrl is a controller in a process of its own (this test binary, see
// TestMain), so that a test can kill it with SIGKILL as a crash would.
type procCtrl struct {
	t    *testing.T
	cfg  testControllerConfig
	url  string
	cmd  *exec.Cmd
	done <-chan struct{}
}

// startProcCtrl starts a controller process serving cfg until the test
// ends (or kill/stop).
func startProcCtrl(t *testing.T, cfg testControllerConfig) *procCtrl {
	t.Helper()
	c := &procCtrl{t: t, cfg: cfg}
	c.start()
	t.Cleanup(c.stop)
	return c
}

func (c *procCtrl) start() {
	c.t.Helper()
	ready := filepath.Join(c.cfg.StateDir, readyFile)
	os.Remove(ready)
	js, _ := json.Marshal(c.cfg)
	exe, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	logf, err := os.OpenFile(c.logFile(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envTestController+"="+string(js))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed if this process dies first (see storetest.StartTied).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done, err := storetest.StartTied(cmd)
	if err != nil {
		c.t.Fatalf("start controller: %v", err)
	}
	c.cmd, c.done = cmd, done
	deadline := time.Now().Add(time.Minute)
	for {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			c.url = string(b)
			return
		}
		select {
		case <-done:
			c.cmd = nil
			c.t.Fatalf("controller exited at start:\n%s", c.log())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("controller not serving after a minute:\n%s", c.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *procCtrl) logFile() string { return filepath.Join(c.cfg.StateDir, "controller.log") }

func (c *procCtrl) log() string {
	b, _ := os.ReadFile(c.logFile())
	return string(b)
}

// kill kills the controller with SIGKILL and waits until it is gone.
func (c *procCtrl) kill() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	c.cmd = nil
}

// stop stops the controller as an operator would (SIGTERM).
func (c *procCtrl) stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.t.Errorf("controller did not stop within 30s of SIGTERM")
		c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
	}
	c.cmd = nil
}

// haWorld is a foundation of three controller processes on a private
// PostgreSQL server, two cells whose agents know every controller, and
// three instances, each serving echo on echoPort: a of app src on cell1,
// b of app dst on cell2, o of app other on cell1. No policy ever lets
// other reach dst, nor any pair but src -> dst connect on echoPort.
type haWorld struct {
	*world
	pg       *storetest.Postgres
	ctrls    []*procCtrl
	urls     []string
	admin    *api.Client
	adminCfg api.ClientConfig
	agents   []*running // agents[i] runs cell i+1
	policy   api.Policy // src -> dst on echoPort
	a, b, o  *container
	dbURL    string
	apps     map[string]api.App // src, dst, other
	// link is cell1's agent's way to the controllers, which CellCut cuts
	// (cell2's agent reaches them directly).
	link *ctrlLink
	d    *container // of app dst on cell1, made by CellCut
}

func newHAWorld(t *testing.T, tag string) *haWorld {
	t.Helper()
	h := &haWorld{world: newWorld(t, tag, 2)}
	h.pg = storetest.StartPostgres(t)
	db := h.pg.NewDatabase("trellis")
	h.dbURL = db
	first := t.TempDir()
	h.ctrls = append(h.ctrls, startProcCtrl(t, testControllerConfig{StateDir: first, Listen: freePort(t), DatabaseURL: db}))
	for range 2 {
		// The others share the first's CA (the cells' certificates are
		// signed by it) and its admin token (the database keeps one).
		dir := t.TempDir()
		for _, f := range []string{identity.CACertFile, identity.CAKeyFile} {
			b, err := os.ReadFile(filepath.Join(first, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		h.ctrls = append(h.ctrls, startProcCtrl(t, testControllerConfig{StateDir: dir, Listen: freePort(t), DatabaseURL: db,
			AdminConfig: filepath.Join(first, controller.AdminConfigFile)}))
	}
	for _, c := range h.ctrls {
		h.urls = append(h.urls, c.url)
	}
	cc, err := api.LoadClientConfig(filepath.Join(first, controller.AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	cc.APIURLs = h.urls
	h.adminCfg = cc
	if h.admin, err = api.NewClient(cc); err != nil {
		t.Fatal(err)
	}
	h.link = newCtrlLink(t, h.urls)
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		urls := h.urls
		if i == 1 {
			urls = h.link.urls
		}
		tok, err := h.admin.CreateJoinToken(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		h.agents = append(h.agents, h.startAgent(t, agent.Config{
			ControllerURLs: urls, JoinToken: tok.Token, CACertFile: filepath.Join(first, identity.CACertFile),
			StateDir: dir, NetNS: h.cell(i).NetNS, UnderlayInterface: underlay.Device, Name: h.cell(i).Name,
			Socket: filepath.Join(dir, "agent.sock"),
		}))
	}
	src, dst, other := createAppWith(t, h.admin, "src"), createAppWith(t, h.admin, "dst"), createAppWith(t, h.admin, "other")
	h.apps = map[string]api.App{"src": src, "dst": dst, "other": other}
	p := installPlugin(t)
	l1, l2 := cniList(t, h.agents[0]), cniList(t, h.agents[1])
	h.a = h.newContainer("a", 1, src.GUID, "a")
	h.b = h.newContainer("b", 2, dst.GUID, "b")
	h.o = h.newContainer("o", 1, other.GUID, "o")
	for _, x := range []struct {
		c *container
		l *libcni.NetworkConfigList
	}{{h.a, l1}, {h.b, l2}, {h.o, l1}} {
		if err := h.add(p, x.l, x.c, x.c.rt); err != nil {
			t.Fatalf("ADD %s: %v", x.c.id, err)
		}
	}
	// Every instance serves echo, so that a probe of any pair would
	// connect if a packet got through.
	for _, c := range []*container{h.a, h.b, h.o} {
		echoServer(t, c.ns, echoPort)
	}
	h.policy = api.Policy{Source: api.Source{ID: src.GUID},
		Destination: api.Destination{ID: dst.GUID, Protocol: "tcp", Ports: api.Ports{Start: echoPort, End: echoPort}}}
	return h
}

// setPolicy creates (on) or deletes the policy src -> dst and returns when
// a controller acknowledged it.
func (h *haWorld) setPolicy(t *testing.T, on bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if on {
		err = h.admin.CreatePolicies(ctx, []api.Policy{h.policy})
	} else {
		err = h.admin.DeletePolicies(ctx, []api.Policy{h.policy})
	}
	if err != nil {
		t.Fatalf("set policy %v: %v", on, err)
	}
}

// waitReach polls until from reaches to's echo port (want) or cannot, and
// returns how long that took.
func waitReach(t *testing.T, from, to *container, want bool) time.Duration {
	t.Helper()
	return poll(t, 30*time.Second, fmt.Sprintf("%s reaching %s = %v", from.id, to.id, want), func() (bool, error) {
		return reach(from, to, time.Second) == want, nil
	})
}

// reach reports whether a new TCP connection from one container to
// another's echo port carries a message there and back within timeout.
func reach(from, to *container, timeout time.Duration) bool {
	var c net.Conn
	err := netns.Do(from.ns, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to.ip, echoPort).String(), timeout)
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	return roundTrip(c, "probe") == nil
}

// prober probes pairs of containers several times a second until stopped:
// a pair marked denied that connects is a false allow; a pair marked
// allowed that does not is a failure, counted.
type prober struct {
	mu          sync.Mutex
	pairs       []*probePair
	falseAllows []string
	stop, done  chan struct{}
}

type probePair struct {
	from, to *container
	deny     bool // must not connect (else: should)
	probes   int
	failures int      // of an allowed pair
	failedAt []string // when those failed (HH:MM:SS.mmm)
}

func startProber(t *testing.T) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	t.Cleanup(p.halt)
	return p
}

func (p *prober) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// set marks from -> to as denied (deny) or allowed from now on.
func (p *prober) set(from, to *container, deny bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.pairs {
		if q.from == from && q.to == to {
			q.deny = deny
			return
		}
	}
	p.pairs = append(p.pairs, &probePair{from: from, to: to, deny: deny})
}

// unset stops probing from -> to (while a test changes its policy).
func (p *prober) unset(from, to *container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pairs = slices.DeleteFunc(p.pairs, func(q *probePair) bool { return q.from == from && q.to == to })
}

func (p *prober) run() {
	defer close(p.done)
	for {
		select {
		case <-p.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		p.mu.Lock()
		pairs := slices.Clone(p.pairs)
		p.mu.Unlock()
		// The pairs at once: a round lasts as long as its slowest probe,
		// not the sum of the denied pairs' timeouts.
		var wg sync.WaitGroup
		for _, q := range pairs {
			wg.Go(func() { p.probe(q) })
		}
		wg.Wait()
	}
}

// probe probes q once and counts the result.
func (p *prober) probe(q *probePair) {
	p.mu.Lock()
	deny := q.deny
	p.mu.Unlock()
	// A denied pair's SYN is dropped: a short timeout is enough to see it
	// is; an allowed one gets more on a loaded machine.
	timeout := 300 * time.Millisecond
	if !deny {
		timeout = 2 * time.Second
	}
	at := time.Now()
	ok := reach(q.from, q.to, timeout)
	p.mu.Lock()
	defer p.mu.Unlock()
	if q.deny == deny && slices.Contains(p.pairs, q) {
		q.probes++
		if ok && deny {
			p.falseAllows = append(p.falseAllows, fmt.Sprintf("%s -> %s at %s", q.from.id, q.to.id, at.Format("15:04:05.000")))
		}
		if !ok && !deny {
			q.failures++
			q.failedAt = append(q.failedAt, at.Format("15:04:05.000"))
		}
	}
}

// check fails t for every false allow so far and reports the probes.
func (p *prober) check(t *testing.T, phase string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.falseAllows) > 0 {
		t.Errorf("%s: false allows (a pair with no policy reached): %v", phase, p.falseAllows)
	}
	for _, q := range p.pairs {
		t.Logf("%s: %s -> %s (deny %v): %d probes, %d failures %v", phase, q.from.id, q.to.id, q.deny, q.probes, q.failures, q.failedAt)
	}
}

// failedAt is when probes of an allowed from -> to failed.
func (p *prober) failedAt(from, to *container) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.pairs {
		if q.from == from && q.to == to {
			return slices.Clone(q.failedAt)
		}
	}
	return nil
}

// failures is how many probes of an allowed from -> to failed.
func (p *prober) failures(from, to *container) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.pairs {
		if q.from == from && q.to == to {
			return q.failures
		}
	}
	return 0
}

// faultKills is how many controllers TestFaultsPostgres kills: few in CI,
// more for figures (TRELLIS_FAULT_KILLS=20).
func faultKills() int {
	if n, err := strconv.Atoi(os.Getenv("TRELLIS_FAULT_KILLS")); err == nil && n > 0 {
		return n
	}
	return 5
}

// TestFaultsPostgres runs a foundation of three controller processes on a
// private PostgreSQL server and two cells through faults, in turn, with a
// prober running throughout over every pair of the three apps' instances:
// no pair but a -> b (src -> dst) may connect at any moment (o, of app
// other, never reaches b, nor a o, nor b a...), and a (app src) must not
// reach b while the policy src -> dst is known removed.
//
//   - ControllerKill: kill -9 of the controller the destination cell's
//     agent uses, a policy change written right after (through the CLI's
//     client, which fails over too); the agent moves to another controller
//     and applies the change; the killed one is started again. Figures:
//     kill to the agent watching another controller, and to its applying
//     the change, p50 and max over the kills.
//   - DatabaseStop: PostgreSQL stopped for 10 s (as the issue says): enforcement unchanged
//     (a keeps reaching b, o never does), writes refused with 503, every
//     controller serving again once the database is back.
//   - StaleAgentState: the destination's agent restarted from a state file
//     saved before the policy was removed: the old state is never applied,
//     not even before the first poll.
//   - AllControllersDown: every controller killed for 3 s: the cells keep
//     enforcing their last state, and converge once they return.
//   - CellCut: cell1 cut off (underlay link and controllers) for
//     TRELLIS_FAULT_CUT seconds (10): its local pair keeps working, and
//     once back it applies what changed meanwhile; see cellCut.
//   - ControllerUpgrade: a controller replaced by a newer build with a
//     schema migration: no agent notices beyond a failover; see
//     controllerUpgrade. Last: the older build cannot start again on the
//     newer schema.
func TestFaultsPostgres(t *testing.T) {
	h := newHAWorld(t, "ha")
	pr := startProber(t)
	// The matrix of the three apps' instances: src -> dst (a -> b) is the
	// only pair a policy may allow, which the subtests add and remove;
	// every other pair, on one cell or across, never has one.
	for _, q := range [][2]*container{{h.o, h.b}, {h.a, h.o}, {h.o, h.a}, {h.b, h.a}, {h.b, h.o}} {
		pr.set(q[0], q[1], true)
	}
	h.setPolicy(t, true)
	waitReach(t, h.a, h.b, true)

	t.Run("ControllerKill", func(t *testing.T) {
		t.Cleanup(func() {
			for _, c := range h.ctrls {
				if c.cmd == nil {
					c.start() // killed, and the subtest failed before starting it again
				}
			}
		})
		var failover, applied, enforced []time.Duration
		on := true
		for k := range faultKills() {
			st := agentStatus(t, h.agents[1].cfg.Socket)
			victim := slices.Index(h.urls, st.Controller)
			if victim < 0 {
				t.Fatalf("cell2's agent uses %q, not one of %v", st.Controller, h.urls)
			}
			on = !on
			if on {
				pr.unset(h.a, h.b) // may connect from the moment it is written
			}
			// Watch the agent's controller from the kill on.
			moved := make(chan time.Time, 1)
			go func() {
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) {
					s, err := api.NewAgentClient(h.agents[1].cfg.Socket).Status(context.Background())
					if err == nil && s.Controller != h.urls[victim] {
						moved <- time.Now()
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
				close(moved)
			}()
			t0 := time.Now()
			h.ctrls[victim].kill()
			h.setPolicy(t, on)
			ack := time.Since(t0)
			at, ok := <-moved
			if !ok {
				t.Fatalf("cell2's agent still on %s 30s after its kill", h.urls[victim])
			}
			f := at.Sub(t0)
			poll(t, 30*time.Second, "cell2's agent applying the change", func() (bool, error) {
				s, err := api.NewAgentClient(h.agents[1].cfg.Socket).Status(context.Background())
				return err == nil && s.Revision > st.Revision && s.Controller != h.urls[victim], err
			})
			a := time.Since(t0)
			waitReach(t, h.a, h.b, on)
			e := time.Since(t0)
			if !on {
				pr.set(h.a, h.b, true) // removed and enforced: never again until re-added
			}
			failover, applied, enforced = append(failover, f), append(applied, a), append(enforced, e)
			t.Logf("kill %d of %s: write acknowledged %v after, agent on another controller after %v, change applied %v, enforced (policy %v) %v",
				k+1, h.urls[victim], ack.Round(time.Millisecond), f.Round(time.Millisecond), a.Round(time.Millisecond), on, e.Round(time.Millisecond))
			h.ctrls[victim].start()
		}
		t.Logf("over %d kills, from the kill: agent watching another controller p50 %v max %v; change applied p50 %v max %v; enforced p50 %v max %v",
			len(failover), pct(failover, 50), pct(failover, 100), pct(applied, 50), pct(applied, 100), pct(enforced, 50), pct(enforced, 100))
		pr.check(t, "ControllerKill")
	})

	t.Run("DatabaseStop", func(t *testing.T) {
		h.setPolicy(t, true)
		pr.unset(h.a, h.b)
		waitReach(t, h.a, h.b, true)
		pr.set(h.a, h.b, false)
		h.pg.Stop()
		stopped := time.Now()
		code, body, err := h.admin.Raw(context.Background(), "POST", "/networking/v1/external/policies/delete",
			strings.NewReader(fmt.Sprintf(`{"policies":[{"source":{"id":%q},"destination":{"id":%q,"protocol":"tcp","ports":{"start":%d,"end":%d}}}]}`,
				h.policy.Source.ID, h.policy.Destination.ID, echoPort, echoPort)))
		if err != nil || code != 503 || !strings.Contains(string(body), "database unavailable") {
			t.Errorf("delete policy while the database is down = %d %s (%v), want 503 database unavailable", code, body, err)
		}
		time.Sleep(time.Until(stopped.Add(10 * time.Second)))
		for i, r := range h.agents {
			if s := agentStatus(t, r.cfg.Socket); !s.Ready {
				t.Errorf("cell%d's agent not ready with the database down: %s", i+1, s.Reason)
			}
		}
		if n := pr.failures(h.a, h.b); n > 0 {
			t.Errorf("a -> b (allowed) failed %d probes while the database was down, want 0: enforcement changed", n)
		}
		h.pg.Start()
		back := time.Now()
		for _, c := range h.ctrls {
			cl, err := api.NewClient(api.ClientConfig{APIURL: c.url, CACert: h.adminCfg.CACert, Token: h.adminCfg.Token})
			if err != nil {
				t.Fatal(err)
			}
			poll(t, time.Minute, c.url+" serving again", func() (bool, error) {
				code, _, err := cl.Raw(context.Background(), "GET", "/health", nil)
				return err == nil && code == 200, nil
			})
		}
		t.Logf("all controllers serving again %v after PostgreSQL accepted connections (it was down %v)", time.Since(back).Round(time.Millisecond), back.Sub(stopped).Round(time.Millisecond))
		pr.check(t, "DatabaseStop")
	})

	t.Run("StaleAgentState", func(t *testing.T) {
		// The saved state with the policy in force (the snapshot and the
		// journal of changes after it), kept for later: a state directory
		// restored from an old backup.
		r := h.agents[1]
		file := filepath.Join(r.cfg.StateDir, "state.json")
		journal := filepath.Join(r.cfg.StateDir, "state.journal")
		stale := mustRead(t, file)
		staleJournal, journalErr := os.ReadFile(journal)
		if journalErr != nil && !os.IsNotExist(journalErr) {
			t.Fatal(journalErr)
		}
		pr.unset(h.a, h.b)
		h.setPolicy(t, false)
		waitReach(t, h.a, h.b, false)
		pr.set(h.a, h.b, true)
		current := agentStatus(t, r.cfg.Socket).Revision
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(stale), 0o600); err != nil {
			t.Fatal(err)
		}
		restore := func() error { return os.Remove(journal) }
		if journalErr == nil {
			restore = func() error { return os.WriteFile(journal, staleJournal, 0o600) }
		}
		if err := restore(); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		again := r.cfg
		again.JoinToken, again.CACertFile, again.ControllerURLs = "", "", nil
		// Runs until the whole test ends, as the first did.
		h.agents[1] = h.startAgent(h.world.t, again)
		if s := agentStatus(t, again.Socket); s.Revision < current {
			t.Errorf("restarted agent's revision %d, want at least %d (the one in force before)", s.Revision, current)
		}
		if got := h.logs.logged("applying the saved desired state", "cell=cell2"); len(got) > 0 {
			t.Errorf("the restarted agent applied its stale state file: %v", got)
		}
		waitReach(t, h.a, h.b, false)
		pr.check(t, "StaleAgentState")
	})

	t.Run("AllControllersDown", func(t *testing.T) {
		h.setPolicy(t, true)
		pr.unset(h.a, h.b)
		waitReach(t, h.a, h.b, true)
		pr.set(h.a, h.b, false)
		before := pr.failures(h.a, h.b)
		for _, c := range h.ctrls {
			c.kill()
		}
		time.Sleep(3 * time.Second)
		if n := pr.failures(h.a, h.b) - before; n > 0 {
			t.Errorf("a -> b (allowed) failed %d probes with no controller, want 0: the cells dropped their state", n)
		}
		for i, r := range h.agents {
			if s := agentStatus(t, r.cfg.Socket); !s.Ready {
				t.Errorf("cell%d's agent not ready with no controller: %s", i+1, s.Reason)
			}
		}
		back := time.Now()
		for _, c := range h.ctrls {
			c.start()
		}
		pr.unset(h.a, h.b)
		h.setPolicy(t, false)
		d := waitReach(t, h.a, h.b, false)
		t.Logf("controllers back: a policy removal written and enforced %v after they were started again (%v after the write)", time.Since(back).Round(time.Millisecond), d.Round(time.Millisecond))
		pr.set(h.a, h.b, true)
		time.Sleep(500 * time.Millisecond)
		pr.check(t, "AllControllersDown")
	})

	t.Run("CellCut", func(t *testing.T) { h.cellCut(t, pr) })
	t.Run("ControllerUpgrade", func(t *testing.T) { h.controllerUpgrade(t, pr) })
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pct is the p-th percentile of ds (nearest rank; 100 is the maximum).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(i, 0)].Round(time.Millisecond)
}
