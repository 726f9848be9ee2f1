package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
)

// CreateToken stores an API token by the SHA-256 hash of its value; the
// value itself is never stored. It assigns t.GUID and t.CreatedAt when they
// are empty and returns the stored token, its SpaceGUIDs sorted.
// ErrNotFound if a space is missing, ErrConflict if the hash (or GUID) is
// taken.
func (s *Store) CreateToken(ctx context.Context, t Token, hash []byte) (Token, error) {
	if len(hash) == 0 {
		return Token{}, errors.New("create token: empty hash")
	}
	if t.GUID == "" {
		t.GUID = newGUID()
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = now()
	} else {
		t.CreatedAt = fromMicros(micros(t.CreatedAt))
	}
	t.SpaceGUIDs = slices.Compact(slices.Sorted(slices.Values(t.SpaceGUIDs)))
	if len(t.SpaceGUIDs) == 0 {
		t.SpaceGUIDs = nil
	}
	err := s.write(ctx, func(r runner) (bool, error) {
		if len(t.SpaceGUIDs) > 0 {
			cond, arg := r.in("guid", t.SpaceGUIDs)
			found, err := r.stringSet(ctx, "SELECT guid FROM spaces WHERE "+cond, arg)
			if err != nil {
				return false, err
			}
			for _, sp := range t.SpaceGUIDs {
				if !found[sp] {
					return false, fmt.Errorf("space %s: %w", sp, ErrNotFound)
				}
			}
		}
		n, err := r.execCount(ctx, "INSERT INTO tokens (guid, name, scope, hash, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			t.GUID, t.Name, t.Scope, hex.EncodeToString(hash), micros(t.CreatedAt))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("token %s: %w", t.GUID, ErrConflict)
		}
		for _, sp := range t.SpaceGUIDs {
			if _, err := r.exec(ctx, "INSERT INTO token_spaces (token_guid, space_guid) VALUES (?, ?)", t.GUID, sp); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return Token{}, fmt.Errorf("create token: %w", err)
	}
	return t, nil
}

// TokenByHash returns the token whose value has this SHA-256 hash.
// ErrNotFound if there is none.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) {
	rows, err := s.r().query(ctx, `SELECT t.guid, t.name, t.scope, t.created_at, ts.space_guid
		FROM tokens t LEFT JOIN token_spaces ts ON ts.token_guid = t.guid
		WHERE t.hash = ? ORDER BY ts.space_guid`, hex.EncodeToString(hash))
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	defer rows.Close()
	var t Token
	found := false
	for rows.Next() {
		var created int64
		var space sql.NullString
		if err := rows.Scan(&t.GUID, &t.Name, &t.Scope, &created, &space); err != nil {
			return Token{}, fmt.Errorf("read token: %w", err)
		}
		found = true
		t.CreatedAt = fromMicros(created)
		if space.Valid {
			t.SpaceGUIDs = append(t.SpaceGUIDs, space.String)
		}
	}
	if err := rows.Err(); err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	if !found {
		return Token{}, fmt.Errorf("token: %w", ErrNotFound)
	}
	return t, nil
}

// Counts returns the number of stored objects by kind; Tags counts the
// assigned ones.
func (s *Store) Counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := s.r().queryRow(ctx, `SELECT
		(SELECT COUNT(*) FROM orgs),
		(SELECT COUNT(*) FROM spaces),
		(SELECT COUNT(*) FROM apps),
		(SELECT COUNT(*) FROM domains),
		(SELECT COUNT(*) FROM routes),
		(SELECT COUNT(*) FROM policies),
		(SELECT COUNT(*) FROM tags WHERE app_guid IS NOT NULL),
		(SELECT COUNT(*) FROM tokens)`).Scan(
		&c.Orgs, &c.Spaces, &c.Apps, &c.Domains, &c.Routes, &c.Policies, &c.Tags, &c.Tokens)
	if err != nil {
		return Counts{}, fmt.Errorf("count objects: %w", err)
	}
	return c, nil
}
