package agent_test

import (
	"context"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
)

// peer is how a cell sees another: where its VTEP is on the underlay and
// which subnet lives behind it.
type peer struct {
	underlay netip.Addr
	subnet   netip.Prefix
}

func peerOf(t *testing.T, c api.Cell) peer {
	t.Helper()
	return peer{underlay: c.UnderlayIP, subnet: c.Subnet}
}

// peerEntries reports which of the route, the permanent neighbour (the
// peer's VTEP address) and the permanent FDB entry (the peer's underlay
// address) for p the namespace of h has on its VTEP.
func peerEntries(h *netlink.Handle, p peer) (route, neigh, fdb bool, err error) {
	vtep, err := h.LinkByName(dataplane.VTEPName)
	if err != nil {
		return false, false, false, err
	}
	idx := vtep.Attrs().Index
	routes, err := h.RouteList(vtep, netlink.FAMILY_V4)
	if err != nil {
		return false, false, false, err
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == p.subnet.String() {
			route = true
		}
	}
	neighs, err := h.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return false, false, false, err
	}
	for _, n := range neighs {
		if n.IP.String() == p.subnet.Addr().String() && n.State&netlink.NUD_PERMANENT != 0 {
			neigh = true
		}
	}
	fdbs, err := h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return false, false, false, err
	}
	for _, n := range fdbs {
		if n.IP.String() == p.underlay.String() && n.State&netlink.NUD_PERMANENT != 0 {
			fdb = true
		}
	}
	return route, neigh, fdb, nil
}

// waitProgrammed waits until the namespace at ns has everything for p.
func waitProgrammed(t *testing.T, ns string, p peer) {
	t.Helper()
	h := handle(t, ns)
	poll(t, 5*time.Second, "route, neighbour and FDB entry for "+p.subnet.String(), func() (bool, error) {
		r, n, f, err := peerEntries(h, p)
		return r && n && f, err
	})
}

// cellsByName lists the controller's cells.
func cellsByName(t *testing.T, c *ctrl) map[string]api.Cell {
	t.Helper()
	cells, err := c.admin.Cells(context.Background())
	if err != nil {
		t.Fatalf("Cells: %v", err)
	}
	m := map[string]api.Cell{}
	for _, cell := range cells {
		m[cell.Name] = cell
	}
	return m
}

func TestJoinAndConverge(t *testing.T) {
	w := newWorld(t, "join", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	cfg1 := w.agentCfg(t, c, 1)
	a1 := w.startAgent(t, cfg1)
	w.startAgent(t, w.agentCfg(t, c, 2))

	cells := cellsByName(t, c)
	got := map[string]string{}
	for name, cell := range cells {
		got[name] = cell.Subnet.String() + " " + cell.UnderlayIP.String()
	}
	want := map[string]string{"cell1": "10.255.1.0/24 198.51.100.11", "cell2": "10.255.2.0/24 198.51.100.12"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("cells (-want +got):\n%s", diff)
	}

	for i, other := range map[int]string{1: "cell2", 2: "cell1"} {
		h := handle(t, w.cellPath(i))
		l, err := h.LinkByName(dataplane.VTEPName)
		if err != nil {
			t.Fatalf("cell%d: %s: %v", i, dataplane.VTEPName, err)
		}
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			t.Fatalf("cell%d: %s is a %s, want vxlan", i, dataplane.VTEPName, l.Type())
		}
		if vx.VxlanId != 1 || vx.Port != 4789 || !vx.GBP || vx.Learning {
			t.Errorf("cell%d: VTEP vni %d port %d gbp %v learning %v, want vni 1 port 4789 gbp true learning false",
				i, vx.VxlanId, vx.Port, vx.GBP, vx.Learning)
		}
		waitProgrammed(t, w.cellPath(i), peerOf(t, cells[other]))
	}
	if st := agentStatus(t, cfg1.Socket); st.Subnet != "10.255.1.0/24" || !st.Ready || st.Cell != "cell1" {
		t.Errorf("status of cell1's agent = %+v, want cell1, 10.255.1.0/24, ready", st)
	}

	// A restart with the same state dir and no join token keeps the lease
	// and does not join again: the controller knows the same two cells.
	if err := a1.stop(); err != nil {
		t.Fatalf("agent.Run(cell1) = %v after cancel, want nil", err)
	}
	again := cfg1
	again.JoinToken, again.CACertFile, again.ControllerURLs = "", "", nil
	w.startAgent(t, again)
	if diff := cmp.Diff(cells, cellsByName(t, c), cmp.FilterPath(func(p cmp.Path) bool {
		return p.Last().String() == ".LastSeen"
	}, cmp.Ignore()), cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})); diff != "" {
		t.Errorf("cells after a restart (-before +after):\n%s", diff)
	}
	if st := agentStatus(t, cfg1.Socket); st.Subnet != "10.255.1.0/24" || !st.Ready {
		t.Errorf("status after a restart = %+v, want 10.255.1.0/24, ready", st)
	}
	waitProgrammed(t, w.cellPath(1), peerOf(t, cells["cell2"]))
	waitProgrammed(t, w.cellPath(2), peerOf(t, cells["cell1"]))
}

// waitGone polls the namespace at ns until it has nothing left for p and
// returns how long that took from start.
func waitGone(t *testing.T, ns string, p peer, start time.Time) time.Duration {
	t.Helper()
	h := handle(t, ns)
	poll(t, 10*time.Second, "removal of the entries for "+p.subnet.String(), func() (bool, error) {
		r, n, f, err := peerEntries(h, p)
		return !r && !n && !f, err
	})
	return time.Since(start)
}

func TestCellLeaves(t *testing.T) {
	w := newWorld(t, "leave", 3)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	w.startAgent(t, w.agentCfg(t, c, 1))
	a2 := w.startAgent(t, w.agentCfg(t, c, 2))
	cfg3 := w.agentCfg(t, c, 3)
	cfg3.LeaveOnExit = true
	a3 := w.startAgent(t, cfg3)
	cells := cellsByName(t, c)
	p2, p3 := peerOf(t, cells["cell2"]), peerOf(t, cells["cell3"])
	waitProgrammed(t, w.cellPath(1), p2)
	waitProgrammed(t, w.cellPath(1), p3)

	t.Run("deleted by an admin", func(t *testing.T) {
		start := time.Now()
		if err := c.admin.DeleteCell(context.Background(), cells["cell2"].GUID); err != nil {
			t.Fatalf("DeleteCell: %v", err)
		}
		took := waitGone(t, w.cellPath(1), p2, start)
		t.Logf("cell2 gone from cell1 %v after DeleteCell", took)
		if took > time.Second {
			t.Errorf("cell2 gone from cell1 after %v, want within 1s", took)
		}
		// The deleted cell's agent is told and stops with a clear error.
		if !a2.exits(10 * time.Second) {
			t.Fatal("the agent of the deleted cell still runs 10s later")
		}
		wantErrorSays(t, "agent of a deleted cell", a2.err, "no longer knows cell")
	})

	t.Run("leave on exit", func(t *testing.T) {
		start := time.Now()
		if err := a3.stop(); err != nil {
			t.Errorf("agent.Run(cell3) = %v after cancel, want nil", err)
		}
		took := waitGone(t, w.cellPath(1), p3, start)
		t.Logf("cell3 gone from cell1 %v after its agent was cancelled", took)
		if took > time.Second {
			t.Errorf("cell3 gone from cell1 after %v, want within 1s", took)
		}
	})

	if got := slices.Sorted(maps.Keys(cellsByName(t, c))); !slices.Equal(got, []string{"cell1"}) {
		t.Errorf("cells at the end: %v, want [cell1]", got)
	}
}

// nothingMade checks that a failed start left the state dir empty and the
// cell namespace as the underlay made it.
func nothingMade(t *testing.T, w *world, cell int, stateDir string) {
	t.Helper()
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Errorf("state dir after a failed start holds %v, want nothing", names)
	}
	if got := linkNames(t, w.cellPath(cell)); !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Errorf("links in cell%d after a failed start: %v, want [eth0 lo]", cell, got)
	}
}

func TestBadInput(t *testing.T) {
	w := newWorld(t, "bad", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})

	t.Run("bad join token", func(t *testing.T) {
		cfg := w.agentCfg(t, c, 2)
		cfg.JoinToken = "trlsj_0123456789abcdef"
		wantErrorSays(t, "bad token", w.runAgentFails(t, cfg), "join token is unknown, used or expired", "create-join-token")
		nothingMade(t, w, 2, cfg.StateDir)
	})

	t.Run("used join token", func(t *testing.T) {
		cfg1 := w.agentCfg(t, c, 1)
		w.startAgent(t, cfg1).stop()
		cfg := w.agentCfg(t, c, 2)
		cfg.JoinToken = cfg1.JoinToken
		wantErrorSays(t, "used token", w.runAgentFails(t, cfg), "join token is unknown, used or expired")
		nothingMade(t, w, 2, cfg.StateDir)
	})

	t.Run("wrong controller CA", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := identity.LoadOrCreateCA(dir, "not the trellis CA"); err != nil {
			t.Fatal(err)
		}
		cfg := w.agentCfg(t, c, 2)
		cfg.CACertFile = filepath.Join(dir, identity.CACertFile)
		wantErrorSays(t, "wrong CA", w.runAgentFails(t, cfg), "not signed by the CA in "+cfg.CACertFile)
		nothingMade(t, w, 2, cfg.StateDir)
	})

	t.Run("no CA file", func(t *testing.T) {
		cfg := w.agentCfg(t, c, 2)
		cfg.CACertFile = filepath.Join(t.TempDir(), "nothing.crt")
		wantErrorSays(t, "no CA file", w.runAgentFails(t, cfg), cfg.CACertFile)
		nothingMade(t, w, 2, cfg.StateDir)
	})

	t.Run("missing netns", func(t *testing.T) {
		cfg := w.agentCfg(t, c, 2)
		cfg.NetNS = w.prefix + "-nosuch"
		wantErrorSays(t, "missing netns", w.runAgentFails(t, cfg), "--netns", cfg.NetNS)
		nothingMade(t, w, 2, cfg.StateDir)
	})

	t.Run("no join token and no identity", func(t *testing.T) {
		cfg := w.agentCfg(t, c, 2)
		cfg.JoinToken = ""
		wantErrorSays(t, "no token", w.runAgentFails(t, cfg), "--join-token")
		nothingMade(t, w, 2, cfg.StateDir)
	})

	// None of the failures above made a cell.
	if got := slices.Sorted(maps.Keys(cellsByName(t, c))); !slices.Equal(got, []string{"cell1"}) {
		t.Errorf("cells: %v, want [cell1]", got)
	}

	t.Run("overlay full", func(t *testing.T) {
		pool, err := ipam.NewPool(netip.MustParsePrefix("10.10.0.0/23"), 24) // room for one cell
		if err != nil {
			t.Fatal(err)
		}
		small := startController(t, w, controller.Config{StateDir: t.TempDir(), Overlay: pool})
		cfg1 := w.agentCfg(t, small, 1)
		w.startAgent(t, cfg1)
		if st := agentStatus(t, cfg1.Socket); st.Subnet != "10.10.1.0/24" {
			t.Errorf("subnet of the one cell = %s, want 10.10.1.0/24", st.Subnet)
		}
		cfg := w.agentCfg(t, small, 2)
		wantErrorSays(t, "overlay full", w.runAgentFails(t, cfg), "overlay", "full")
		nothingMade(t, w, 2, cfg.StateDir)
	})
}

func TestRejoinAfterDelete(t *testing.T) {
	w := newWorld(t, "rejoin", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	cfg1 := w.agentCfg(t, c, 1)
	a1 := w.startAgent(t, cfg1)
	a2 := w.startAgent(t, w.agentCfg(t, c, 2))
	old := cellsByName(t, c)["cell1"]
	waitProgrammed(t, w.cellPath(2), peerOf(t, old))
	waitProgrammed(t, w.cellPath(1), peerOf(t, cellsByName(t, c)["cell2"]))

	// A container on each cell, talking.
	p := installPlugin(t)
	app := createApp(t, c, "web").GUID
	ctrA, ctrB := w.addPair(t, p, cniList(t, a1), cniList(t, a2), app)
	conn := echoConn(t, ctrA, ctrB, "TCP from a to b", "before")

	if err := c.admin.DeleteCell(context.Background(), old.GUID); err != nil {
		t.Fatalf("DeleteCell: %v", err)
	}
	if !a1.exits(10 * time.Second) {
		t.Fatal("the agent of the deleted cell still runs 10s later")
	}
	wantErrorSays(t, "agent of a deleted cell", a1.err, "no longer knows cell", "--join-token")
	wantInstances(t, c, app, runningAs("inst-b", ctrB))

	// Started again as it was, it says the same.
	again := cfg1
	again.JoinToken = ""
	wantErrorSays(t, "restart of a deleted cell", w.runAgentFails(t, again), "no longer knows cell", "--join-token")

	// With a new join token, the same state dir joins again.
	again.JoinToken = c.joinToken(t)
	w.startAgent(t, again)
	now := cellsByName(t, c)["cell1"]
	if now.GUID == "" || now.GUID == old.GUID {
		t.Errorf("cell1 after joining again: %+v, want a new cell", now)
	}
	waitProgrammed(t, w.cellPath(2), peerOf(t, now))
	if st := agentStatus(t, cfg1.Socket); !st.Ready || st.Subnet != now.Subnet.String() {
		t.Errorf("status after joining again = %+v, want ready with %s", st, now.Subnet)
	}
	// The container attached before is registered again and, with the
	// same lease, talks again on its old connection.
	if now.Subnet != old.Subnet {
		t.Fatalf("lease after joining again %s, want the free %s again", now.Subnet, old.Subnet)
	}
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB))
	if err := roundTrip(conn, "after joining again"); err != nil {
		t.Errorf("TCP from a to b after cell1 joined again: %v", err)
	}
}

func TestResync(t *testing.T) {
	w := newWorld(t, "resync", 3)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})

	// A resync period longer than the controller's longest poll still
	// gets changes pushed.
	cfg1 := w.agentCfg(t, c, 1)
	cfg1.Resync = time.Minute
	w.startAgent(t, cfg1)
	w.startAgent(t, w.agentCfg(t, c, 2))
	waitProgrammed(t, w.cellPath(1), peerOf(t, cellsByName(t, c)["cell2"]))

	// A short one repairs what was removed behind the agent's back, with
	// no change at the controller.
	cfg3 := w.agentCfg(t, c, 3)
	cfg3.Resync = 300 * time.Millisecond
	w.startAgent(t, cfg3)
	p2 := peerOf(t, cellsByName(t, c)["cell2"])
	waitProgrammed(t, w.cellPath(3), p2)
	h := handle(t, w.cellPath(3))
	vtep, err := h.LinkByName(dataplane.VTEPName)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := h.RouteList(vtep, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == p2.subnet.String() {
			if err := h.RouteDel(&r); err != nil {
				t.Fatal(err)
			}
			deleted = true
		}
	}
	if !deleted {
		t.Fatalf("cell3 has no route to %s to delete", p2.subnet)
	}
	took := poll(t, 5*time.Second, "route restored by the resync", func() (bool, error) { return routeTo(h, p2.subnet) })
	t.Logf("route restored %v after it was deleted", took)
}
