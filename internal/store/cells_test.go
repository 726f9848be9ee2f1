package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/ipam"
)

func joinToken(t *testing.T, s *Store, name string) []byte {
	t.Helper()
	h := sha256.Sum256([]byte(name))
	if err := s.CreateJoinToken(t.Context(), h[:], time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	return h[:]
}

func mustJoin(t *testing.T, s *Store, pool ipam.Pool, name, ip string) Cell {
	t.Helper()
	c, err := s.JoinCell(t.Context(), joinToken(t, s, name), name, netip.MustParseAddr(ip), pool)
	if err != nil {
		t.Fatalf("JoinCell(%s) = %v", name, err)
	}
	return c
}

func TestJoinCell(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		pool, _ := ipam.NewPool(netip.MustParsePrefix("10.10.0.0/22"), 24) // 3 cells
		if err := s.OverlaySettings(ctx, pool); err != nil {
			t.Fatal(err)
		}
		other, _ := ipam.NewPool(ipam.DefaultOverlay, 24)
		if err := s.OverlaySettings(ctx, other); err == nil {
			t.Error("OverlaySettings(another overlay) = nil, want a mismatch error")
		}
		c1 := mustJoin(t, s, pool, "cell1", "198.51.100.11")
		if c1.Subnet.String() != "10.10.1.0/24" {
			t.Errorf("first lease = %s, want 10.10.1.0/24", c1.Subnet)
		}
		// A token works once.
		tok := joinToken(t, s, "x")
		if _, err := s.JoinCell(ctx, tok, "cell2", netip.MustParseAddr("198.51.100.12"), pool); err != nil {
			t.Fatal(err)
		}
		if _, err := s.JoinCell(ctx, tok, "cell3", netip.MustParseAddr("198.51.100.13"), pool); !errors.Is(err, ErrBadJoinToken) {
			t.Errorf("JoinCell(used token) = %v, want ErrBadJoinToken", err)
		}
		// A taken name fails and keeps the token.
		tok = joinToken(t, s, "y")
		if _, err := s.JoinCell(ctx, tok, "cell1", netip.MustParseAddr("198.51.100.13"), pool); !errors.Is(err, ErrConflict) {
			t.Errorf("JoinCell(taken name) = %v, want ErrConflict", err)
		}
		mustJoinWith := func(tok []byte, name, ip string) error {
			_, err := s.JoinCell(ctx, tok, name, netip.MustParseAddr(ip), pool)
			return err
		}
		if err := mustJoinWith(tok, "cell3", "198.51.100.13"); err != nil {
			t.Fatalf("JoinCell after a failed try with the same token = %v", err)
		}
		if err := mustJoinWith(joinToken(t, s, "z"), "cell4", "198.51.100.14"); !errors.Is(err, ErrOverlayFull) {
			t.Errorf("JoinCell(overlay full) = %v, want ErrOverlayFull", err)
		}
		// An expired token is refused.
		h := sha256.Sum256([]byte("old"))
		s.CreateJoinToken(ctx, h[:], time.Now().Add(-time.Second))
		if err := mustJoinWith(h[:], "cell5", "198.51.100.15"); !errors.Is(err, ErrBadJoinToken) {
			t.Errorf("JoinCell(expired token) = %v, want ErrBadJoinToken", err)
		}
		// Leaving frees the lease for the next cell.
		if err := s.DeleteCell(ctx, c1.GUID); err != nil {
			t.Fatal(err)
		}
		c := mustJoin(t, s, pool, "cell6", "198.51.100.16")
		if c.Subnet != c1.Subnet {
			t.Errorf("lease after cell1 left = %s, want its %s", c.Subnet, c1.Subnet)
		}
	})
}

func TestScheduleInstances(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		pool, _ := ipam.NewPool(ipam.DefaultOverlay, 24)
		app, err := s.CreateApp(ctx, f.space.GUID, "web")
		if err != nil {
			t.Fatal(err)
		}
		started, three := AppStarted, 3
		// Started with no cell: instances wait, then are placed when cells join.
		if _, err := s.UpdateApp(ctx, app.GUID, AppUpdate{State: &started, Instances: &three}); err != nil {
			t.Fatal(err)
		}
		ins, _ := s.Instances(ctx, InstanceFilter{AppGUIDs: []string{app.GUID}})
		if len(ins) != 3 || ins[0].CellGUID != "" {
			t.Fatalf("instances with no cells = %+v, want 3 unplaced", ins)
		}
		c1 := mustJoin(t, s, pool, "cell1", "198.51.100.11")
		c2 := mustJoin(t, s, pool, "cell2", "198.51.100.12")
		ins, _ = s.Instances(ctx, InstanceFilter{AppGUIDs: []string{app.GUID}})
		perCell := map[string]int{}
		for _, in := range ins {
			perCell[in.CellGUID]++
		}
		if perCell[c1.GUID] != 3 {
			t.Errorf("placement after cell1 joined = %v, want all 3 on cell1", perCell)
		}
		// Scale to 5: the two new ones go to the emptier cell2.
		five := 5
		s.UpdateApp(ctx, app.GUID, AppUpdate{Instances: &five})
		ins, _ = s.Instances(ctx, InstanceFilter{CellGUIDs: []string{c2.GUID}})
		if len(ins) != 2 {
			t.Errorf("instances on cell2 after scale to 5 = %d, want 2", len(ins))
		}
		// Register, re-register (no-op), deregister.
		in := ins[0]
		in.IP, in.ContainerID = netip.MustParseAddr("10.255.2.2"), "ctr-1"
		if err := s.RegisterInstance(ctx, c2.GUID, in); err != nil {
			t.Fatal(err)
		}
		rev, _ := s.Revision(ctx)
		if err := s.RegisterInstance(ctx, c2.GUID, in); err != nil {
			t.Fatal(err)
		}
		if r2, _ := s.Revision(ctx); r2 != rev {
			t.Errorf("re-registering bumped the revision %d -> %d", rev, r2)
		}
		if err := s.RegisterInstance(ctx, c1.GUID, in); !errors.Is(err, ErrConflict) {
			t.Errorf("RegisterInstance(on another cell) = %v, want ErrConflict", err)
		}
		// A runtime's own instance is created on register and deleted on deregister.
		ext := Instance{GUID: "ext-1", AppGUID: app.GUID, IP: netip.MustParseAddr("10.255.1.9"), ContainerID: "podman-1"}
		if err := s.RegisterInstance(ctx, c1.GUID, ext); err != nil {
			t.Fatal(err)
		}
		if err := s.RegisterInstance(ctx, c1.GUID, Instance{GUID: "ext-2", AppGUID: "nope", IP: netip.MustParseAddr("10.255.1.10")}); !errors.Is(err, ErrAppNotFound) {
			t.Errorf("RegisterInstance(unknown app) = %v, want ErrAppNotFound", err)
		}
		for _, g := range []string{"ext-1", in.GUID, "ext-1"} {
			if err := s.DeregisterInstance(ctx, c1.GUID, g); err != nil {
				t.Fatal(err)
			}
		}
		s.DeregisterInstance(ctx, c2.GUID, in.GUID)
		got, _ := s.Instances(ctx, InstanceFilter{GUIDs: []string{in.GUID, "ext-1"}})
		if len(got) != 1 || got[0].State != InstanceDown || got[0].IP.IsValid() {
			t.Errorf("after deregister = %+v, want the managed one DOWN without address", got)
		}
		// Pinning moves everything to the pinned cell; deleting it re-places.
		pin := c2.GUID
		s.UpdateApp(ctx, app.GUID, AppUpdate{CellGUID: &pin})
		ins, _ = s.Instances(ctx, InstanceFilter{CellGUIDs: []string{c2.GUID}})
		if len(ins) != 5 {
			t.Errorf("instances on pinned cell2 = %d, want 5", len(ins))
		}
		if err := s.DeleteCell(ctx, c2.GUID); err != nil {
			t.Fatal(err)
		}
		ins, _ = s.Instances(ctx, InstanceFilter{CellGUIDs: []string{c1.GUID}})
		if len(ins) != 5 {
			t.Errorf("instances on cell1 after cell2 left = %d, want 5", len(ins))
		}
		// Stop: no managed instances; delete: nothing at all.
		stopped := AppStopped
		s.UpdateApp(ctx, app.GUID, AppUpdate{State: &stopped})
		if ins, _ = s.Instances(ctx, InstanceFilter{AppGUIDs: []string{app.GUID}}); len(ins) != 0 {
			t.Errorf("instances of a stopped app = %d, want 0", len(ins))
		}
		s.UpdateApp(ctx, app.GUID, AppUpdate{State: &started})
		if err := s.DeleteApp(ctx, app.GUID); err != nil {
			t.Fatalf("DeleteApp(with instances) = %v", err)
		}
	})
}

func TestWaitRevision(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		rev, _ := s.Revision(ctx)
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		if got, err := s.WaitRevision(short, rev); !errors.Is(err, context.DeadlineExceeded) || got != rev {
			t.Errorf("WaitRevision(no change) = %d, %v; want %d, deadline exceeded", got, err, rev)
		}
		done := make(chan int64)
		go func() {
			got, _ := s.WaitRevision(ctx, rev)
			done <- got
		}()
		if _, err := s.CreateOrg(ctx, "woken"); err != nil {
			t.Fatal(err)
		}
		if got := <-done; got != rev+1 {
			t.Errorf("WaitRevision after one change = %d, want %d", got, rev+1)
		}
	})
}

// TestWaitRevisionAcrossControllers: a change made through one Store (one
// controller) wakes a watcher on another Store of the same database at
// once, not at its next poll.
func TestWaitRevisionAcrossControllers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		a, b := openStore(t, url), openStore(t, url)
		ctx := t.Context()
		rev, _ := b.Revision(ctx)
		saved := RevisionPoll
		RevisionPoll = time.Hour // only a notification (or the listener's wake on connect) can wake it
		t.Cleanup(func() { RevisionPoll = saved })
		if !a.pg {
			RevisionPoll = saved // SQLite has one controller; polling is its cross-process path
		}
		done := make(chan time.Duration)
		go func() {
			start := time.Now()
			b.WaitRevision(ctx, rev)
			done <- time.Since(start)
		}()
		time.Sleep(100 * time.Millisecond) // the watcher must be waiting before the change, to measure the wake
		if _, err := a.CreateOrg(ctx, "elsewhere"); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-done:
			t.Logf("woken after %v", d)
		case <-time.After(30 * time.Second): // generous: a loaded machine may take seconds to connect the listener
			t.Fatal("a change through another Store did not wake the watcher")
		}
	})
}
