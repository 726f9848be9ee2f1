package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The tests run against both engines: SQLite in a temporary directory, and
// PostgreSQL in a fresh database on the server named by
// TRELLIS_TEST_POSTGRES, e.g.
// postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable.

var engines = []string{"sqlite", "postgres"}

// postgresServer returns the PostgreSQL server to test against. Without one,
// it skips the test, or fails it in CI, which must run PostgreSQL.
func postgresServer(t testing.TB) string {
	t.Helper()
	server := os.Getenv("TRELLIS_TEST_POSTGRES")
	if server == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TRELLIS_TEST_POSTGRES is unset: CI must run the PostgreSQL tests")
		}
		t.Skip("TRELLIS_TEST_POSTGRES is unset: set it to a PostgreSQL server URL to test PostgreSQL")
	}
	return server
}

// createPostgresDB creates a uniquely named database on server and returns
// its URL and a function that drops it.
func createPostgresDB(ctx context.Context, server string) (dbURL string, drop func() error, err error) {
	admin, err := sql.Open("pgx", server)
	if err != nil {
		return "", nil, err
	}
	name := "trellis_test_" + strings.ToLower(rand.Text()[:12])
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(server)
	if err != nil {
		admin.Close()
		return "", nil, err
	}
	u.Path = "/" + name
	drop = func() error {
		defer admin.Close()
		_, err := admin.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		return err
	}
	return u.String(), drop, nil
}

// freshURL returns the URL of a new, empty database of engine, removed when
// the test ends.
func freshURL(t testing.TB, engine string) string {
	t.Helper()
	if engine == "sqlite" {
		return filepath.Join(t.TempDir(), "trellis.db")
	}
	dbURL, drop, err := createPostgresDB(t.Context(), postgresServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	return dbURL
}

// openStore opens the store at url, closed when the test ends.
func openStore(t testing.TB, url string) *Store {
	t.Helper()
	s, err := Open(t.Context(), url)
	if err != nil {
		t.Fatalf("Open(%q) = %v", url, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// forEachEngine runs test on each engine with the URL of a fresh database.
func forEachEngine(t *testing.T, test func(t *testing.T, url string)) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) { test(t, freshURL(t, engine)) })
	}
}

// forEachStore runs test on each engine with a fresh store.
func forEachStore(t *testing.T, test func(t *testing.T, s *Store)) {
	forEachEngine(t, func(t *testing.T, url string) { test(t, openStore(t, url)) })
}

// fixture is a store with a few objects, for tests that need them.
type fixture struct {
	s          *Store
	org        Org
	space      Space // the default space
	otherSpace Space
	domain     Domain // apps.internal
}

func newFixture(t *testing.T, s *Store) *fixture {
	t.Helper()
	ctx := t.Context()
	f := &fixture{s: s}
	orgs, err := s.Orgs(ctx, OrgFilter{Names: []string{DefaultOrg}})
	if err != nil || len(orgs) != 1 {
		t.Fatalf("Orgs(default) = %v, %v", orgs, err)
	}
	f.org = orgs[0]
	spaces, err := s.Spaces(ctx, SpaceFilter{OrgGUIDs: []string{f.org.GUID}, Names: []string{DefaultSpace}})
	if err != nil || len(spaces) != 1 {
		t.Fatalf("Spaces(default) = %v, %v", spaces, err)
	}
	f.space = spaces[0]
	f.otherSpace = must(s.CreateSpace(ctx, f.org.GUID, "other"))(t)
	domains, err := s.Domains(ctx, DomainFilter{Names: []string{DefaultDomain}})
	if err != nil || len(domains) != 1 {
		t.Fatalf("Domains(default) = %v, %v", domains, err)
	}
	f.domain = domains[0]
	return f
}

// apps creates apps of those names in the default space and returns their
// GUIDs by name.
func (f *fixture) apps(t *testing.T, names ...string) map[string]string {
	t.Helper()
	return f.appsIn(t, f.space.GUID, names...)
}

func (f *fixture) appsIn(t *testing.T, space string, names ...string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	for _, n := range names {
		m[n] = must(f.s.CreateApp(t.Context(), space, n))(t).GUID
	}
	return m
}

// must returns a function that fails the test if err is not nil and
// otherwise returns v.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func revision(t testing.TB, s *Store) int64 {
	t.Helper()
	rev, err := s.Revision(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func TestOpenCreatesDefaults(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		for i := range 2 { // the second Open finds them
			s := openStore(t, url)
			if rev := revision(t, s); rev != 0 {
				t.Errorf("Open #%d: Revision() = %d, want 0", i+1, rev)
			}
			orgs := must(s.Orgs(ctx, OrgFilter{}))(t)
			if len(orgs) != 1 || orgs[0].Name != DefaultOrg {
				t.Fatalf("Open #%d: Orgs() = %v, want one org %q", i+1, orgs, DefaultOrg)
			}
			spaces := must(s.Spaces(ctx, SpaceFilter{}))(t)
			if len(spaces) != 1 || spaces[0].Name != DefaultSpace || spaces[0].OrgGUID != orgs[0].GUID {
				t.Errorf("Open #%d: Spaces() = %v, want one space %q in org %s", i+1, spaces, DefaultSpace, orgs[0].GUID)
			}
			domains := must(s.Domains(ctx, DomainFilter{}))(t)
			if len(domains) != 1 || domains[0].Name != DefaultDomain || !domains[0].Internal {
				t.Errorf("Open #%d: Domains() = %v, want internal domain %q", i+1, domains, DefaultDomain)
			}
			if err := s.Ping(ctx); err != nil {
				t.Errorf("Ping() = %v", err)
			}
			want := Counts{Orgs: 1, Spaces: 1, Domains: 1}
			if got := must(s.Counts(ctx))(t); got != want {
				t.Errorf("Open #%d: Counts() = %+v, want %+v", i+1, got, want)
			}
			s.Close()
		}
	})
}

func TestOpenSQLitePrefix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trellis.db")
	s := openStore(t, "sqlite:"+path)
	must(s.CreateOrg(t.Context(), "o"))(t)
	s.Close()
	s = openStore(t, path)
	if orgs := must(s.Orgs(t.Context(), OrgFilter{Names: []string{"o"}}))(t); len(orgs) != 1 {
		t.Errorf("Orgs(o) in %s after creating it through sqlite:%s = %v, want it", path, path, orgs)
	}
}

// TestOpenRefusesNewerSchema checks that a trellis does not run on a
// database migrated by a newer one.
func TestOpenRefusesNewerSchema(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		s := openStore(t, url)
		ms := must(migrations())(t)
		var versions []int
		rows := must(s.db.QueryContext(t.Context(), "SELECT version FROM schema_migrations ORDER BY version"))(t)
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			versions = append(versions, v)
		}
		rows.Close()
		if len(versions) != len(ms) || versions[len(versions)-1] != ms[len(ms)-1].version {
			t.Errorf("schema_migrations = %v, want the %d embedded migrations", versions, len(ms))
		}
		newer := ms[len(ms)-1].version + 1
		if _, err := s.r().exec(t.Context(), "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, 0)", newer, "future.sql"); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if s, err := Open(t.Context(), url); err == nil {
			s.Close()
			t.Errorf("Open(database at schema version %d) = nil error, want one", newer)
		}
	})
}

// TestOpenConcurrently starts several stores on one new database at once,
// as controllers sharing a PostgreSQL database may: each migrates or waits,
// and the defaults exist once.
func TestOpenConcurrently(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		const n = 4
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				s, err := Open(t.Context(), url)
				if err == nil {
					s.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Open #%d = %v", i, err)
			}
		}
		s := openStore(t, url)
		want := Counts{Orgs: 1, Spaces: 1, Domains: 1}
		if got := must(s.Counts(t.Context()))(t); got != want {
			t.Errorf("Counts() = %+v, want %+v", got, want)
		}
	})
}

func TestCreateConflicts(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		other := must(s.CreateOrg(ctx, "other"))(t)
		must(s.CreateApp(ctx, f.space.GUID, "web"))(t)
		must(s.CreateDomain(ctx, "example.com", false))(t)
		must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "web"))(t)
		tests := []struct {
			name    string
			create  func() error
			wantErr error
		}{
			{"org", func() error { _, err := s.CreateOrg(ctx, DefaultOrg); return err }, ErrConflict},
			{"space", func() error { _, err := s.CreateSpace(ctx, f.org.GUID, DefaultSpace); return err }, ErrConflict},
			{"space in other org", func() error { _, err := s.CreateSpace(ctx, other.GUID, DefaultSpace); return err }, nil},
			{"app", func() error { _, err := s.CreateApp(ctx, f.space.GUID, "web"); return err }, ErrConflict},
			{"app in other space", func() error { _, err := s.CreateApp(ctx, f.otherSpace.GUID, "web"); return err }, nil},
			{"domain", func() error { _, err := s.CreateDomain(ctx, "Example.COM", true); return err }, ErrConflict},
			{"route", func() error { _, err := s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "WEB"); return err }, ErrConflict},
			{"route in other domain", func() error {
				d := must(s.CreateDomain(ctx, "apps.example", false))(t)
				_, err := s.CreateRoute(ctx, f.space.GUID, d.GUID, "web")
				return err
			}, nil},
		}
		for _, tt := range tests {
			rev := revision(t, s)
			err := tt.create()
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("create %s = %v, want %v", tt.name, err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if got := revision(t, s); got != rev {
					t.Errorf("create %s: revision %d → %d, want unchanged", tt.name, rev, got)
				}
			}
		}
	})
}

func TestMissingParents(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		app := must(s.CreateApp(ctx, f.space.GUID, "web"))(t)
		route := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "web"))(t)
		const missing = "00000000-0000-4000-8000-000000000000"
		tests := []struct {
			name string
			call func() error
		}{
			{"CreateSpace", func() error { _, err := s.CreateSpace(ctx, missing, "s"); return err }},
			{"CreateApp", func() error { _, err := s.CreateApp(ctx, missing, "a"); return err }},
			{"CreateRoute", func() error { _, err := s.CreateRoute(ctx, f.space.GUID, missing, "h"); return err }},
			{"CreateRoute in missing space", func() error { _, err := s.CreateRoute(ctx, missing, f.domain.GUID, "h"); return err }},
			{"DeleteApp", func() error { return s.DeleteApp(ctx, missing) }},
			{"DeleteRoute", func() error { return s.DeleteRoute(ctx, missing) }},
			{"AddRouteDestinations to missing route", func() error {
				_, err := s.AddRouteDestinations(ctx, missing, []string{app.GUID})
				return err
			}},
			{"AddRouteDestinations of missing app", func() error {
				_, err := s.AddRouteDestinations(ctx, route.GUID, []string{app.GUID, missing})
				return err
			}},
			{"RemoveRouteDestination", func() error { return s.RemoveRouteDestination(ctx, route.GUID, app.GUID) }},
			{"CreateToken", func() error {
				_, err := s.CreateToken(ctx, Token{Scope: "network.write", SpaceGUIDs: []string{missing}}, []byte("h"))
				return err
			}},
			{"TokenByHash", func() error { _, err := s.TokenByHash(ctx, []byte("unknown")); return err }},
		}
		for _, tt := range tests {
			rev := revision(t, s)
			if err := tt.call(); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s = %v, want %v", tt.name, err, ErrNotFound)
			}
			if got := revision(t, s); got != rev {
				t.Errorf("%s: revision %d → %d, want unchanged", tt.name, rev, got)
			}
		}
		// The failed AddRouteDestinations mapped nothing.
		rs := must(s.Routes(ctx, RouteFilter{}))(t)
		if len(rs) != 1 || len(rs[0].AppGUIDs) != 0 {
			t.Errorf("Routes() = %v, want one route with no destinations", rs)
		}
	})
}

func TestListFilters(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b")
		o := f.appsIn(t, f.otherSpace.GUID, "a", "c")
		// names lists apps as name@space, sorted: apps of one name come in
		// GUID order.
		names := func(apps []App) []string {
			var out []string
			for _, a := range apps {
				out = append(out, a.Name+"@"+map[string]string{f.space.GUID: "default", f.otherSpace.GUID: "other"}[a.SpaceGUID])
			}
			slices.Sort(out)
			return out
		}
		tests := []struct {
			f    AppFilter
			want []string
		}{
			{AppFilter{}, []string{"a@default", "a@other", "b@default", "c@other"}},
			{AppFilter{Names: []string{"a"}}, []string{"a@default", "a@other"}},
			{AppFilter{Names: []string{"a", "c"}}, []string{"a@default", "a@other", "c@other"}},
			{AppFilter{Names: []string{"a"}, SpaceGUIDs: []string{f.otherSpace.GUID}}, []string{"a@other"}},
			{AppFilter{GUIDs: []string{a["b"], o["c"]}}, []string{"b@default", "c@other"}},
			{AppFilter{GUIDs: []string{a["b"], o["c"]}, Names: []string{"b"}}, []string{"b@default"}},
			{AppFilter{Names: []string{"nope"}}, nil},
		}
		for _, tt := range tests {
			got := names(must(s.Apps(ctx, tt.f))(t))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Apps(%+v) names (-want +got):\n%s", tt.f, diff)
			}
		}
		got := must(s.Apps(ctx, AppFilter{GUIDs: []string{a["a"]}}))(t)
		want := []App{{GUID: a["a"], Name: "a", SpaceGUID: f.space.GUID, State: "STOPPED", Instances: 1}}
		if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(App{}, "CreatedAt", "UpdatedAt")); diff != "" {
			t.Errorf("Apps(a) (-want +got):\n%s", diff)
		}
		if got[0].CreatedAt.Location() != time.UTC || got[0].CreatedAt.IsZero() || !got[0].CreatedAt.Equal(got[0].UpdatedAt) {
			t.Errorf("Apps(a) times = %v, %v, want equal, non-zero, UTC", got[0].CreatedAt, got[0].UpdatedAt)
		}

		// A list longer than either engine's limit on bound parameters.
		long := make([]string, 70000)
		for i := range long {
			long[i] = fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		}
		long[len(long)-1] = a["b"]
		if got := names(must(s.Apps(ctx, AppFilter{GUIDs: long}))(t)); !cmp.Equal(got, []string{"b@default"}) {
			t.Errorf("Apps(70000 GUIDs) = %v, want [b@default]", got)
		}

		spaces := must(s.Spaces(ctx, SpaceFilter{OrgGUIDs: []string{f.org.GUID}, Names: []string{"other", "x"}}))(t)
		if len(spaces) != 1 || spaces[0].GUID != f.otherSpace.GUID {
			t.Errorf("Spaces(other) = %v, want [%v]", spaces, f.otherSpace)
		}
		if orgs := must(s.Orgs(ctx, OrgFilter{GUIDs: []string{f.org.GUID}, Names: []string{"x"}}))(t); len(orgs) != 0 {
			t.Errorf("Orgs(guid AND name x) = %v, want none", orgs)
		}
		if ds := must(s.Domains(ctx, DomainFilter{Names: []string{"APPS.Internal"}}))(t); len(ds) != 1 {
			t.Errorf("Domains(APPS.Internal) = %v, want [%s]", ds, DefaultDomain)
		}
	})
}

func TestRoutes(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		a := f.apps(t, "a", "b", "c")
		web := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "Web"))(t)
		if web.Host != "web" || web.DomainName != DefaultDomain {
			t.Errorf("CreateRoute(Web) = %+v, want host web in %s", web, DefaultDomain)
		}
		api := must(s.CreateRoute(ctx, f.space.GUID, f.domain.GUID, "api"))(t)

		rev := revision(t, s)
		got := must(s.AddRouteDestinations(ctx, web.GUID, []string{a["b"], a["a"], a["b"]}))(t)
		want := sortedStrings(a["a"], a["b"])
		if diff := cmp.Diff(want, got.AppGUIDs); diff != "" {
			t.Errorf("AddRouteDestinations(a, b) destinations (-want +got):\n%s", diff)
		}
		if r := revision(t, s); r != rev+1 {
			t.Errorf("AddRouteDestinations(a, b): revision %d → %d, want +1", rev, r)
		}
		// Again, with nothing new: same answer, no revision.
		got = must(s.AddRouteDestinations(ctx, web.GUID, []string{a["a"]}))(t)
		if diff := cmp.Diff(want, got.AppGUIDs); diff != "" {
			t.Errorf("AddRouteDestinations(a) again: destinations (-want +got):\n%s", diff)
		}
		if r := revision(t, s); r != rev+1 {
			t.Errorf("AddRouteDestinations(a) again: revision %d → %d, want unchanged", rev+1, r)
		}
		must(s.AddRouteDestinations(ctx, api.GUID, []string{a["c"]}))(t)

		// A route's destinations are apps of its space: mapping an app of
		// another space (alone or with one of the route's) changes nothing.
		other := must(s.CreateRoute(ctx, f.otherSpace.GUID, f.domain.GUID, "other"))(t)
		rev = revision(t, s)
		for _, apps := range [][]string{{a["a"]}, {f.appsIn(t, f.otherSpace.GUID, "o")["o"], a["b"]}} {
			rev = revision(t, s)
			if _, err := s.AddRouteDestinations(ctx, other.GUID, apps); !errors.Is(err, ErrOtherSpace) {
				t.Errorf("AddRouteDestinations(other, %v) = %v, want %v", apps, err, ErrOtherSpace)
			}
			if r := revision(t, s); r != rev {
				t.Errorf("AddRouteDestinations(other, %v): revision %d → %d, want unchanged", apps, rev, r)
			}
		}

		tests := []struct {
			f    RouteFilter
			want []Route
		}{
			{RouteFilter{}, []Route{
				{GUID: api.GUID, Host: "api", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: []string{a["c"]}},
				{GUID: other.GUID, Host: "other", DomainGUID: f.domain.GUID, SpaceGUID: f.otherSpace.GUID, DomainName: DefaultDomain},
				{GUID: web.GUID, Host: "web", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: want},
			}},
			{RouteFilter{AppGUIDs: []string{a["a"]}}, []Route{
				{GUID: web.GUID, Host: "web", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: want},
			}},
			{RouteFilter{Hosts: []string{"API"}, DomainGUIDs: []string{f.domain.GUID}}, []Route{
				{GUID: api.GUID, Host: "api", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: []string{a["c"]}},
			}},
			{RouteFilter{GUIDs: []string{web.GUID}, AppGUIDs: []string{a["c"]}}, nil},
			{RouteFilter{SpaceGUIDs: []string{f.otherSpace.GUID}}, []Route{
				{GUID: other.GUID, Host: "other", DomainGUID: f.domain.GUID, SpaceGUID: f.otherSpace.GUID, DomainName: DefaultDomain},
			}},
			{RouteFilter{SpaceGUIDs: []string{f.space.GUID}, Hosts: []string{"other", "api"}}, []Route{
				{GUID: api.GUID, Host: "api", DomainGUID: f.domain.GUID, SpaceGUID: f.space.GUID, DomainName: DefaultDomain, AppGUIDs: []string{a["c"]}},
			}},
		}
		for _, tt := range tests {
			got := must(s.Routes(ctx, tt.f))(t)
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Route{}, "CreatedAt", "UpdatedAt")); diff != "" {
				t.Errorf("Routes(%+v) (-want +got):\n%s", tt.f, diff)
			}
		}

		if err := s.RemoveRouteDestination(ctx, api.GUID, a["c"]); err != nil {
			t.Fatalf("RemoveRouteDestination(api, c) = %v", err)
		}
		if err := s.RemoveRouteDestination(ctx, api.GUID, a["c"]); !errors.Is(err, ErrNotFound) {
			t.Errorf("RemoveRouteDestination(api, c) again = %v, want %v", err, ErrNotFound)
		}
		rs := must(s.Routes(ctx, RouteFilter{GUIDs: []string{api.GUID}}))(t)
		if len(rs) != 1 || rs[0].AppGUIDs != nil {
			t.Errorf("Routes(api) after removing its destination = %+v, want it with none", rs)
		}
		if err := s.DeleteRoute(ctx, web.GUID); err != nil {
			t.Fatalf("DeleteRoute(web) = %v", err)
		}
		if rs := must(s.Routes(ctx, RouteFilter{AppGUIDs: []string{a["a"]}}))(t); len(rs) != 0 {
			t.Errorf("Routes(a) after DeleteRoute(web) = %v, want none", rs)
		}
	})
}

func TestTokens(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		f := newFixture(t, s)
		hash := sha256.Sum256([]byte("trls_secret"))
		in := Token{Name: "ci", Scope: "network.write", SpaceGUIDs: []string{f.space.GUID, f.otherSpace.GUID, f.space.GUID}}
		created, err := s.CreateToken(ctx, in, hash[:])
		if err != nil {
			t.Fatalf("CreateToken(%+v) = %v", in, err)
		}
		want := Token{GUID: created.GUID, Name: "ci", Scope: "network.write", SpaceGUIDs: sortedStrings(f.space.GUID, f.otherSpace.GUID), CreatedAt: created.CreatedAt}
		if diff := cmp.Diff(want, created); diff != "" || created.GUID == "" || created.CreatedAt.IsZero() {
			t.Errorf("CreateToken(%+v) (-want +got):\n%s", in, diff)
		}
		got, err := s.TokenByHash(ctx, hash[:])
		if diff := cmp.Diff(want, got); err != nil || diff != "" {
			t.Errorf("TokenByHash() = %v (-want +got):\n%s", err, diff)
		}
		if _, err := s.CreateToken(ctx, Token{Name: "again", Scope: "network.admin"}, hash[:]); !errors.Is(err, ErrConflict) {
			t.Errorf("CreateToken(same hash) = %v, want %v", err, ErrConflict)
		}
		admin := sha256.Sum256([]byte("trls_admin"))
		must(s.CreateToken(ctx, Token{Name: "admin", Scope: "network.admin"}, admin[:]))(t)
		got, err = s.TokenByHash(ctx, admin[:])
		if err != nil || got.Scope != "network.admin" || got.SpaceGUIDs != nil {
			t.Errorf("TokenByHash(admin) = %+v, %v, want network.admin with no spaces", got, err)
		}
		if c := must(s.Counts(ctx))(t); c.Tokens != 2 {
			t.Errorf("Counts().Tokens = %d, want 2", c.Tokens)
		}
	})
}

func sortedStrings(vals ...string) []string { return slices.Sorted(slices.Values(vals)) }
