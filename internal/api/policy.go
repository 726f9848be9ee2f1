// Package api holds the JSON wire types of the trellis controller's HTTP API
// and a Client for it. The policy types are byte-compatible with Cloud
// Foundry's networking/v1/external API so that existing tooling carries over;
// the other resources are shaped like Cloud Foundry's v3 API.
package api

// Ports is an inclusive port range, as Cloud Foundry's v1 policy API spells it.
type Ports struct {
	Start int `json:"start"`
	End   int `json:"end"`
}

// Source is the sending side of a policy: an app GUID (and, on internal
// APIs only, its tag).
type Source struct {
	ID  string `json:"id"`
	Tag string `json:"tag,omitempty"`
}

// Destination is the receiving side of a policy: app GUID, protocol and ports.
type Destination struct {
	ID       string `json:"id"`
	Tag      string `json:"tag,omitempty"`
	Protocol string `json:"protocol"`
	Ports    Ports  `json:"ports"`
}

// Policy allows Source to open connections to Destination.
type Policy struct {
	Source      Source      `json:"source"`
	Destination Destination `json:"destination"`
}

// PoliciesRequest is the body of POST /networking/v1/external/policies and
// of POST /networking/v1/external/policies/delete.
type PoliciesRequest struct {
	Policies []Policy `json:"policies"`
}

// PoliciesResponse is the body of GET /networking/v1/external/policies.
type PoliciesResponse struct {
	TotalPolicies int      `json:"total_policies"`
	Policies      []Policy `json:"policies"`
}

// Tag maps a policy group (an app GUID) to its 16-bit tag, as 4 hex digits.
type Tag struct {
	ID   string `json:"id"`
	Tag  string `json:"tag"`
	Type string `json:"type"`
}

// TagsResponse is the body of GET /networking/v1/external/tags.
type TagsResponse struct {
	Tags []Tag `json:"tags"`
}

// Error is the body of every non-2xx answer of the networking API.
type Error struct {
	Error string `json:"error"`
}
