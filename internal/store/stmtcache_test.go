package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestStatementCache: on SQLite, the store's queries run through prepared
// statements kept by query text, inside transactions and outside, with the
// same results as unprepared ones; past its bound the cache stops growing
// and queries still run; a query that does not prepare fails with its own
// error; Close empties the cache.
func TestStatementCache(t *testing.T) {
	ctx := t.Context()
	s := openStore(t, filepath.Join(t.TempDir(), "trellis.db"))
	if s.stmts == nil {
		t.Fatal("a SQLite store has no statement cache")
	}
	// The same write twice (two transactions on whichever connections the
	// pool gives) and the same read twice: both through the cache.
	for _, name := range []string{"one", "two"} {
		if _, err := s.CreateOrg(ctx, name); err != nil {
			t.Fatalf("CreateOrg(%s) = %v", name, err)
		}
		orgs, err := s.Orgs(ctx, OrgFilter{Names: []string{name}})
		if err != nil || len(orgs) != 1 || orgs[0].Name != name {
			t.Fatalf("Orgs(%s) = %v, %v; want the org", name, orgs, err)
		}
	}
	if _, err := s.CreateOrg(ctx, "one"); !errors.Is(err, ErrConflict) {
		t.Errorf("CreateOrg(one) again = %v, want ErrConflict", err)
	}
	n := len(s.stmts.m)
	if n == 0 {
		t.Fatal("no statement was cached")
	}
	cached := func(part string) bool {
		for q := range s.stmts.m {
			if strings.Contains(q, part) {
				return true
			}
		}
		return false
	}
	if !cached("INSERT INTO orgs") || !cached("FROM orgs") {
		t.Errorf("the cache holds %d statements, without the org insert (in a transaction) or the org list", n)
	}

	// Full: new queries run unprepared, and the cache stays at its bound.
	s.stmts.max = n
	for i := range 3 {
		var got int
		if err := s.r().queryRow(ctx, fmt.Sprintf("SELECT %d", i)).Scan(&got); err != nil || got != i {
			t.Errorf("SELECT %d past the bound = %d, %v", i, got, err)
		}
	}
	if len(s.stmts.m) != n {
		t.Errorf("past the bound of %d the cache grew to %d", n, len(s.stmts.m))
	}
	s.stmts.max = maxCachedStmts

	// A query that does not prepare fails as it would unprepared.
	var x int
	err := s.r().queryRow(ctx, "SELECT x FROM no_such_table").Scan(&x)
	if err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Errorf("a query of a missing table = %v, want its error", err)
	}

	s.Close()
	if len(s.stmts.m) != 0 {
		t.Errorf("after Close the cache holds %d statements", len(s.stmts.m))
	}
}

// TestStatementCacheNotOnPostgres: PostgreSQL's queries are prepared by
// pgx on each connection; the store keeps no cache of its own there.
func TestStatementCacheNotOnPostgres(t *testing.T) {
	s := openStore(t, freshURL(t, "postgres"))
	if s.stmts != nil {
		t.Error("a PostgreSQL store has a statement cache")
	}
	if _, err := s.CreateOrg(t.Context(), "one"); err != nil {
		t.Fatalf("CreateOrg = %v", err)
	}
}
