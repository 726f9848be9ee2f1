package agent_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// ctrlLink is a cell's way to the controllers, which a test can cut: a TCP
// relay on loopback per controller, in front of it. The agents of these
// tests run in the test process, in the root namespace, and reach the
// controllers over loopback, so downing a cell's underlay link alone would
// not cut its control plane; the relay does. While cut it relays nothing,
// as a link that drops every packet: connections open at the cut and those
// accepted during it are held silent (the agent sees timeouts, not
// refusals), and are closed when the link returns, as the peer's reset
// would close them then — or, with stall, stay silent until the agent
// gives up on them, the worst case of a connection whose peer never
// answers again.
type ctrlLink struct {
	urls  []string // the relays' URLs, in the order of the controllers'
	stall bool

	mu     sync.Mutex
	cut    bool
	held   []net.Conn
	relays map[net.Conn]net.Conn // downstream -> upstream
	lns    []net.Listener
	wg     sync.WaitGroup
}

// newCtrlLink relays to the controllers at urls until the test ends.
func newCtrlLink(t *testing.T, urls []string) *ctrlLink {
	t.Helper()
	l := &ctrlLink{relays: map[net.Conn]net.Conn{}}
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l.lns = append(l.lns, ln)
		l.urls = append(l.urls, pu.Scheme+"://"+ln.Addr().String())
		l.wg.Go(func() { l.serve(ln, pu.Host) })
	}
	t.Cleanup(l.close)
	return l
}

func (l *ctrlLink) serve(ln net.Listener, to string) {
	for {
		down, err := ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		cut := l.cut
		if cut {
			l.held = append(l.held, down)
		}
		l.mu.Unlock()
		if cut {
			continue
		}
		up, err := net.DialTimeout("tcp", to, 5*time.Second)
		if err != nil {
			down.Close() // the controller is down: as it would answer
			continue
		}
		l.mu.Lock()
		if l.cut {
			l.held = append(l.held, down)
			up.Close()
			l.mu.Unlock()
			continue
		}
		l.relays[down] = up
		l.mu.Unlock()
		l.wg.Go(func() { l.relay(down, up) })
	}
}

// relay copies both ways until either side ends; the downstream side is
// closed then unless the link was cut meanwhile (then it is held).
func (l *ctrlLink) relay(down, up net.Conn) {
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, down); done <- struct{}{} }()
	go func() { io.Copy(down, up); done <- struct{}{} }()
	<-done
	up.Close()
	l.mu.Lock()
	_, mine := l.relays[down]
	delete(l.relays, down)
	l.mu.Unlock()
	if mine {
		down.Close()
	}
	<-done
}

// setCut cuts the link (on) or restores it.
func (l *ctrlLink) setCut(on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = on
	if on {
		for down, up := range l.relays {
			delete(l.relays, down)
			l.held = append(l.held, down)
			up.Close()
		}
		return
	}
	if l.stall {
		return // closed by close
	}
	for _, c := range l.held {
		c.Close()
	}
	l.held = nil
}

func (l *ctrlLink) close() {
	for _, ln := range l.lns {
		ln.Close()
	}
	l.mu.Lock()
	l.cut = false
	for down, up := range l.relays {
		down.Close()
		up.Close()
	}
	for _, c := range l.held {
		c.Close()
	}
	l.held = nil
	l.mu.Unlock()
	l.wg.Wait()
}

// setPort sets cell i's port on the underlay's bridge up or down: the
// cell's underlay link loses its carrier, as when its cable is pulled.
func (h *haWorld) setPort(t *testing.T, i int, up bool) {
	t.Helper()
	uh, err := netns.Handle(netns.Path(h.u.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer uh.Close()
	port, err := uh.LinkByName(h.cell(i).Port)
	if err != nil {
		t.Fatal(err)
	}
	if up {
		err = uh.LinkSetUp(port)
	} else {
		err = uh.LinkSetDown(port)
	}
	if err != nil {
		t.Fatalf("set %s up=%v: %v", h.cell(i).Port, up, err)
	}
}

// lookupA asks the DNS server of the agent on cell i for name's addresses,
// sorted.
func (h *haWorld) lookupA(i int, name string) ([]netip.Addr, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	var r *mdns.Msg
	err := netns.Do(h.cellPath(i), func() (err error) {
		c := &mdns.Client{Timeout: time.Second}
		r, _, err = c.Exchange(m, net.JoinHostPort(agent.DNSAddr, "53"))
		return err
	})
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A.To4())
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// reachPort is reach on another port of to.
func reachPort(from, to *container, port int, timeout time.Duration) bool {
	var c net.Conn
	err := netns.Do(from.ns, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to.ip, uint16(port)).String(), timeout)
		return err
	})
	if err != nil {
		return false
	}
	defer c.Close()
	return roundTrip(c, "probe") == nil
}

// faultCut is how long CellCut keeps the cell cut off: 10 s by default
// (the 30 s with TRELLIS_FAULT_CUT=30). The connections to the
// controllers open during the cut stay silent after it (see ctrlLink), the
// worst case; with TRELLIS_FAULT_CUT_STALL=0 they are closed when the link
// returns, as a peer's reset would.
func faultCut() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("TRELLIS_FAULT_CUT")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 10 * time.Second
}

// cellCut cuts cell1 off for faultCut: both its underlay link (its port on
// the underlay's bridge down: no packet to or from another cell) and its
// way to every controller (h.link). Meanwhile an allowed pair local to
// cell1 (a -> d) must keep working and no denied pair connect (o -> d,
// o -> b), while the controllers acknowledge a policy other -> dst on
// echoPort+1 and instance e (dst, on cell1) is stopped. When the link
// returns, cell1 must apply the policy (o reaches d on echoPort+1), e must
// vanish from cell2's DNS and a reach b again; the times from the return
// are logged.
func (h *haWorld) cellCut(t *testing.T, pr *prober) {
	ctx := context.Background()
	dst, other := h.apps["dst"], h.apps["other"]
	h.setPolicy(t, true)
	pr.unset(h.a, h.b)
	waitReach(t, h.a, h.b, true)
	pr.set(h.a, h.b, false)

	// d and e: instances of dst on cell1, found in DNS as dst.apps.internal.
	p := installPlugin(h.world.t)
	l1 := cniList(t, h.agents[0])
	d, e := h.newContainer("d", 1, dst.GUID, "d"), h.newContainer("e", 1, dst.GUID, "e")
	for _, c := range []*container{d, e} {
		if err := h.add(p, l1, c, c.rt); err != nil {
			t.Fatalf("ADD %s: %v", c.id, err)
		}
	}
	// d serves until the whole test ends: ControllerUpgrade probes it too.
	h.d = d
	echoServer(h.world.t, d.ns, echoPort)
	echoServer(h.world.t, d.ns, echoPort+1)
	doms, err := h.admin.Domains(ctx, api.DomainFilter{Names: []string{"apps.internal"}})
	if err != nil || len(doms) != 1 {
		t.Fatalf("domain apps.internal: %v %v", doms, err)
	}
	rt, err := h.admin.CreateRoute(ctx, dst.Relationships.Space.Data.GUID, doms[0].GUID, "dst")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.AddRouteDestinations(ctx, rt.GUID, dst.GUID); err != nil {
		t.Fatal(err)
	}
	const name = "dst.apps.internal"
	all := []netip.Addr{h.b.ip, d.ip, e.ip}
	slices.SortFunc(all, netip.Addr.Compare)
	for i := 1; i <= 2; i++ {
		poll(t, time.Minute, fmt.Sprintf("cell%d's DNS answering %s with %v", i, name, all), func() (bool, error) {
			got, err := h.lookupA(i, name)
			return slices.Equal(got, all), err
		})
	}
	waitReach(t, h.a, d, true)
	pr.set(h.a, d, false)
	pr.set(h.o, d, true)
	late := api.Policy{Source: api.Source{ID: other.GUID},
		Destination: api.Destination{ID: dst.GUID, Protocol: "tcp", Ports: api.Ports{Start: echoPort + 1, End: echoPort + 1}}}
	t.Cleanup(func() { h.admin.DeletePolicies(context.Background(), []api.Policy{late}) })

	// The cut. a -> b crosses it: not probed until it is back.
	pr.unset(h.a, h.b)
	before := pr.failures(h.a, d)
	cut := faultCut()
	h.link.stall = os.Getenv("TRELLIS_FAULT_CUT_STALL") != "0"
	failovers := agentStatus(t, h.agents[0].cfg.Socket).Failovers
	h.link.setCut(true)
	h.setPort(t, 1, false)
	cutAt := time.Now()
	restored := false
	restore := func() {
		if !restored {
			restored = true
			h.setPort(t, 1, true)
			h.link.setCut(false)
		}
	}
	t.Cleanup(restore)
	if err := h.admin.CreatePolicies(ctx, []api.Policy{late}); err != nil {
		t.Fatalf("create policy other -> dst:%d during the cut: %v", echoPort+1, err)
	}
	// e stops: its DEL removes its wiring at once and tries to deregister
	// it for a while; the agent retries once a controller answers.
	delDone := make(chan error, 1)
	var delTook time.Duration
	go func() {
		t0 := time.Now()
		err := h.del(p, l1, e)
		delTook = time.Since(t0)
		delDone <- err
	}()
	// The cut is real: nothing crosses it.
	if reach(h.a, h.b, time.Second) {
		t.Errorf("a reached b on cell2 with cell1 cut off: the cut does not cut")
	}
	if reachPort(h.o, d, echoPort+1, time.Second) {
		t.Errorf("o reached d:%d during the cut: cell1 heard of a policy it cannot have heard of", echoPort+1)
	}
	local, err := h.lookupA(1, name)
	if err != nil || len(local) == 0 {
		t.Errorf("cell1's DNS during the cut: %v %v, want its last answer", local, err)
	}
	time.Sleep(time.Until(cutAt.Add(cut)))
	if n := pr.failures(h.a, d) - before; n > 0 {
		t.Errorf("a -> d (allowed, both on cell1) failed %d probes during the cut, want 0", n)
	}
	moved := false
	for i, r := range h.agents {
		s := agentStatus(t, r.cfg.Socket)
		t.Logf("cell%d's agent at the end of the cut: ready %v %s, controller %s, failovers %d, revision %d", i+1, s.Ready, s.Reason, s.Controller, s.Failovers, s.Revision)
		moved = moved || i == 0 && s.Failovers > failovers
	}
	// Lost: it moved to another controller, or tried them all (each try
	// at a silent one lasts seconds: the log may come after the cut).
	if got := h.logs.logged("watch desired state: keeping the last one", "cell=cell1"); len(got) == 0 && !moved {
		t.Errorf("cell1's agent never lost its controller during the cut: the cut does not cut")
	}

	// The link returns.
	restore()
	back := time.Now()
	var enforced, gone, cross time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		enforced = poll(t, time.Minute, fmt.Sprintf("o reaching d:%d (the policy written during the cut)", echoPort+1), func() (bool, error) {
			return reachPort(h.o, d, echoPort+1, 300*time.Millisecond), nil
		})
	})
	wg.Go(func() {
		want := []netip.Addr{h.b.ip, d.ip}
		slices.SortFunc(want, netip.Addr.Compare)
		gone = poll(t, time.Minute, fmt.Sprintf("cell2's DNS answering %s with %v (e gone)", name, want), func() (bool, error) {
			got, err := h.lookupA(2, name)
			return slices.Equal(got, want), err
		})
	})
	wg.Go(func() {
		cross = poll(t, time.Minute, "a reaching b again", func() (bool, error) {
			return reach(h.a, h.b, 300*time.Millisecond), nil
		})
	})
	wg.Wait()
	if err := <-delDone; err != nil {
		t.Errorf("DEL of e during the cut: %v", err)
	}
	// The DEL waits for the deregistration (up to 10 s) before it
	// gives up and leaves it to the agent's retry.
	t.Logf("CNI DEL of e during the cut returned after %v", delTook.Round(time.Millisecond))
	pr.set(h.a, h.b, false)
	t.Logf("cell1 cut off for %v (underlay port down and no controller; connections held during the cut stalled after it: %v): after the link returned, the policy written during the cut enforced on cell1 after %v, e (stopped during the cut) gone from cell2's DNS after %v, a reaching b across cells after %v",
		back.Sub(cutAt).Round(time.Millisecond), h.link.stall, enforced.Round(time.Millisecond), gone.Round(time.Millisecond), cross.Round(time.Millisecond))
	// A held poll hears a heartbeat every second and is dropped after
	// api.StateSilence without one: a silent connection is left within
	// seconds, not the poll's wait (30 s) and more. Generous for a loaded
	// machine; the figure is logged above.
	const catchUp = 20 * time.Second
	if enforced > catchUp || gone > catchUp {
		t.Errorf("after the link returned, cell1 caught up after %v (policy) and %v (e gone), want within %v", enforced, gone, catchUp)
	}
	if err := h.admin.DeletePolicies(ctx, []api.Policy{late}); err != nil {
		t.Fatal(err)
	}
	poll(t, time.Minute, fmt.Sprintf("o no longer reaching d:%d", echoPort+1), func() (bool, error) {
		return !reachPort(h.o, d, echoPort+1, 300*time.Millisecond), nil
	})
	pr.check(t, "CellCut")
}

// upgradeSQL is the schema migration of the newer build ControllerUpgrade
// starts: a column added to a table the running controllers use, and a
// table of its own.
const upgradeSQL = `ALTER TABLE policies ADD COLUMN upgrade_note TEXT NOT NULL DEFAULT '';
CREATE TABLE upgrade_probe (id BIGINT PRIMARY KEY);`

// controllerUpgrade stops the controller cell2's agent uses and starts a
// newer build in its place (the same state dir and database, a schema
// migration this build lacks): the agents must notice nothing beyond a
// failover (revisions unchanged, still ready, at most one failover each),
// a must keep reaching b throughout, and a write through the upgraded
// controller must be enforced.
func (h *haWorld) controllerUpgrade(t *testing.T, pr *prober) {
	ctx := context.Background()
	h.setPolicy(t, true)
	pr.unset(h.a, h.b)
	waitReach(t, h.a, h.b, true)
	pr.set(h.a, h.b, false)
	// Quiet first: CellCut's late writes (a deregistration the agent
	// retries once a controller answers again) must land before the
	// baseline, or the upgrade is blamed for them. Quiet: the store's
	// revision and both agents' revisions unchanged over 1.5 s.
	db0, err := sql.Open("pgx", h.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db0.Close()
	revisions := func() (rev int64, agents [2]int64) {
		if err := db0.QueryRowContext(ctx, "SELECT value FROM revision WHERE id = 1").Scan(&rev); err != nil {
			t.Fatal(err)
		}
		for i, r := range h.agents[:2] {
			agents[i] = agentStatus(t, r.cfg.Socket).Revision
		}
		return rev, agents
	}
	poll(t, time.Minute, "the store and both agents quiet", func() (bool, error) {
		r1, a1 := revisions()
		time.Sleep(1500 * time.Millisecond)
		r2, a2 := revisions()
		return r1 == r2 && a1 == a2, nil
	})
	before := make([]api.AgentStatus, len(h.agents))
	for i, r := range h.agents {
		before[i] = agentStatus(t, r.cfg.Socket)
	}
	victim := slices.Index(h.urls, before[1].Controller)
	if victim < 0 {
		t.Fatalf("cell2's agent uses %q, not one of %v", before[1].Controller, h.urls)
	}
	d := h.d // from CellCut, if it ran
	failures, local := pr.failures(h.a, h.b), pr.failures(h.a, d)
	c := h.ctrls[victim]
	t0 := time.Now()
	c.stop()
	stopped := time.Since(t0)
	c.cfg.Upgrade = upgradeSQL
	c.start()
	up := time.Since(t0)
	if c.url != h.urls[victim] {
		t.Fatalf("upgraded controller serves %s, want %s", c.url, h.urls[victim])
	}
	db, err := sql.Open("pgx", h.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var name string
	if err := db.QueryRowContext(ctx, "SELECT name FROM schema_migrations WHERE version = $1", upgradeVersion).Scan(&name); err != nil {
		t.Fatalf("the upgraded controller's migration is not recorded: %v", err)
	}
	// Time for a late notice (a resync, a reconnect) to show.
	time.Sleep(2 * time.Second)
	for i, r := range h.agents {
		s := agentStatus(t, r.cfg.Socket)
		t.Logf("cell%d's agent after the upgrade: controller %s (was %s), failovers %d (was %d), revision %d (was %d)",
			i+1, s.Controller, before[i].Controller, s.Failovers, before[i].Failovers, s.Revision, before[i].Revision)
		if !s.Ready {
			t.Errorf("cell%d's agent not ready after the upgrade: %s", i+1, s.Reason)
		}
		if s.Revision != before[i].Revision {
			t.Errorf("cell%d's agent at revision %d after the upgrade, want %d (no write was made)", i+1, s.Revision, before[i].Revision)
		}
		if n := s.Failovers - before[i].Failovers; n > 1 {
			t.Errorf("cell%d's agent failed over %d times during the upgrade, want at most 1", i+1, n)
		}
	}
	if n := pr.failures(h.a, h.b) - failures; n > 0 {
		t.Errorf("a -> b (allowed) failed %d probes during the upgrade, want 0", n)
	}
	if n := pr.failures(h.a, d) - local; n > 0 {
		t.Errorf("a -> d (allowed) failed %d probes during the upgrade, want 0: at %v (the upgrade began %s)", n, pr.failedAt(h.a, d), t0.Format("15:04:05.000"))
	}
	// A write through the upgraded controller alone reaches the agents.
	cl, err := api.NewClient(api.ClientConfig{APIURL: c.url, CACert: h.adminCfg.CACert, Token: h.adminCfg.Token})
	if err != nil {
		t.Fatal(err)
	}
	pr.unset(h.a, h.b)
	pr.unset(h.a, d)
	w0 := time.Now()
	if err := cl.DeletePolicies(ctx, []api.Policy{h.policy}); err != nil {
		t.Fatalf("delete policy through the upgraded controller: %v", err)
	}
	took := waitReach(t, h.a, h.b, false)
	pr.set(h.a, h.b, true)
	if d != nil {
		waitReach(t, h.a, d, false)
		pr.set(h.a, d, true)
	}
	t.Logf("upgrade of %s: stopped in %v, the newer build serving %v after the stop began; a policy removal written through it enforced %v after the write (%v after it was acknowledged)",
		c.url, stopped.Round(time.Millisecond), up.Round(time.Millisecond), time.Since(w0).Round(time.Millisecond), took.Round(time.Millisecond))
	pr.check(t, "ControllerUpgrade")
}
