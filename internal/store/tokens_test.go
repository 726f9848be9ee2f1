package store

import (
	"crypto/sha256"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func tokenHash(value string) []byte {
	h := sha256.Sum256([]byte(value))
	return h[:]
}

// TestTokenLifecycle: tokens are listed with their expiry and last use,
// revoked, and none of it bumps the revision that wakes cells.
func TestTokenLifecycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		spaces := must(s.Spaces(ctx, SpaceFilter{}))(t)
		rev := must(s.Revision(ctx))(t)
		expires := time.Now().Add(time.Hour)
		w := must(s.CreateToken(ctx, Token{Name: "ci", Scope: "network.write", SpaceGUIDs: []string{spaces[0].GUID}, ExpiresAt: expires}, tokenHash("w")))(t)
		a := must(s.CreateToken(ctx, Token{Name: "ops", Scope: "network.admin"}, tokenHash("a")))(t)
		if got := must(s.Revision(ctx))(t); got != rev {
			t.Errorf("revision after CreateToken = %d, want %d (tokens are no cell's state)", got, rev)
		}
		got := must(s.Tokens(ctx, TokenFilter{}))(t)
		if diff := cmp.Diff([]Token{w, a}, got); diff != "" {
			t.Errorf("Tokens() mismatch (-want +got):\n%s", diff)
		}
		if !got[0].ExpiresAt.Equal(expires.Truncate(time.Microsecond)) || !got[1].ExpiresAt.IsZero() {
			t.Errorf("Tokens() expiries = %v, %v, want %v and never", got[0].ExpiresAt, got[1].ExpiresAt, expires)
		}
		if one := must(s.Tokens(ctx, TokenFilter{GUIDs: []string{a.GUID}}))(t); len(one) != 1 || one[0].GUID != a.GUID {
			t.Errorf("Tokens(GUIDs: %s) = %+v, want that token alone", a.GUID, one)
		}

		// Last use: recorded on the first touch, not rewritten within the interval.
		if err := s.TouchToken(ctx, w.GUID); err != nil {
			t.Fatal(err)
		}
		first := must(s.TokenByHash(ctx, tokenHash("w")))(t).LastUsedAt
		if first.IsZero() || time.Since(first) > time.Minute {
			t.Errorf("LastUsedAt after TouchToken = %v, want now", first)
		}
		if err := s.TouchToken(ctx, w.GUID); err != nil {
			t.Fatal(err)
		}
		if again := must(s.TokenByHash(ctx, tokenHash("w")))(t).LastUsedAt; !again.Equal(first) {
			t.Errorf("LastUsedAt after a second touch within %v = %v, want %v kept", TokenTouchInterval, again, first)
		}
		old := micros(time.Now().Add(-2 * TokenTouchInterval))
		must(s.r().exec(ctx, "UPDATE tokens SET last_used_at = ? WHERE guid = ?", old, w.GUID))(t)
		if err := s.TouchToken(ctx, w.GUID); err != nil {
			t.Fatal(err)
		}
		if moved := must(s.TokenByHash(ctx, tokenHash("w")))(t).LastUsedAt; micros(moved) <= old {
			t.Errorf("LastUsedAt after a touch %v later = %v, want it moved", 2*TokenTouchInterval, moved)
		}

		// Revoke.
		if err := s.DeleteToken(ctx, w.GUID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TokenByHash(ctx, tokenHash("w")); !errors.Is(err, ErrNotFound) {
			t.Errorf("TokenByHash(revoked) = %v, want ErrNotFound", err)
		}
		if err := s.DeleteToken(ctx, w.GUID); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeleteToken(revoked) = %v, want ErrNotFound", err)
		}
		if got := must(s.Revision(ctx))(t); got != rev {
			t.Errorf("revision after touching and revoking tokens = %d, want %d", got, rev)
		}
	})
}

// TestBootstrapToken: a store holds one bootstrap admin token; a second
// (a second controller's) is refused, and rotating replaces it.
func TestBootstrapToken(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		s1, s2 := openStore(t, url), openStore(t, url)
		first := must(s1.CreateToken(ctx, Token{Name: "admin", Scope: "network.admin", Bootstrap: true}, tokenHash("b1")))(t)
		if _, err := s2.CreateToken(ctx, Token{Name: "admin", Scope: "network.admin", Bootstrap: true}, tokenHash("b2")); !errors.Is(err, ErrConflict) {
			t.Errorf("second bootstrap token = %v, want ErrConflict", err)
		}
		rotated := must(s2.RotateBootstrapToken(ctx, Token{Name: "admin", Scope: "network.admin"}, tokenHash("b3")))(t)
		if !rotated.Bootstrap || rotated.GUID == first.GUID {
			t.Errorf("RotateBootstrapToken = %+v, want a new bootstrap token", rotated)
		}
		if _, err := s1.TokenByHash(ctx, tokenHash("b1")); !errors.Is(err, ErrNotFound) {
			t.Errorf("TokenByHash(rotated-out token) on another store = %v, want ErrNotFound", err)
		}
		if got := must(s1.TokenByHash(ctx, tokenHash("b3")))(t); got.GUID != rotated.GUID || !got.Bootstrap {
			t.Errorf("TokenByHash(new bootstrap token) = %+v, want %+v", got, rotated)
		}
	})
}

// TestTokenExpiryMigration migrates a database of the schema before
// 0006_token_expiry.sql: write tokens expire 30 days after the upgrade,
// admin tokens never, and the oldest "admin" admin token becomes the
// bootstrap one.
func TestTokenExpiryMigration(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		pg := !strings.HasPrefix(url, "/")
		driver, dsn := "sqlite", url+"?"+sqliteParams
		if pg {
			driver, dsn = "pgx", url
		}
		db := must(sql.Open(driver, dsn))(t)
		r := runner{q: db, pg: pg}
		must(r.exec(ctx, "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"))(t)
		for _, m := range must(migrations())(t) {
			if m.version >= 6 {
				break
			}
			must(db.ExecContext(ctx, strings.ReplaceAll(m.sql, "{{autoid}}", autoID[pg])))(t)
			must(r.exec(ctx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, 0)", m.version, m.name))(t)
		}
		for _, tok := range [][3]any{{"w", "network.write", 1}, {"a1", "network.admin", 2}, {"a2", "network.admin", 3}, {"ops", "network.admin", 0}} {
			must(r.exec(ctx, "INSERT INTO tokens (guid, name, scope, hash, created_at) VALUES (?, ?, ?, ?, ?)",
				tok[0], map[bool]string{true: "admin", false: tok[0].(string)}[strings.HasPrefix(tok[0].(string), "a")], tok[1], tok[0], tok[2]))(t)
		}
		db.Close()

		before := time.Now()
		s := openStore(t, url)
		got := map[string]Token{}
		for _, tok := range must(s.Tokens(ctx, TokenFilter{}))(t) {
			got[tok.GUID] = tok
		}
		if exp := got["w"].ExpiresAt; exp.Before(before.Add(30*24*time.Hour-time.Second)) || exp.After(time.Now().Add(30*24*time.Hour)) {
			t.Errorf("migrated write token expires at %v, want 30 days after the upgrade", exp)
		}
		for _, g := range []string{"a1", "a2", "ops"} {
			if !got[g].ExpiresAt.IsZero() || !got[g].LastUsedAt.IsZero() {
				t.Errorf("migrated admin token %s = %+v, want no expiry and never used", g, got[g])
			}
			if want := g == "a1"; got[g].Bootstrap != want {
				t.Errorf("migrated admin token %s: Bootstrap = %v, want %v", g, got[g].Bootstrap, want)
			}
		}
	})
}
