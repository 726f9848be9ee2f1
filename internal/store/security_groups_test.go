package store

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
)

func TestSecurityGroups(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		rules := []api.SecurityGroupRule{{Protocol: "tcp", Destination: "203.0.113.10", Ports: "80,443", Log: true, Description: "web"}}
		rev := revision(t, s)
		g, err := s.CreateSecurityGroup(ctx, SecurityGroup{Name: "web", Rules: rules, RunningSpaces: []string{f.space.GUID, f.space.GUID}})
		if err != nil {
			t.Fatalf("CreateSecurityGroup = %v", err)
		}
		if revision(t, s) <= rev {
			t.Errorf("CreateSecurityGroup did not bump the revision")
		}
		if _, err := s.CreateSecurityGroup(ctx, SecurityGroup{Name: "web"}); !errors.Is(err, ErrConflict) {
			t.Errorf("CreateSecurityGroup(same name) = %v, want ErrConflict", err)
		}
		if _, err := s.CreateSecurityGroup(ctx, SecurityGroup{Name: "x", RunningSpaces: []string{"nope"}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("CreateSecurityGroup(missing space) = %v, want ErrNotFound", err)
		}
		got, err := s.SecurityGroup(ctx, g.GUID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(g, got); diff != "" {
			t.Errorf("SecurityGroup(%s) differs from what was created (-created +read):\n%s", g.GUID, diff)
		}

		// Bind the other space for both lifecycles, filter by binding.
		if err := s.BindSecurityGroup(ctx, g.GUID, Running, []string{f.otherSpace.GUID}); err != nil {
			t.Fatalf("BindSecurityGroup = %v", err)
		}
		if err := s.BindSecurityGroup(ctx, g.GUID, Staging, []string{f.otherSpace.GUID}); err != nil {
			t.Fatalf("BindSecurityGroup(staging) = %v", err)
		}
		if err := s.BindSecurityGroup(ctx, "missing", Running, []string{f.space.GUID}); !errors.Is(err, ErrNotFound) {
			t.Errorf("BindSecurityGroup(missing group) = %v, want ErrNotFound", err)
		}
		global, err := s.CreateSecurityGroup(ctx, SecurityGroup{Name: "dns", GlobalRunning: true,
			Rules: []api.SecurityGroupRule{{Protocol: "udp", Destination: "0.0.0.0/0", Ports: "53"}}})
		if err != nil {
			t.Fatal(err)
		}
		yes := true
		for _, c := range []struct {
			f    SecurityGroupFilter
			want []string
		}{
			{SecurityGroupFilter{}, []string{"dns", "web"}},
			{SecurityGroupFilter{GlobalRunning: &yes}, []string{"dns"}},
			{SecurityGroupFilter{RunningSpaces: []string{f.otherSpace.GUID}}, []string{"web"}},
			{SecurityGroupFilter{StagingSpaces: []string{f.space.GUID}}, nil},
			{SecurityGroupFilter{Names: []string{"web"}}, []string{"web"}},
		} {
			gs, err := s.SecurityGroups(ctx, c.f)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, g := range gs {
				names = append(names, g.Name)
			}
			if !cmp.Equal(names, c.want) {
				t.Errorf("SecurityGroups(%+v) = %v, want %v", c.f, names, c.want)
			}
		}

		// Update, unbind, delete.
		name := "web2"
		no := false
		upd, err := s.UpdateSecurityGroup(ctx, g.GUID, SecurityGroupUpdate{Name: &name, GlobalRunning: &no})
		if err != nil || upd.Name != "web2" || len(upd.Rules) != 1 {
			t.Fatalf("UpdateSecurityGroup = %+v, %v", upd, err)
		}
		dup := "dns"
		if _, err := s.UpdateSecurityGroup(ctx, g.GUID, SecurityGroupUpdate{Name: &dup}); !errors.Is(err, ErrConflict) {
			t.Errorf("UpdateSecurityGroup(taken name) = %v, want ErrConflict", err)
		}
		if err := s.UnbindSecurityGroup(ctx, g.GUID, Running, f.space.GUID); err != nil {
			t.Fatalf("UnbindSecurityGroup = %v", err)
		}
		if err := s.UnbindSecurityGroup(ctx, g.GUID, Running, f.space.GUID); !errors.Is(err, ErrNotFound) {
			t.Errorf("UnbindSecurityGroup again = %v, want ErrNotFound", err)
		}
		got, _ = s.SecurityGroup(ctx, g.GUID)
		if want := []string{f.otherSpace.GUID}; !cmp.Equal(got.RunningSpaces, want) || !cmp.Equal(got.StagingSpaces, want) {
			t.Errorf("after unbind: running %v staging %v, want %v both", got.RunningSpaces, got.StagingSpaces, want)
		}
		snap, err := s.Snapshot(ctx, SnapshotFilter{})
		if err != nil || len(snap.SecurityGroups) != 2 {
			t.Errorf("Snapshot security groups = %d, %v; want 2", len(snap.SecurityGroups), err)
		}
		if err := s.DeleteSecurityGroup(ctx, g.GUID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteSecurityGroup(ctx, g.GUID); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteSecurityGroup again = %v, want ErrNotFound", err)
		}
		if _, err := s.SecurityGroup(ctx, global.GUID); err != nil {
			t.Errorf("the other group went too: %v", err)
		}
	})
}
