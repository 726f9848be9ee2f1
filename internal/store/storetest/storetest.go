// Package storetest gives tests fresh, real stores: SQLite in a temporary
// directory, and PostgreSQL in a new database created on the server named by
// $TRELLIS_TEST_POSTGRES and dropped when the test ends. Without that
// variable PostgreSQL tests are skipped — except in CI (CI=true), where they
// fail, because CI must run them.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL driver for database admin

	"github.com/trellis-c2c/trellis/internal/store"
)

// EnvPostgres names the variable holding an admin URL of a PostgreSQL server
// for tests, e.g. postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable.
const EnvPostgres = "TRELLIS_TEST_POSTGRES"

// Engines are the store engines every store-backed test runs on.
var Engines = []string{"sqlite", "postgres"}

// URL returns the URL of a fresh, empty database of engine for t; it is
// removed when t ends.
func URL(t testing.TB, engine string) string {
	t.Helper()
	switch engine {
	case "sqlite":
		return filepath.Join(t.TempDir(), "trellis.db")
	case "postgres":
		return postgresURL(t)
	}
	t.Fatalf("unknown engine %q", engine)
	return ""
}

// Open opens a fresh store of engine for t, closed when t ends.
func Open(t testing.TB, engine string) *store.Store {
	t.Helper()
	return OpenURL(t, URL(t, engine))
}

// OpenURL opens the store at u, closed when t ends.
func OpenURL(t testing.TB, u string) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, u)
	if err != nil {
		t.Fatalf("store.Open(%s) = %v", u, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// RequirePostgres skips t (or fails it in CI) when no PostgreSQL server is
// configured. Call it from the test's own goroutine before handing URL to
// helpers that run elsewhere.
func RequirePostgres(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvPostgres) != "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("$%s is not set: CI must run the PostgreSQL tests (see .ci/run)", EnvPostgres)
	}
	t.Skipf("$%s is not set: skipping PostgreSQL (set it to a server's admin URL to run)", EnvPostgres)
}

func postgresURL(t testing.TB) string {
	t.Helper()
	RequirePostgres(t)
	admin := os.Getenv(EnvPostgres)
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("open %s: %v", EnvPostgres, err)
	}
	defer db.Close()
	var b [6]byte
	rand.Read(b[:])
	name := "trellis_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", admin)
		if err != nil {
			t.Errorf("drop test database: %v", err)
			return
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("parse %s: %v", EnvPostgres, err)
	}
	u.Path = "/" + name
	return u.String()
}
