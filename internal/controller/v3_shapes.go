package controller

import (
	"net/http"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// The types below are the v3 resources as Cloud Controller shapes them
// (metadata, links with absolute hrefs, the relationships and fields the
// cf CLI reads) around the trellis api types, which stay what trellis's
// own client decodes: the JSON of an embedded api type is flattened into
// its wrapper, and a wrapper's field of the same name replaces it.

// ccMetadata is every resource's labels and annotations; trellis keeps
// none, so both are always empty.
type ccMetadata struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func emptyMetadata() ccMetadata {
	return ccMetadata{Labels: map[string]string{}, Annotations: map[string]string{}}
}

// ccLinks are a resource's links, by name.
type ccLinks map[string]api.Link

// ccNullToOne is a to-one relationship that is always empty (a quota, an
// owning organization).
type ccNullToOne struct {
	Data *api.Ref `json:"data"`
}

// links makes ccLinks from name, path pairs under the request's base URL.
func links(r *http.Request, pairs ...string) ccLinks {
	b := baseURL(r)
	l := ccLinks{}
	for i := 0; i+1 < len(pairs); i += 2 {
		l[pairs[i]] = api.Link{Href: b + pairs[i+1]}
	}
	return l
}

type ccOrg struct {
	api.Organization
	Suspended     bool `json:"suspended"`
	Relationships struct {
		Quota ccNullToOne `json:"quota"`
	} `json:"relationships"`
	Metadata ccMetadata `json:"metadata"`
	Links    ccLinks    `json:"links"`
}

func ccOrgOf(r *http.Request, o store.Org) ccOrg {
	g := "/v3/organizations/" + o.GUID
	return ccOrg{Organization: orgJSON(o), Metadata: emptyMetadata(),
		Links: links(r, "self", g, "domains", g+"/domains", "default_domain", g+"/domains/default")}
}

type ccSpace struct {
	api.Space
	Relationships struct {
		Organization api.ToOne   `json:"organization"`
		Quota        ccNullToOne `json:"quota"`
	} `json:"relationships"`
	Metadata ccMetadata `json:"metadata"`
	Links    ccLinks    `json:"links"`
}

func ccSpaceOf(r *http.Request, sp store.Space) ccSpace {
	out := ccSpace{Space: spaceJSON(sp), Metadata: emptyMetadata(),
		Links: links(r, "self", "/v3/spaces/"+sp.GUID, "organization", "/v3/organizations/"+sp.OrgGUID)}
	out.Relationships.Organization = api.ToOne{Data: api.Ref{GUID: sp.OrgGUID}}
	return out
}

// ccLifecycle says how an app is built; trellis runs a command (or its
// sample app) as it is, which Cloud Foundry would call a docker app.
type ccLifecycle struct {
	Type string   `json:"type"`
	Data struct{} `json:"data"`
}

type ccApp struct {
	api.App
	Lifecycle ccLifecycle `json:"lifecycle"`
	Metadata  ccMetadata  `json:"metadata"`
	Links     ccLinks     `json:"links"`
}

func ccAppOf(r *http.Request, a store.App) ccApp {
	g := "/v3/apps/" + a.GUID
	return ccApp{App: appJSON(a), Lifecycle: ccLifecycle{Type: "docker"}, Metadata: emptyMetadata(),
		Links: links(r, "self", g, "space", "/v3/spaces/"+a.SpaceGUID, "processes", g+"/processes",
			"routes", g+"/routes", "start", g+"/actions/start", "stop", g+"/actions/stop")}
}

type ccDomain struct {
	api.Domain
	SupportedProtocols []string  `json:"supported_protocols"`
	RouterGroup        *struct{} `json:"router_group"`
	Relationships      struct {
		Organization        ccNullToOne `json:"organization"`
		SharedOrganizations struct {
			Data []api.Ref `json:"data"`
		} `json:"shared_organizations"`
	} `json:"relationships"`
	Metadata ccMetadata `json:"metadata"`
	Links    ccLinks    `json:"links"`
}

func ccDomainOf(r *http.Request, d store.Domain) ccDomain {
	out := ccDomain{Domain: domainJSON(d), SupportedProtocols: []string{"http"}, Metadata: emptyMetadata(),
		Links: links(r, "self", "/v3/domains/"+d.GUID, "route_reservations", "/v3/domains/"+d.GUID+"/route_reservations")}
	out.Relationships.SharedOrganizations.Data = []api.Ref{}
	return out
}

// ccProcessType names an app's process in a route destination: always
// web, the one process a trellis app has.
type ccProcessType struct {
	Type string `json:"type"`
}

type ccDestinationApp struct {
	GUID    string        `json:"guid"`
	Process ccProcessType `json:"process"`
}

// ccDestination is one app a route sends to, on the app's port 8080.
type ccDestination struct {
	GUID     string           `json:"guid"`
	App      ccDestinationApp `json:"app"`
	Weight   *int             `json:"weight"`
	Port     int              `json:"port"`
	Protocol string           `json:"protocol"`
}

type ccRoute struct {
	api.Route
	Protocol     string          `json:"protocol"`
	Path         string          `json:"path"`
	Port         *int            `json:"port"`
	Destinations []ccDestination `json:"destinations"`
	Metadata     ccMetadata      `json:"metadata"`
	Links        ccLinks         `json:"links"`
}

// appPort is the port every app listens on (PORT), as on Cloud Foundry.
const appPort = 8080

func ccDestinationsOf(rt api.Route) []ccDestination {
	out := make([]ccDestination, len(rt.Destinations))
	for i, d := range rt.Destinations {
		out[i] = ccDestination{GUID: d.GUID, App: ccDestinationApp{GUID: d.App.GUID, Process: ccProcessType{Type: "web"}},
			Port: appPort, Protocol: "http1"}
	}
	return out
}

func ccRouteOf(r *http.Request, rt store.Route) ccRoute {
	a := routeJSON(rt)
	g := "/v3/routes/" + rt.GUID
	return ccRoute{Route: a, Protocol: "http", Destinations: ccDestinationsOf(a), Metadata: emptyMetadata(),
		Links: links(r, "self", g, "space", "/v3/spaces/"+rt.SpaceGUID, "domain", "/v3/domains/"+rt.DomainGUID,
			"destinations", g+"/destinations")}
}
