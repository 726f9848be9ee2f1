package store

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trellis-c2c/trellis/internal/ipam"
)

// TestSnapshot: a snapshot holds what was written, the same rows the
// single reads return, at the revision of the last write; narrowed to a
// cell, only the policies to apps attached there.
func TestSnapshot(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		pool, _ := ipam.NewPool(ipam.DefaultOverlay, 24)
		c1 := mustJoin(t, s, pool, "cell1", "198.51.100.11")
		c2 := mustJoin(t, s, pool, "cell2", "198.51.100.12")
		apps := f.apps(t, "frontend", "backend", "idle")
		started, one := AppStarted, 1
		for name, cell := range map[string]string{"frontend": c1.GUID, "backend": c2.GUID} {
			if _, err := s.UpdateApp(ctx, apps[name], AppUpdate{State: &started, Instances: &one, CellGUID: &cell}); err != nil {
				t.Fatal(err)
			}
		}
		placed := must(s.Instances(ctx, InstanceFilter{AppGUIDs: []string{apps["backend"]}}))(t)
		if err := s.RegisterInstance(ctx, c2.GUID, Instance{GUID: placed[0].GUID, AppGUID: apps["backend"], IP: netip.MustParseAddr("10.255.2.2"), ContainerID: "ctr"}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreatePolicies(ctx, []Policy{tcp(apps["frontend"], apps["backend"], 8080), tcp(apps["backend"], apps["idle"], 9090)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		rt := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "backend"))(t)
		if _, err := s.AddRouteDestinations(ctx, rt.GUID, []string{apps["backend"]}); err != nil {
			t.Fatal(err)
		}
		must(s.CreateInstanceCA(ctx, "ca state"))(t)
		if err := s.SetSetting(ctx, "enforce_policy", "false"); err != nil {
			t.Fatal(err)
		}

		got, err := s.Snapshot(ctx, SnapshotFilter{})
		if err != nil {
			t.Fatalf("Snapshot = %v", err)
		}
		want := Snapshot{
			Revision:      revision(t, s),
			Cells:         must(s.Cells(ctx, CellFilter{}))(t),
			Spaces:        must(s.Spaces(ctx, SpaceFilter{}))(t),
			Apps:          must(s.Apps(ctx, AppFilter{}))(t),
			Instances:     must(s.Instances(ctx, InstanceFilter{}))(t),
			Tags:          must(s.Tags(ctx))(t),
			Policies:      must(s.Policies(ctx, PolicyFilter{}))(t),
			Domains:       must(s.Domains(ctx, DomainFilter{}))(t),
			Routes:        must(s.Routes(ctx, RouteFilter{}))(t),
			InstanceCA:    InstanceCA{State: "ca state", Generation: 1},
			HasInstanceCA: true,
		}
		opts := []cmp.Option{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.IgnoreFields(Snapshot{}, "Settings", "PolicyIDs")}
		if diff := cmp.Diff(want, got, opts...); diff != "" {
			t.Errorf("Snapshot (-single reads +snapshot):\n%s", diff)
		}
		if len(got.Cells) != 2 || len(got.Policies) != 2 || len(got.Routes) != 1 || len(got.Routes[0].AppGUIDs) != 1 || len(got.Tags) != 3 {
			t.Errorf("Snapshot = %d cells, %d policies, %d routes, %d tags; want 2, 2, 1 (mapped), 3", len(got.Cells), len(got.Policies), len(got.Routes), len(got.Tags))
		}
		if v := got.Settings["enforce_policy"]; v != "false" {
			t.Errorf("Snapshot settings[enforce_policy] = %q, want false", v)
		}

		// Narrowed to cell2 (backend attached): only the policy to backend.
		// Narrowed to cell1 (frontend placed, not attached): none.
		for cell, want := range map[string][]Policy{c2.GUID: {got.Policies[0]}, c1.GUID: nil} {
			narrow, err := s.Snapshot(ctx, SnapshotFilter{Cells: []string{cell}})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, narrow.Policies, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Snapshot(cell %s) policies (-want +got):\n%s", cell, diff)
			}
			if len(narrow.Instances) != len(got.Instances) || len(narrow.Apps) != len(got.Apps) {
				t.Errorf("Snapshot(cell %s) = %d instances, %d apps; want all %d, %d", cell, len(narrow.Instances), len(narrow.Apps), len(got.Instances), len(got.Apps))
			}
		}
	})
}
