package store

import (
	"errors"
	"slices"
	"testing"
)

// TestChangesSince: the change feed carries, for each write, the rows it
// changed as they are now and the keys of those deleted; a reader behind
// the pruned part of the feed, or with too many changes to read, is told
// to read a snapshot; a touch of a cell (no revision bump) records nothing.
func TestChangesSince(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		rev := must(s.Revision(ctx))(t)
		a := f.apps(t, "a", "b")
		c := must(s.ChangesSince(ctx, rev))(t)
		if len(c.Apps) != 2 || c.Revision <= rev || c.From != rev || len(c.Other) != 0 {
			t.Fatalf("after creating 2 apps: %+v", c)
		}
		rev = c.Revision
		if err := s.CreatePolicies(ctx, []Policy{tcp(a["a"], a["b"], 80)}, CreatePoliciesOptions{}); err != nil {
			t.Fatal(err)
		}
		c = must(s.ChangesSince(ctx, rev))(t)
		if len(c.Policies) != 1 || len(c.PolicyIDs) != 1 || len(c.Tags) != 2 || len(c.Apps) != 0 {
			t.Fatalf("after a policy: policies %v ids %v tags %v apps %v", c.Policies, c.PolicyIDs, c.Tags, c.Apps)
		}
		rev = c.Revision
		rt := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "web"))(t)
		if _, err := s.AddRouteDestinations(ctx, rt.GUID, []string{a["b"]}); err != nil {
			t.Fatal(err)
		}
		c = must(s.ChangesSince(ctx, rev))(t)
		if len(c.Routes) != 1 || !slices.Equal(c.Routes[0].AppGUIDs, []string{a["b"]}) {
			t.Fatalf("after a route: %+v", c.Routes)
		}
		rev = c.Revision
		if err := s.DeleteApp(ctx, a["b"]); err != nil {
			t.Fatal(err)
		}
		c = must(s.ChangesSince(ctx, rev))(t)
		if !slices.Equal(c.Deleted["apps"], []string{a["b"]}) || len(c.Deleted["policies"]) != 1 || len(c.Deleted["tags"]) != 2 ||
			len(c.Routes)+len(c.Deleted["routes"]) != 1 {
			t.Fatalf("after deleting app b: deleted %v, routes %v", c.Deleted, c.Routes)
		}
		rev = c.Revision
		if err := s.SetSetting(ctx, "enforce_policy", "false"); err != nil {
			t.Fatal(err)
		}
		c = must(s.ChangesSince(ctx, rev))(t)
		if !slices.Equal(c.Other, []string{"settings"}) {
			t.Fatalf("after a setting: other = %v", c.Other)
		}
		rev = c.Revision
		if c := must(s.ChangesSince(ctx, rev))(t); !c.Empty() || c.Revision != rev {
			t.Fatalf("with no change: %+v", c)
		}

		// Too many, then pruned.
		defer func(kept, max int) { ChangesKept, MaxChanges = kept, max }(ChangesKept, MaxChanges)
		ChangesKept, MaxChanges = 50, 20
		names := make([]string, 100)
		for i := range names {
			names[i] = "x" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		}
		f.apps(t, names[:30]...)
		if _, err := s.ChangesSince(ctx, rev); !errors.Is(err, ErrTooManyChanges) {
			t.Fatalf("30 changes with MaxChanges 20: err = %v, want ErrTooManyChanges", err)
		}
		f.apps(t, names[30:]...) // 100 revisions: the feed is pruned at least once
		if _, err := s.ChangesSince(ctx, rev); !errors.Is(err, ErrChangesPruned) {
			t.Fatalf("after pruning: err = %v, want ErrChangesPruned", err)
		}
		var n int
		if err := s.r().queryRow(ctx, "SELECT COUNT(*) FROM changes").Scan(&n); err != nil || n > ChangesKept+pruneEvery {
			t.Fatalf("changes kept = %d, %v; want at most %d", n, err, ChangesKept+pruneEvery)
		}
		now := must(s.Revision(ctx))(t)
		if _, err := s.ChangesSince(ctx, now+1); !errors.Is(err, ErrChangesPruned) {
			t.Fatalf("a revision ahead of the store: err = %v, want ErrChangesPruned", err)
		}
	})
}

// TestMigrateChanges: a store upgraded to the change feed reads changes
// from the revision it had then, not before (they were not recorded).
func TestMigrateChanges(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		old, err := open(ctx, url, changesVersion-1)
		if err != nil {
			t.Fatal(err)
		}
		f := newFixture(t, old)
		f.apps(t, "before")
		rev := must(old.Revision(ctx))(t)
		old.Close()
		s := openStore(t, url)
		if _, err := s.ChangesSince(ctx, rev-1); !errors.Is(err, ErrChangesPruned) {
			t.Errorf("ChangesSince(before the upgrade) err = %v, want ErrChangesPruned", err)
		}
		f.s = s
		f.apps(t, "after")
		c := must(s.ChangesSince(ctx, rev))(t)
		if len(c.Apps) != 1 || c.Apps[0].Name != "after" {
			t.Errorf("ChangesSince(the upgrade) apps = %v, want the app made after", c.Apps)
		}
	})
}
