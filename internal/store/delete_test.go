package store

import (
	"errors"
	"testing"
)

// TestDeleteSpaceAndOrg checks that an empty space goes with its routes,
// that a space with apps or with a token scoped to it stays (ErrConflict,
// revision unchanged), and that an org goes with its spaces only when all
// of them may.
func TestDeleteSpaceAndOrg(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		org := must(s.CreateOrg(ctx, "o"))(t)
		empty := must(s.CreateSpace(ctx, org.GUID, "empty"))(t)
		rt := must(s.CreateRoute(ctx, empty.GUID, f.domain.GUID, "r"))(t)
		withApp := must(s.CreateSpace(ctx, org.GUID, "app"))(t)
		app := must(s.CreateApp(ctx, withApp.GUID, "a"))(t)
		withToken := must(s.CreateSpace(ctx, org.GUID, "token"))(t)
		tok := must(s.CreateToken(ctx, Token{Name: "t", Scope: "network.write", SpaceGUIDs: []string{withToken.GUID}}, []byte("hash-of-t")))(t)
		withUser := must(s.CreateSpace(ctx, org.GUID, "user"))(t)
		user := must(s.CreateUser(ctx, User{Name: "u", PasswordHash: "$argon2id$x", Spaces: []UserSpace{{SpaceGUID: withUser.GUID, Role: "developer"}}}))(t)

		for _, c := range []struct {
			name string
			del  func() error
			want error
		}{
			{"space with an app", func() error { return s.DeleteSpace(ctx, withApp.GUID) }, ErrConflict},
			{"space with a token", func() error { return s.DeleteSpace(ctx, withToken.GUID) }, ErrConflict},
			{"space with a user", func() error { return s.DeleteSpace(ctx, withUser.GUID) }, ErrConflict},
			{"org with such spaces", func() error { return s.DeleteOrg(ctx, org.GUID) }, ErrConflict},
			{"missing space", func() error { return s.DeleteSpace(ctx, "00000000-0000-4000-8000-000000000000") }, ErrNotFound},
			{"missing org", func() error { return s.DeleteOrg(ctx, "00000000-0000-4000-8000-000000000000") }, ErrNotFound},
		} {
			rev := revision(t, s)
			if err := c.del(); !errors.Is(err, c.want) {
				t.Errorf("delete %s = %v, want %v", c.name, err, c.want)
			}
			if got := revision(t, s); got != rev {
				t.Errorf("delete %s: revision %d → %d, want unchanged", c.name, rev, got)
			}
		}

		if err := s.DeleteSpace(ctx, empty.GUID); err != nil {
			t.Fatalf("delete empty space: %v", err)
		}
		if rts := must(s.Routes(ctx, RouteFilter{GUIDs: []string{rt.GUID}}))(t); len(rts) != 0 {
			t.Errorf("route of a deleted space: %v", rts)
		}
		if err := s.DeleteApp(ctx, app.GUID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteToken(ctx, tok.GUID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteUser(ctx, user.GUID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteOrg(ctx, org.GUID); err != nil {
			t.Fatalf("delete org: %v", err)
		}
		if sps := must(s.Spaces(ctx, SpaceFilter{OrgGUIDs: []string{org.GUID}}))(t); len(sps) != 0 {
			t.Errorf("spaces of a deleted org: %v", sps)
		}
		if orgs := must(s.Orgs(ctx, OrgFilter{GUIDs: []string{org.GUID}}))(t); len(orgs) != 0 {
			t.Errorf("deleted org still listed: %v", orgs)
		}
	})
}
