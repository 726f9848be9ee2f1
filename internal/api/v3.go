package api

import "time"

// The types below are shaped like Cloud Foundry's v3 API (/v3/apps,
// /v3/spaces, ...), trimmed to what trellis uses.

// Pagination is v3's list envelope header. trellis returns every matching
// resource in one page.
type Pagination struct {
	TotalResults int   `json:"total_results"`
	TotalPages   int   `json:"total_pages"`
	First        Link  `json:"first"`
	Last         Link  `json:"last"`
	Next         *Link `json:"next"`
	Previous     *Link `json:"previous"`
}

// Link is a v3 hyperlink.
type Link struct {
	Href string `json:"href"`
}

// List is a v3 list response.
type List[T any] struct {
	Pagination Pagination `json:"pagination"`
	Resources  []T        `json:"resources"`
}

// Ref names another resource by GUID.
type Ref struct {
	GUID string `json:"guid"`
}

// ToOne is a v3 to-one relationship.
type ToOne struct {
	Data Ref `json:"data"`
}

// Organization is an org: the top of the org/space tree.
type Organization struct {
	GUID      string    `json:"guid"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// SpaceRelationships links a space to its org.
type SpaceRelationships struct {
	Organization ToOne `json:"organization"`
}

// Space groups apps; network.write tokens are scoped to spaces.
type Space struct {
	GUID          string             `json:"guid"`
	Name          string             `json:"name"`
	CreatedAt     time.Time          `json:"created_at"`
	UpdatedAt     time.Time          `json:"updated_at"`
	Relationships SpaceRelationships `json:"relationships"`
}

// AppRelationships links an app to its space.
type AppRelationships struct {
	Space ToOne `json:"space"`
}

// App is an application: the unit that policies and routes name.
type App struct {
	GUID          string           `json:"guid"`
	Name          string           `json:"name"`
	State         string           `json:"state"`
	Instances     int              `json:"instances"`         // trellis: desired while STARTED
	Command       []string         `json:"command,omitempty"` // trellis: empty = sample app
	CellGUID      string           `json:"cell_guid,omitempty"`
	CreatedAt     time.Time        `json:"created_at"`
	UpdatedAt     time.Time        `json:"updated_at"`
	Relationships AppRelationships `json:"relationships"`
}

// Domain is a DNS domain that routes live under. Internal domains
// (apps.internal) are served only to containers on the overlay.
type Domain struct {
	GUID      string    `json:"guid"`
	Name      string    `json:"name"`
	Internal  bool      `json:"internal"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// RouteRelationships links a route to its domain and to the space it
// belongs to: its destinations are apps of that space, and only tokens of
// that space (and admins) see and manage it.
type RouteRelationships struct {
	Domain ToOne `json:"domain"`
	Space  ToOne `json:"space"`
}

// RouteDestination is one app a route sends to.
type RouteDestination struct {
	GUID string `json:"guid,omitempty"`
	App  Ref    `json:"app"`
}

// Route is HOST.DOMAIN in a space, mapped to apps of that space.
type Route struct {
	GUID          string             `json:"guid"`
	Host          string             `json:"host"`
	URL           string             `json:"url"`
	CreatedAt     time.Time          `json:"created_at"`
	UpdatedAt     time.Time          `json:"updated_at"`
	Destinations  []RouteDestination `json:"destinations"`
	Relationships RouteRelationships `json:"relationships"`
}

// RouteDestinations is the body of POST /v3/routes/:guid/destinations and
// its answer.
type RouteDestinations struct {
	Destinations []RouteDestination `json:"destinations"`
}

// V3Error is one entry of a v3 error response.
type V3Error struct {
	Detail string `json:"detail"`
	Title  string `json:"title"`
	Code   int    `json:"code"`
}

// V3Errors is the body of every non-2xx answer of the v3 API.
type V3Errors struct {
	Errors []V3Error `json:"errors"`
}

// Token is an API token as the admin creates it (POST /trellis/v1/tokens)
// and as GET /trellis/v1/tokens lists it. Value is returned once, at
// creation (or admin token rotation); the controller stores only a hash and
// never lists it.
type Token struct {
	GUID      string    `json:"guid"`
	Name      string    `json:"name,omitempty"`
	Scope     string    `json:"scope"`
	Spaces    []string  `json:"space_guids,omitempty"`
	Value     string    `json:"token,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when the token stops working; null is never.
	ExpiresAt *time.Time `json:"expires_at"`
	// LastUsedAt is when the token last authenticated a request, to within
	// a minute; null is never.
	LastUsedAt *time.Time `json:"last_used_at"`
	// Bootstrap marks the foundation's bootstrap admin token, the one the
	// controllers' admin.json holds (rotate-admin-token replaces it).
	Bootstrap bool `json:"bootstrap,omitempty"`
}
