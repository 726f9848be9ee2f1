// Package store keeps trellis's desired state — orgs, spaces, apps, domains,
// routes, policies, tags and API tokens — in SQL: embedded SQLite (pure Go,
// WAL) by default, PostgreSQL for controllers that share one database. Both
// run the same embedded migrations. Every mutation bumps one store-wide
// revision number, kept in the database, in the same transaction as the
// change: agents watch it, and any controller sharing the database can serve it.
package store

import (
	"errors"
	"time"
)

// Errors callers branch on. Wrapped errors carry detail; test with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("already exists")
	ErrAppNotFound   = errors.New("one or more applications cannot be found")
	ErrQuotaExceeded = errors.New("policy quota exceeded")
	ErrTagsExhausted = errors.New("tags exhausted: all 65535 policy tags are in use")
	// ErrOtherSpace: a route's destinations must be apps of the route's space.
	ErrOtherSpace = errors.New("app is not in the route's space")
)

// MaxTag is the highest 16-bit policy tag. Tag 0 is never issued: it is the
// "no mark" of the dataplane.
const MaxTag = 65535

// TagQuarantine is how long a freed policy tag (of an app deleted or left
// in no policy) is given to no other app. A cell applies a new state within
// seconds of a change (its long poll answers at once, and it polls at
// least every 30 s), so after this every cell reachable from the
// controller has dropped the old app's rules, and a lagging cell never
// applies them to a new app that got its tag. A cell cut off for longer
// keeps its last state: remove it (trellis delete-cell) before then.
const TagQuarantine = 10 * time.Minute

// Default names: Open creates this org, its space and this internal domain
// if missing.
const (
	DefaultOrg    = "default"
	DefaultSpace  = "default"
	DefaultDomain = "apps.internal"
)

// Org is an organization.
type Org struct {
	GUID, Name           string
	CreatedAt, UpdatedAt time.Time
}

// Space belongs to an org and holds apps.
type Space struct {
	GUID, Name, OrgGUID  string
	CreatedAt, UpdatedAt time.Time
}

// App is an application; its GUID is the policy group.
type App struct {
	GUID, Name, SpaceGUID string
	State                 string // STOPPED or STARTED
	// Instances is how many instances run while STARTED.
	Instances int
	// Command is what an instance runs; empty means the built-in sample app.
	Command []string
	// Env is the app's environment, added to the platform's.
	Env map[string]string
	// CellGUID, if set, pins every instance to that cell.
	CellGUID string
	// RequireClientCert makes the app's port 61443 demand a client
	// certificate from the instance CA.
	RequireClientCert    bool
	CreatedAt, UpdatedAt time.Time
}

// App states.
const (
	AppStopped = "STOPPED"
	AppStarted = "STARTED"
)

// Domain is a DNS domain for routes.
type Domain struct {
	GUID, Name           string
	Internal             bool
	CreatedAt, UpdatedAt time.Time
}

// Route is Host.Domain in a space, mapped to apps of that space.
type Route struct {
	GUID, Host, DomainGUID string
	SpaceGUID              string
	DomainName             string   // filled by reads
	AppGUIDs               []string // destinations, sorted
	CreatedAt, UpdatedAt   time.Time
}

// Policy allows SourceApp to connect to DestApp on Protocol, ports
// StartPort..EndPort inclusive. Tags are filled by reads.
type Policy struct {
	SourceApp, DestApp string
	Protocol           string
	StartPort, EndPort int
	SourceTag, DestTag uint16
}

// Tag is the 16-bit policy tag of an app that takes part in a policy.
type Tag struct {
	AppGUID string
	Tag     uint16
}

// Token is an API credential. Only the SHA-256 of its value is stored.
type Token struct {
	GUID, Name, Scope string
	SpaceGUIDs        []string
	CreatedAt         time.Time
	// ExpiresAt is when the token stops authenticating; zero is never.
	ExpiresAt time.Time
	// LastUsedAt is when the token last authenticated a request, to within
	// TokenTouchInterval; zero is never.
	LastUsedAt time.Time
	// Bootstrap marks the foundation's one bootstrap admin token, the one
	// the controllers' admin.json holds.
	Bootstrap bool
}

// Expired reports whether t no longer authenticates at now.
func (t Token) Expired(now time.Time) bool {
	return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
}

// Filters select rows; empty fields do not filter. Several fields are ANDed;
// the values of one field are ORed.
type (
	OrgFilter    struct{ GUIDs, Names []string }
	SpaceFilter  struct{ GUIDs, Names, OrgGUIDs []string }
	AppFilter    struct{ GUIDs, Names, SpaceGUIDs []string }
	DomainFilter struct{ GUIDs, Names []string }
	RouteFilter  struct{ GUIDs, Hosts, DomainGUIDs, SpaceGUIDs, AppGUIDs []string }
	TokenFilter  struct{ GUIDs []string }
	// PolicyFilter: IDs matches source OR destination; SourceIDs and DestIDs
	// match their side. SpaceGUIDs, when set, keeps only policies whose source
	// and destination apps are both in those spaces (a network.write caller).
	PolicyFilter struct{ IDs, SourceIDs, DestIDs, SpaceGUIDs []string }
)

// CreatePoliciesOptions tune CreatePolicies.
type CreatePoliciesOptions struct {
	// MaxPerSource, when > 0, fails the whole batch with ErrQuotaExceeded if
	// any source app would have more than this many policies afterwards.
	MaxPerSource int
	// SpaceGUIDs, when set, fails with ErrAppNotFound unless every source and
	// destination app is in one of these spaces.
	SpaceGUIDs []string
}

// Counts is the number of stored objects by kind, for metrics.
type Counts struct {
	Orgs, Spaces, Apps, Domains, Routes, Policies, Tags, Tokens int64
}
