package store

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestMigrateRouteSpaces makes a database at schema version 4 (routes of no
// space), with a route whose apps span two spaces, then opens it with this
// trellis: each route gets the space of its oldest app (or the default
// space), the destinations in other spaces are unmapped, and Open reports
// exactly those.
func TestMigrateRouteSpaces(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		old, err := open(ctx, url, routeSpacesVersion-1)
		if err != nil {
			t.Fatalf("open at version %d: %v", routeSpacesVersion-1, err)
		}
		var version int
		if err := old.r().queryRow(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&version); err != nil || version != routeSpacesVersion-1 {
			t.Fatalf("schema version = %d, %v; want %d", version, err, routeSpacesVersion-1)
		}
		f := newFixture(t, old)
		b := must(old.CreateSpace(ctx, f.org.GUID, "b"))(t)
		const (
			a1, a2 = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
			b1     = "00000000-0000-4000-8000-00000000000c"
			shared = "00000000-0000-4000-8000-000000000001"
			onlyA  = "00000000-0000-4000-8000-000000000002"
			empty  = "00000000-0000-4000-8000-000000000003"
		)
		r := old.r()
		for _, app := range []struct {
			guid, space, name string
			created           int64
		}{{a1, f.otherSpace.GUID, "a1", 100}, {a2, f.otherSpace.GUID, "a2", 200}, {b1, b.GUID, "b1", 50}} {
			if _, err := r.exec(ctx, "INSERT INTO apps (guid, space_guid, name, state, created_at, updated_at) VALUES (?, ?, ?, 'STOPPED', ?, ?)",
				app.guid, app.space, app.name, app.created, app.created); err != nil {
				t.Fatal(err)
			}
		}
		for _, host := range []struct{ guid, host string }{{shared, "shared"}, {onlyA, "only-a"}, {empty, "empty"}} {
			if _, err := r.exec(ctx, "INSERT INTO routes (guid, domain_guid, host, created_at, updated_at) VALUES (?, ?, ?, 1, 1)",
				host.guid, f.domain.GUID, host.host); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range [][2]string{{shared, a1}, {shared, b1}, {shared, a2}, {onlyA, a1}, {onlyA, a2}} {
			if _, err := r.exec(ctx, "INSERT INTO route_destinations (route_guid, app_guid) VALUES (?, ?)", d[0], d[1]); err != nil {
				t.Fatal(err)
			}
		}
		rev := revision(t, old)
		old.Close()

		s := openStore(t, url)
		wantReport := []RouteMigration{{RouteGUID: shared, URL: "shared." + DefaultDomain, SpaceGUID: b.GUID, RemovedAppGUIDs: []string{a1, a2}}}
		if diff := cmp.Diff(wantReport, s.RouteMigrations()); diff != "" {
			t.Errorf("RouteMigrations() (-want +got):\n%s", diff)
		}
		wantRoutes := []Route{
			{GUID: empty, Host: "empty", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain},
			{GUID: onlyA, Host: "only-a", DomainGUID: f.domain.GUID, SpaceGUID: f.otherSpace.GUID, DomainName: DefaultDomain, AppGUIDs: []string{a1, a2}},
			{GUID: shared, Host: "shared", DomainGUID: f.domain.GUID, SpaceGUID: b.GUID, DomainName: DefaultDomain, AppGUIDs: []string{b1}},
		}
		if diff := cmp.Diff(wantRoutes, must(s.Routes(ctx, RouteFilter{}))(t), cmpopts.IgnoreFields(Route{}, "CreatedAt", "UpdatedAt")); diff != "" {
			t.Errorf("Routes() after migration (-want +got):\n%s", diff)
		}
		if got := revision(t, s); got != rev+1 {
			t.Errorf("revision after migration = %d, want %d: cells must fetch the changed routes", got, rev+1)
		}

		// Migrated once: opening again reports nothing.
		s.Close()
		if got := openStore(t, url).RouteMigrations(); got != nil {
			t.Errorf("RouteMigrations() on reopening = %v, want none", got)
		}
	})
}

// TestMigrateRouteWithoutSpace: a route with no destination in a database
// with no space at all cannot be given one; the migration deletes and
// reports it rather than leave a route of no space.
func TestMigrateRouteWithoutSpace(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		old, err := open(ctx, url, routeSpacesVersion-1)
		if err != nil {
			t.Fatal(err)
		}
		domain := must(old.Domains(ctx, DomainFilter{Names: []string{DefaultDomain}}))(t)[0]
		const route = "00000000-0000-4000-8000-000000000001"
		for _, q := range []string{"DELETE FROM spaces", "INSERT INTO routes (guid, domain_guid, host, created_at, updated_at) VALUES (?, ?, 'lost', 1, 1)"} {
			var args []any
			if q != "DELETE FROM spaces" {
				args = []any{route, domain.GUID}
			}
			if _, err := old.r().exec(ctx, q, args...); err != nil {
				t.Fatal(err)
			}
		}
		old.Close()

		s := openStore(t, url)
		want := []RouteMigration{{RouteGUID: route, URL: "lost." + DefaultDomain, Deleted: true}}
		if diff := cmp.Diff(want, s.RouteMigrations()); diff != "" {
			t.Errorf("RouteMigrations() (-want +got):\n%s", diff)
		}
		if rs := must(s.Routes(ctx, RouteFilter{}))(t); len(rs) != 0 {
			t.Errorf("Routes() = %v, want none", rs)
		}
	})
}

// TestExtraMigrations plays an upgrade in place: a database made by this
// trellis is opened by a newer build (a migration more, as
// ExtraMigrations), which applies and records it and still reads what was
// there; this build then refuses the newer schema, saying so.
func TestExtraMigrations(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		s, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		t.Cleanup(func() { ExtraMigrations = nil })
		ExtraMigrations = []ExtraMigration{{Version: 9000, Name: "9000_test.sql",
			SQL: "ALTER TABLE policies ADD COLUMN note TEXT NOT NULL DEFAULT '';\nCREATE TABLE upgrade_probe (id BIGINT PRIMARY KEY);"}}
		newer, err := Open(ctx, url)
		if err != nil {
			t.Fatalf("open with a migration more: %v", err)
		}
		var name string
		if err := newer.r().queryRow(ctx, "SELECT name FROM schema_migrations WHERE version = ?", 9000).Scan(&name); err != nil || name != "9000_test.sql" {
			t.Errorf("migration 9000 recorded as %q, %v; want 9000_test.sql", name, err)
		}
		if _, err := newer.Policies(ctx, PolicyFilter{}); err != nil {
			t.Errorf("policies after the migration: %v", err)
		}
		newer.Close()
		ExtraMigrations = nil
		if s, err := Open(ctx, url); err == nil {
			s.Close()
			t.Fatal("this build opened a database of a newer schema")
		} else if !strings.Contains(err.Error(), "newer than this trellis knows") {
			t.Errorf("open a newer schema: %v, want it to say the schema is newer", err)
		}
	})
}
