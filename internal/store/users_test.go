package store

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestUserLifecycle: users are created with their spaces, found by name and
// GUID, refused a taken name or a missing space, get a new password hash,
// are deleted, and none of it bumps the revision that wakes cells.
func TestUserLifecycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		spaces := must(s.Spaces(ctx, SpaceFilter{}))(t)
		rev := must(s.Revision(ctx))(t)
		dev := must(s.CreateUser(ctx, User{Name: "dev", PasswordHash: "h1",
			Spaces: []UserSpace{{SpaceGUID: spaces[0].GUID, Role: "developer"}, {SpaceGUID: spaces[0].GUID, Role: "developer"}}}))(t)
		admin := must(s.CreateUser(ctx, User{Name: "admin", PasswordHash: "h2", Admin: true}))(t)
		if got := must(s.Revision(ctx))(t); got != rev {
			t.Errorf("revision after CreateUser = %d, want %d (users are no cell's state)", got, rev)
		}
		if len(dev.Spaces) != 1 {
			t.Errorf("CreateUser kept duplicate spaces: %+v", dev.Spaces)
		}
		if diff := cmp.Diff([]User{admin, dev}, must(s.Users(ctx, UserFilter{}))(t)); diff != "" {
			t.Errorf("Users() mismatch (-want +got):\n%s", diff)
		}
		if got := must(s.UserByName(ctx, "dev"))(t); got.GUID != dev.GUID || got.PasswordHash != "h1" {
			t.Errorf("UserByName(dev) = %+v, want %+v", got, dev)
		}
		if _, err := s.CreateUser(ctx, User{Name: "dev", PasswordHash: "x"}); !errors.Is(err, ErrConflict) {
			t.Errorf("CreateUser(taken name) = %v, want ErrConflict", err)
		}
		if _, err := s.CreateUser(ctx, User{Name: "x", PasswordHash: "x", Spaces: []UserSpace{{SpaceGUID: "no-such-space", Role: "developer"}}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("CreateUser(missing space) = %v, want ErrNotFound", err)
		}
		if _, err := s.UserByName(ctx, "x"); !errors.Is(err, ErrNotFound) {
			t.Errorf("a refused CreateUser left user x behind: %v", err)
		}
		if err := s.SetUserPassword(ctx, dev.GUID, "h3"); err != nil {
			t.Fatal(err)
		}
		if got := must(s.User(ctx, dev.GUID))(t); got.PasswordHash != "h3" {
			t.Errorf("password hash after SetUserPassword = %q, want h3", got.PasswordHash)
		}
		if err := s.DeleteUser(ctx, dev.GUID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.User(ctx, dev.GUID); !errors.Is(err, ErrNotFound) {
			t.Errorf("User(deleted) = %v, want ErrNotFound", err)
		}
		if err := s.DeleteUser(ctx, dev.GUID); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteUser(deleted) = %v, want ErrNotFound", err)
		}
		if err := s.SetUserPassword(ctx, dev.GUID, "h"); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetUserPassword(deleted) = %v, want ErrNotFound", err)
		}
		first := must(s.EnsureSetting(ctx, "k", "one"))(t)
		second := must(s.EnsureSetting(ctx, "k", "two"))(t)
		if first != "one" || second != "one" {
			t.Errorf("EnsureSetting = %q then %q, want one both times (the first value wins)", first, second)
		}
	})
}
