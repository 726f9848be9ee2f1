package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"
)

// TokenTouchInterval is how stale a token's LastUsedAt may get: TouchToken
// writes it at most once per interval, so that authenticating is not a
// database write per request.
const TokenTouchInterval = time.Minute

// CreateToken stores an API token by the SHA-256 hash of its value; the
// value itself is never stored. It assigns t.GUID and t.CreatedAt when they
// are empty and returns the stored token, its SpaceGUIDs sorted.
// ErrNotFound if a space is missing, ErrConflict if the hash (or GUID) is
// taken, or if t.Bootstrap and the store already has a bootstrap token.
// Tokens are not part of any cell's state: writing them does not bump the
// revision.
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
	if !t.ExpiresAt.IsZero() {
		t.ExpiresAt = fromMicros(micros(t.ExpiresAt))
	}
	t.LastUsedAt = time.Time{}
	t.SpaceGUIDs = slices.Compact(slices.Sorted(slices.Values(t.SpaceGUIDs)))
	if len(t.SpaceGUIDs) == 0 {
		t.SpaceGUIDs = nil
	}
	err := s.tokenTx(ctx, func(r runner) error { return insertToken(ctx, r, t, hash) })
	if err != nil {
		return Token{}, fmt.Errorf("create token: %w", err)
	}
	return t, nil
}

func insertToken(ctx context.Context, r runner, t Token, hash []byte) error {
	if len(t.SpaceGUIDs) > 0 {
		cond, arg := r.in("guid", t.SpaceGUIDs)
		found, err := r.stringSet(ctx, "SELECT guid FROM spaces WHERE "+cond, arg)
		if err != nil {
			return err
		}
		for _, sp := range t.SpaceGUIDs {
			if !found[sp] {
				return fmt.Errorf("space %s: %w", sp, ErrNotFound)
			}
		}
	}
	var expires sql.NullInt64
	if !t.ExpiresAt.IsZero() {
		expires = sql.NullInt64{Int64: micros(t.ExpiresAt), Valid: true}
	}
	n, err := r.execCount(ctx, "INSERT INTO tokens (guid, name, scope, hash, created_at, expires_at, bootstrap) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
		t.GUID, t.Name, t.Scope, hex.EncodeToString(hash), micros(t.CreatedAt), expires, t.Bootstrap)
	if err != nil {
		return err
	}
	if n == 0 {
		if t.Bootstrap {
			return fmt.Errorf("bootstrap admin token: %w", ErrConflict)
		}
		return fmt.Errorf("token %s: %w", t.GUID, ErrConflict)
	}
	for _, sp := range t.SpaceGUIDs {
		if _, err := r.exec(ctx, "INSERT INTO token_spaces (token_guid, space_guid) VALUES (?, ?)", t.GUID, sp); err != nil {
			return err
		}
	}
	return nil
}

// tokenTx runs fn in a write transaction that does not bump the revision:
// tokens are no cell's state, so their changes must not wake watchers.
func (s *Store) tokenTx(ctx context.Context, fn func(r runner) error) error {
	tx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback() // no-op after Commit
	if err := fn(s.tx(tx)); err != nil {
		return err
	}
	return tx.Commit()
}

// TokenByHash returns the token whose value has this SHA-256 hash, expired
// or not. ErrNotFound if there is none.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) {
	ts, err := tokens(ctx, s.r(), "t.hash = ?", hex.EncodeToString(hash))
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	if len(ts) == 0 {
		return Token{}, fmt.Errorf("token: %w", ErrNotFound)
	}
	return ts[0], nil
}

// Tokens lists tokens, expired ones included, oldest first.
func (s *Store) Tokens(ctx context.Context, f TokenFilter) ([]Token, error) {
	r := s.r()
	cond, arg := "1 = 1", any(nil)
	if len(f.GUIDs) > 0 {
		cond, arg = r.in("t.guid", f.GUIDs)
	}
	var args []any
	if arg != nil {
		args = append(args, arg)
	}
	ts, err := tokens(ctx, r, cond, args...)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return ts, nil
}

// tokens reads the tokens matching cond, with their spaces, ordered by
// creation.
func tokens(ctx context.Context, r runner, cond string, args ...any) ([]Token, error) {
	rows, err := r.query(ctx, `SELECT t.guid, t.name, t.scope, t.created_at, t.expires_at, t.last_used_at, t.bootstrap, ts.space_guid
		FROM tokens t LEFT JOIN token_spaces ts ON ts.token_guid = t.guid
		WHERE `+cond+` ORDER BY t.created_at, t.guid, ts.space_guid`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var created int64
		var expires, used sql.NullInt64
		var space sql.NullString
		if err := rows.Scan(&t.GUID, &t.Name, &t.Scope, &created, &expires, &used, &t.Bootstrap, &space); err != nil {
			return nil, err
		}
		if n := len(out); n > 0 && out[n-1].GUID == t.GUID {
			out[n-1].SpaceGUIDs = append(out[n-1].SpaceGUIDs, space.String)
			continue
		}
		t.CreatedAt = fromMicros(created)
		if expires.Valid {
			t.ExpiresAt = fromMicros(expires.Int64)
		}
		if used.Valid {
			t.LastUsedAt = fromMicros(used.Int64)
		}
		if space.Valid {
			t.SpaceGUIDs = []string{space.String}
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteToken revokes a token: it authenticates nothing from the next
// request on, on every controller sharing the store. ErrNotFound if there
// is no such token.
func (s *Store) DeleteToken(ctx context.Context, guid string) error {
	err := s.tokenTx(ctx, func(r runner) error {
		n, err := r.execCount(ctx, "DELETE FROM tokens WHERE guid = ?", guid)
		if err == nil && n == 0 {
			err = fmt.Errorf("token %s: %w", guid, ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete token: %w", err)
	}
	return nil
}

// TouchToken records that a token was used now, unless it was already
// recorded less than TokenTouchInterval ago. It does not bump the revision.
func (s *Store) TouchToken(ctx context.Context, guid string) error {
	t := now()
	_, err := s.r().exec(ctx, "UPDATE tokens SET last_used_at = ? WHERE guid = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
		micros(t), guid, micros(t.Add(-TokenTouchInterval)))
	if err != nil {
		return fmt.Errorf("record token use: %w", err)
	}
	return nil
}

// RotateBootstrapToken replaces the bootstrap admin token (if any) by a new
// one, t, whose value has this hash, in one transaction: the old value
// authenticates nothing from the next request on. It returns the new token
// as CreateToken does, with Bootstrap set.
func (s *Store) RotateBootstrapToken(ctx context.Context, t Token, hash []byte) (Token, error) {
	if len(hash) == 0 {
		return Token{}, errors.New("rotate bootstrap token: empty hash")
	}
	t.GUID, t.CreatedAt, t.LastUsedAt, t.Bootstrap = newGUID(), now(), time.Time{}, true
	if !t.ExpiresAt.IsZero() {
		t.ExpiresAt = fromMicros(micros(t.ExpiresAt))
	}
	t.SpaceGUIDs = slices.Compact(slices.Sorted(slices.Values(t.SpaceGUIDs)))
	if len(t.SpaceGUIDs) == 0 {
		t.SpaceGUIDs = nil
	}
	err := s.tokenTx(ctx, func(r runner) error {
		if _, err := r.exec(ctx, "DELETE FROM tokens WHERE bootstrap"); err != nil {
			return err
		}
		return insertToken(ctx, r, t, hash)
	})
	if err != nil {
		return Token{}, fmt.Errorf("rotate bootstrap token: %w", err)
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
