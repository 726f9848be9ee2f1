package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// User is a person who logs in with a name and password. Only a slow hash
// of the password is stored.
type User struct {
	GUID, Name string
	// PasswordHash is the password's hash in PHC string form.
	PasswordHash string
	// Admin users act everywhere; others in their Spaces only.
	Admin                bool
	Spaces               []UserSpace
	CreatedAt, UpdatedAt time.Time
}

// UserSpace is a user's role in a space.
type UserSpace struct {
	SpaceGUID, Role string
}

// UserFilter selects users; empty fields do not filter.
type UserFilter struct{ GUIDs, Names []string }

// CreateUser stores a user, assigning its GUID and times. ErrConflict if
// the name is taken, ErrNotFound if a space is missing. Users are no
// cell's state: writing them does not bump the revision.
func (s *Store) CreateUser(ctx context.Context, u User) (User, error) {
	if u.PasswordHash == "" {
		return User{}, errors.New("create user: empty password hash")
	}
	u.GUID, u.CreatedAt = newGUID(), now()
	u.UpdatedAt = u.CreatedAt
	slices.SortFunc(u.Spaces, func(a, b UserSpace) int { return strings.Compare(a.SpaceGUID, b.SpaceGUID) })
	u.Spaces = slices.CompactFunc(u.Spaces, func(a, b UserSpace) bool { return a.SpaceGUID == b.SpaceGUID })
	if len(u.Spaces) == 0 {
		u.Spaces = nil
	}
	err := s.tokenTx(ctx, func(r runner) error {
		if len(u.Spaces) > 0 {
			guids := make([]string, len(u.Spaces))
			for i, sp := range u.Spaces {
				guids[i] = sp.SpaceGUID
			}
			cond, arg := r.in("guid", guids)
			found, err := r.stringSet(ctx, "SELECT guid FROM spaces WHERE "+cond, arg)
			if err != nil {
				return err
			}
			for _, g := range guids {
				if !found[g] {
					return fmt.Errorf("space %s: %w", g, ErrNotFound)
				}
			}
		}
		n, err := r.execCount(ctx, "INSERT INTO users (guid, name, password_hash, admin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			u.GUID, u.Name, u.PasswordHash, u.Admin, micros(u.CreatedAt), micros(u.UpdatedAt))
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("user %q already exists: %w", u.Name, ErrConflict)
		}
		for _, sp := range u.Spaces {
			if _, err := r.exec(ctx, "INSERT INTO user_spaces (user_guid, space_guid, role) VALUES (?, ?, ?)", u.GUID, sp.SpaceGUID, sp.Role); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return User{}, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

// Users lists users with their spaces, by name.
func (s *Store) Users(ctx context.Context, f UserFilter) ([]User, error) {
	r := s.r()
	conds, args := "1 = 1", []any{}
	if len(f.GUIDs) > 0 {
		c, a := r.in("u.guid", f.GUIDs)
		conds, args = conds+" AND "+c, append(args, a)
	}
	if len(f.Names) > 0 {
		c, a := r.in("u.name", f.Names)
		conds, args = conds+" AND "+c, append(args, a)
	}
	rows, err := r.query(ctx, `SELECT u.guid, u.name, u.password_hash, u.admin, u.created_at, u.updated_at, us.space_guid, us.role
		FROM users u LEFT JOIN user_spaces us ON us.user_guid = u.guid
		WHERE `+conds+` ORDER BY u.name, u.guid, us.space_guid`, args...)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var created, updated int64
		var space, role sql.NullString
		if err := rows.Scan(&u.GUID, &u.Name, &u.PasswordHash, &u.Admin, &created, &updated, &space, &role); err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		sp := UserSpace{SpaceGUID: space.String, Role: role.String}
		if n := len(out); n > 0 && out[n-1].GUID == u.GUID {
			out[n-1].Spaces = append(out[n-1].Spaces, sp)
			continue
		}
		u.CreatedAt, u.UpdatedAt = fromMicros(created), fromMicros(updated)
		if space.Valid {
			u.Spaces = []UserSpace{sp}
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// User returns the user with this GUID. ErrNotFound if there is none.
func (s *Store) User(ctx context.Context, guid string) (User, error) {
	return s.oneUser(ctx, UserFilter{GUIDs: []string{guid}}, guid)
}

// UserByName returns the user with this name. ErrNotFound if there is none.
func (s *Store) UserByName(ctx context.Context, name string) (User, error) {
	return s.oneUser(ctx, UserFilter{Names: []string{name}}, name)
}

func (s *Store) oneUser(ctx context.Context, f UserFilter, what string) (User, error) {
	us, err := s.Users(ctx, f)
	if err != nil {
		return User{}, err
	}
	if len(us) == 0 {
		return User{}, fmt.Errorf("user %q: %w", what, ErrNotFound)
	}
	return us[0], nil
}

// DeleteUser deletes a user: its tokens authenticate nothing from the next
// request on. ErrNotFound if there is no such user.
func (s *Store) DeleteUser(ctx context.Context, guid string) error {
	err := s.tokenTx(ctx, func(r runner) error {
		n, err := r.execCount(ctx, "DELETE FROM users WHERE guid = ?", guid)
		if err == nil && n == 0 {
			err = fmt.Errorf("user %s: %w", guid, ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete user: %w", err)
	}
	return nil
}

// SetUserPassword replaces a user's password hash. ErrNotFound if there is
// no such user.
func (s *Store) SetUserPassword(ctx context.Context, guid, hash string) error {
	if hash == "" {
		return errors.New("set password: empty hash")
	}
	err := s.tokenTx(ctx, func(r runner) error {
		n, err := r.execCount(ctx, "UPDATE users SET password_hash = ?, updated_at = ? WHERE guid = ?", hash, micros(now()), guid)
		if err == nil && n == 0 {
			err = fmt.Errorf("user %s: %w", guid, ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	return nil
}

// EnsureSetting stores value under key unless the key is set already, and
// returns the stored value: the first controller's value wins, so that
// every controller sharing the store agrees (as for a signing key). It does
// not bump the revision.
func (s *Store) EnsureSetting(ctx context.Context, key, value string) (string, error) {
	var out string
	err := s.tokenTx(ctx, func(r runner) error {
		if _, err := r.exec(ctx, "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING", key, value); err != nil {
			return err
		}
		return r.queryRow(ctx, "SELECT value FROM settings WHERE key = ?", key).Scan(&out)
	})
	if err != nil {
		return "", fmt.Errorf("setting %s: %w", key, err)
	}
	return out, nil
}
