package store

// This file lists the Store's methods with their contracts. It is replaced
// by the implementation.

import "context"

// Store is the SQL store. It is safe for concurrent use.
type Store struct{}

// Open opens (and migrates) the store. url is "postgres://…" or
// "postgresql://…" for PostgreSQL; anything else is a SQLite file path
// (optionally prefixed "sqlite:"). It creates the default org, space and
// apps.internal domain if missing.
func Open(ctx context.Context, url string) (*Store, error) { panic("todo") }

// Close releases the database.
func (s *Store) Close() error { panic("todo") }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { panic("todo") }

// Revision is the current store-wide revision (0 for a new store).
func (s *Store) Revision(ctx context.Context) (int64, error) { panic("todo") }

func (s *Store) CreateOrg(ctx context.Context, name string) (Org, error)       { panic("todo") }
func (s *Store) Orgs(ctx context.Context, f OrgFilter) ([]Org, error)          { panic("todo") }
func (s *Store) CreateSpace(ctx context.Context, orgGUID, name string) (Space, error) {
	panic("todo")
}
func (s *Store) Spaces(ctx context.Context, f SpaceFilter) ([]Space, error)    { panic("todo") }
func (s *Store) CreateApp(ctx context.Context, spaceGUID, name string) (App, error) {
	panic("todo")
}
func (s *Store) Apps(ctx context.Context, f AppFilter) ([]App, error)          { panic("todo") }
func (s *Store) DeleteApp(ctx context.Context, guid string) error              { panic("todo") }
func (s *Store) CreateDomain(ctx context.Context, name string, internal bool) (Domain, error) {
	panic("todo")
}
func (s *Store) Domains(ctx context.Context, f DomainFilter) ([]Domain, error) { panic("todo") }
func (s *Store) CreateRoute(ctx context.Context, domainGUID, host string) (Route, error) {
	panic("todo")
}
func (s *Store) Routes(ctx context.Context, f RouteFilter) ([]Route, error) { panic("todo") }
func (s *Store) DeleteRoute(ctx context.Context, guid string) error          { panic("todo") }
func (s *Store) AddRouteDestinations(ctx context.Context, routeGUID string, appGUIDs []string) (Route, error) {
	panic("todo")
}
func (s *Store) RemoveRouteDestination(ctx context.Context, routeGUID, appGUID string) error {
	panic("todo")
}
func (s *Store) CreatePolicies(ctx context.Context, ps []Policy, o CreatePoliciesOptions) error {
	panic("todo")
}
func (s *Store) DeletePolicies(ctx context.Context, ps []Policy, spaceGUIDs []string) (int, error) {
	panic("todo")
}
func (s *Store) Policies(ctx context.Context, f PolicyFilter) ([]Policy, error) { panic("todo") }
func (s *Store) Tags(ctx context.Context) ([]Tag, error)                         { panic("todo") }
func (s *Store) CreateToken(ctx context.Context, t Token, hash []byte) (Token, error) {
	panic("todo")
}
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) { panic("todo") }
func (s *Store) Counts(ctx context.Context) (Counts, error)                  { panic("todo") }
