package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// TestModelMatchesCompile walks the store at random through the writes
// the API makes — cells joining and leaving, spaces, apps created, started,
// scaled, pinned, stopped and deleted, instances registered and
// deregistered, policies added and removed, domains, routes and their
// destinations, TLS settings, the enforcement setting, cells' WireGuard
// keys registered and rotated and the encryption setting — and after every
// step checks that the cells' feed, brought forward by the store's changes,
// holds for every cell exactly the state a full compile of a fresh snapshot
// gives (and the same bytes), and that it rebuilt from a snapshot only for
// the changes it does not apply (settings).
func TestModelMatchesCompile(t *testing.T) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			steps := 400
			if testing.Short() {
				steps = 100
			}
			w := newWalk(t, storetest.Open(t, engine), 1)
			for i := range steps {
				what := w.step()
				w.check(i, what)
			}
			if got, max := testutil.ToFloat64(w.s.feed.rebuilds), float64(1+w.settings); got > max {
				t.Errorf("the feed rebuilt its model %v times; want at most %v (the first compile and one per setting)", got, max)
			}
			t.Logf("%d steps: %v model rebuilds, %v cell states compiled", steps,
				testutil.ToFloat64(w.s.feed.rebuilds), testutil.ToFloat64(w.s.feed.cellsCompiled))
		})
	}
}

// walk is a random walk of store writes.
type walk struct {
	t        *testing.T
	ctx      context.Context
	st       *store.Store
	s        *Server
	pool     ipam.Pool
	rnd      *rand.Rand
	org      string
	nextIP   map[string]int // cell → next host number in its subnet
	n        int            // names made so far
	settings int            // enforcement settings written
	// noSettings leaves settings alone (their change rebuilds the model).
	noSettings bool
}

func newWalk(t *testing.T, st *store.Store, seed uint64) *walk {
	ctx := t.Context()
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	if err := st.OverlaySettings(ctx, pool); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := ensureInstanceCA(ctx, st, log); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "walk CA")
	if err != nil {
		t.Fatal(err)
	}
	orgs, err := st.Orgs(ctx, store.OrgFilter{})
	if err != nil || len(orgs) == 0 {
		t.Fatalf("orgs = %v, %v", orgs, err)
	}
	w := &walk{t: t, ctx: ctx, st: st, s: NewServer(st, ca, pool, InstanceIdentity{}, log), pool: pool,
		rnd: rand.New(rand.NewPCG(seed, 13)), org: orgs[0].GUID, nextIP: map[string]int{}}
	for range 3 {
		w.joinCell()
	}
	w.check(-1, "start")
	return w
}

func (w *walk) name(prefix string) string {
	w.n++
	return fmt.Sprintf("%s%d", prefix, w.n)
}

func pick[T any](w *walk, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[w.rnd.IntN(len(xs))], true
}

func (w *walk) cells() []store.Cell {
	cs, err := w.st.Cells(w.ctx, store.CellFilter{})
	if err != nil {
		w.t.Fatal(err)
	}
	return cs
}

func (w *walk) apps() []store.App {
	as, err := w.st.Apps(w.ctx, store.AppFilter{})
	if err != nil {
		w.t.Fatal(err)
	}
	return as
}

func (w *walk) joinCell() string {
	hash := []byte(w.name("join"))
	if err := w.st.CreateJoinToken(w.ctx, hash, time.Now().Add(time.Hour)); err != nil {
		w.t.Fatal(err)
	}
	w.n++
	c, err := w.st.JoinCell(w.ctx, hash, w.name("cell"), netip.AddrFrom4([4]byte{198, 51, byte(w.n / 250), byte(1 + w.n%250)}), w.pool)
	if err != nil {
		w.t.Fatal(err)
	}
	return "join cell " + c.Name
}

// step makes one random write and says what it was.
func (w *walk) step() string {
	ctx, st := w.ctx, w.st
	switch op := w.rnd.IntN(106); {
	case op < 3:
		if len(w.cells()) < 6 {
			return w.joinCell()
		}
		fallthrough
	case op < 5:
		if c, ok := pick(w, w.cells()); ok && len(w.cells()) > 1 {
			st.DeleteCell(ctx, c.GUID)
			return "delete cell " + c.Name
		}
	case op < 8:
		sp, err := st.CreateSpace(ctx, w.org, w.name("space"))
		if err != nil {
			w.t.Fatal(err)
		}
		return "create space " + sp.Name
	case op < 18:
		spaces, _ := st.Spaces(ctx, store.SpaceFilter{})
		sp, _ := pick(w, spaces)
		a, err := st.CreateApp(ctx, sp.GUID, w.name("app"))
		if err != nil {
			w.t.Fatal(err)
		}
		return "create app " + a.Name
	case op < 21:
		if a, ok := pick(w, w.apps()); ok {
			st.DeleteApp(ctx, a.GUID)
			return "delete app " + a.Name
		}
	case op < 33:
		if a, ok := pick(w, w.apps()); ok {
			u := store.AppUpdate{}
			switch w.rnd.IntN(5) {
			case 0, 1:
				state, n := store.AppStarted, w.rnd.IntN(4)
				u.State, u.Instances = &state, &n
			case 2:
				state := store.AppStopped
				u.State = &state
			case 3:
				env := map[string]string{"K": w.name("v")}
				cmd := []string{"/bin/app", w.name("arg")}
				u.Env, u.Command = &env, &cmd
			case 4:
				cell := ""
				if c, ok := pick(w, w.cells()); ok && w.rnd.IntN(2) == 0 {
					cell = c.GUID
				}
				u.CellGUID = &cell
			}
			st.UpdateApp(ctx, a.GUID, u)
			return "update app " + a.Name
		}
	case op < 45:
		// Attach: a waiting managed instance on its cell, or a new
		// instance of a runtime.
		ins, _ := st.Instances(ctx, store.InstanceFilter{})
		var waiting []store.Instance
		for _, in := range ins {
			if in.Managed && in.CellGUID != "" && in.State != store.InstanceRunning {
				waiting = append(waiting, in)
			}
		}
		in, ok := pick(w, waiting)
		if !ok || w.rnd.IntN(2) == 0 {
			a, okA := pick(w, w.apps())
			c, okC := pick(w, w.cells())
			if !okA || !okC {
				return "nothing"
			}
			in = store.Instance{GUID: uuid.NewString(), AppGUID: a.GUID, CellGUID: c.GUID, Index: w.rnd.IntN(3)}
		}
		cells, _ := st.Cells(ctx, store.CellFilter{GUIDs: []string{in.CellGUID}})
		if len(cells) == 0 {
			return "nothing"
		}
		w.nextIP[in.CellGUID]++
		ip := cells[0].Subnet.Addr()
		for range 1 + w.nextIP[in.CellGUID] {
			ip = ip.Next()
		}
		in.IP, in.ContainerID = ip, w.name("c")
		st.RegisterInstance(ctx, in.CellGUID, in)
		return "attach instance " + in.GUID
	case op < 52:
		ins, _ := st.Instances(ctx, store.InstanceFilter{})
		if in, ok := pick(w, ins); ok && in.CellGUID != "" {
			st.DeregisterInstance(ctx, in.CellGUID, in.GUID)
			return "detach instance " + in.GUID
		}
	case op < 70:
		as := w.apps()
		src, ok1 := pick(w, as)
		dst, ok2 := pick(w, as)
		if ok1 && ok2 {
			proto, start := []string{"tcp", "udp"}[w.rnd.IntN(2)], []int{80, 8080, 61443, 61000}[w.rnd.IntN(4)]
			end := start + w.rnd.IntN(2)*1000
			st.CreatePolicies(ctx, []store.Policy{{SourceApp: src.GUID, DestApp: dst.GUID, Protocol: proto, StartPort: start, EndPort: end}}, store.CreatePoliciesOptions{})
			return fmt.Sprintf("add policy %s → %s %s %d-%d", src.Name, dst.Name, proto, start, end)
		}
	case op < 78:
		ps, _ := st.Policies(ctx, store.PolicyFilter{})
		if p, ok := pick(w, ps); ok {
			st.DeletePolicies(ctx, []store.Policy{p}, nil)
			return "remove policy"
		}
	case op < 80:
		d, err := st.CreateDomain(ctx, w.name("d")+".example", w.rnd.IntN(2) == 0)
		if err != nil {
			w.t.Fatal(err)
		}
		return "create domain " + d.Name
	case op < 85:
		ds, _ := st.Domains(ctx, store.DomainFilter{})
		spaces, _ := st.Spaces(ctx, store.SpaceFilter{})
		d, _ := pick(w, ds)
		sp, _ := pick(w, spaces)
		rt, err := st.CreateRoute(ctx, sp.GUID, d.GUID, w.name("h"))
		if err != nil {
			w.t.Fatal(err)
		}
		return "create route " + rt.Host
	case op < 92:
		rts, _ := st.Routes(ctx, store.RouteFilter{})
		if rt, ok := pick(w, rts); ok {
			if len(rt.AppGUIDs) > 0 && w.rnd.IntN(3) == 0 {
				app, _ := pick(w, rt.AppGUIDs)
				st.RemoveRouteDestination(ctx, rt.GUID, app)
				return "unmap route " + rt.Host
			}
			as, _ := st.Apps(ctx, store.AppFilter{SpaceGUIDs: []string{rt.SpaceGUID}})
			if a, ok := pick(w, as); ok {
				st.AddRouteDestinations(ctx, rt.GUID, []string{a.GUID})
				return "map route " + rt.Host + " to " + a.Name
			}
		}
	case op < 94:
		rts, _ := st.Routes(ctx, store.RouteFilter{})
		if rt, ok := pick(w, rts); ok {
			st.DeleteRoute(ctx, rt.GUID)
			return "delete route " + rt.Host
		}
	case op < 96:
		if a, ok := pick(w, w.apps()); ok {
			st.SetAppRequireClientCert(ctx, a.GUID, w.rnd.IntN(2) == 0)
			return "require client cert " + a.Name
		}
	case op < 98:
		// A security group change rebuilds the model (its change
		// triggers must record it, or the model falls behind).
		if w.noSettings {
			return "nothing"
		}
		w.settings++
		return w.securityGroupStep()
	case op < 100:
		if w.noSettings {
			return "nothing"
		}
		w.settings++
		st.SetSetting(ctx, enforcementKey, []string{"true", "false"}[w.rnd.IntN(2)])
		return "set enforcement"
	default:
		return w.wireguardStep(op - 100)
	}
	return "nothing"
}

// wireguardStep registers a cell's WireGuard key (for the generation
// wanted, or one the store refuses), rotates some cells' keys or all, or
// (a setting: the model rebuilds) turns encryption on or off.
func (w *walk) wireguardStep(op int) string {
	ctx, st := w.ctx, w.st
	c, ok := pick(w, w.cells())
	switch {
	case !ok:
	case op < 3:
		gen := c.KeyGeneration
		if w.rnd.IntN(4) == 0 {
			gen += int64(w.rnd.IntN(3)) - 1 // older (maybe refused), the same, or newer (refused)
		}
		err := st.RegisterCellKey(ctx, c.GUID, store.CellKey{PublicKey: testWireGuardKey(), ListenPort: 51820 + w.rnd.IntN(3), Generation: gen})
		return fmt.Sprintf("register %s's key for generation %d (wanted %d): %v", c.Name, gen, c.KeyGeneration, err)
	case op < 5:
		var names []string
		if w.rnd.IntN(2) == 0 {
			names = []string{c.Name}
		}
		if _, err := st.RotateCellKeys(ctx, names); err != nil {
			w.t.Fatal(err)
		}
		return fmt.Sprintf("rotate keys of %v (none: all)", names)
	default:
		if w.noSettings {
			return "nothing"
		}
		w.settings++
		mode := []string{api.EncryptionOff, api.EncryptionWireGuard}[w.rnd.IntN(2)]
		st.SetSetting(ctx, encryptionKey, mode)
		return "set encryption " + mode
	}
	return "nothing"
}

// securityGroupStep creates a group bound to a space (or globally),
// binds or unbinds one, or deletes one.
func (w *walk) securityGroupStep() string {
	ctx, st := w.ctx, w.st
	groups, _ := st.SecurityGroups(ctx, store.SecurityGroupFilter{})
	spaces, _ := st.Spaces(ctx, store.SpaceFilter{})
	sp, _ := pick(w, spaces)
	g, ok := pick(w, groups)
	switch op := w.rnd.IntN(4); {
	case op == 0 || !ok:
		ng := store.SecurityGroup{Name: w.name("asg"), GlobalRunning: w.rnd.IntN(3) == 0,
			Rules: []api.SecurityGroupRule{{Protocol: "tcp", Destination: fmt.Sprintf("203.0.113.%d", 1+w.rnd.IntN(200)), Ports: "443"}}}
		if !ng.GlobalRunning {
			ng.RunningSpaces = []string{sp.GUID}
		}
		if _, err := st.CreateSecurityGroup(ctx, ng); err != nil {
			w.t.Fatal(err)
		}
		return "create security group " + ng.Name
	case op == 1:
		st.BindSecurityGroup(ctx, g.GUID, store.Running, []string{sp.GUID})
		return "bind security group " + g.Name
	case op == 2 && len(g.RunningSpaces) > 0:
		st.UnbindSecurityGroup(ctx, g.GUID, store.Running, g.RunningSpaces[0])
		return "unbind security group " + g.Name
	default:
		st.DeleteSecurityGroup(ctx, g.GUID)
		return "delete security group " + g.Name
	}
}

// check brings the feed to the store's revision and compares every cell's
// state in its model with a full compile of a fresh snapshot.
func (w *walk) check(i int, what string) {
	w.t.Helper()
	ctx := w.ctx
	rev, err := w.st.Revision(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.s.feed.compileAtLeast(ctx, rev); err != nil {
		w.t.Fatalf("step %d (%s): compile: %v", i, what, err)
	}
	snap, err := w.st.Snapshot(ctx, store.SnapshotFilter{})
	if err != nil {
		w.t.Fatal(err)
	}
	in, err := w.s.compileInput(ctx, snap)
	if err != nil {
		w.t.Fatal(err)
	}
	want := policy.Compile(in)
	m := w.s.feed.model
	if m.Revision() != snap.Revision {
		w.t.Fatalf("step %d (%s): model at revision %d, store at %d", i, what, m.Revision(), snap.Revision)
	}
	got := map[string]api.CellState{}
	for _, guid := range m.Cells() {
		if got[guid], err = m.Cell(guid); err != nil {
			w.t.Fatal(err)
		}
	}
	opts := []cmp.Option{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})}
	if diff := cmp.Diff(want, got, opts...); diff != "" {
		w.t.Fatalf("step %d (%s): model (+) differs from a full compile (-):\n%s", i, what, diff)
	}
	w.s.feed.mu.Lock()
	entries := w.s.feed.cells
	w.s.feed.mu.Unlock()
	if len(entries) != len(want) {
		w.t.Fatalf("step %d (%s): the feed has %d cells, the compile %d", i, what, len(entries), len(want))
	}
	for guid, st := range want {
		e, err := newStateEncoder().encode(0, &st)
		if err != nil {
			w.t.Fatal(err)
		}
		if entries[guid] == nil || entries[guid].sum != e.sum {
			w.t.Fatalf("step %d (%s): the feed's state of cell %s is not the compiled one", i, what, guid)
		}
	}
}

// TestCellFeedRebuildsWhenPruned: a feed whose model is further behind
// than the store's change feed reaches rebuilds it from a snapshot, and its
// states are again those of a full compile.
func TestCellFeedRebuildsWhenPruned(t *testing.T) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			defer func(kept int) { store.ChangesKept = kept }(store.ChangesKept)
			store.ChangesKept = 20
			w := newWalk(t, storetest.Open(t, engine), 2)
			before := testutil.ToFloat64(w.s.feed.rebuilds)
			w.noSettings = true
			for range 200 { // more than the store's prune interval of revisions
				w.step()
			}
			w.check(0, "200 steps at once")
			if got := testutil.ToFloat64(w.s.feed.rebuilds); got != before+1 {
				t.Errorf("rebuilds = %v after the feed was pruned past the model, want %v", got, before+1)
			}
		})
	}
}
