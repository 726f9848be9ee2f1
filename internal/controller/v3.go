package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// maxV3Body bounds v3 request bodies; none needs more than a few hundred bytes.
const maxV3Body = 1 << 20

var v3Titles = map[int]struct {
	title string
	code  int
}{
	http.StatusBadRequest:            {"CF-MessageParseError", 1001},
	http.StatusUnauthorized:          {"CF-NotAuthenticated", 10002},
	http.StatusForbidden:             {"CF-NotAuthorized", 10003},
	http.StatusNotFound:              {"CF-ResourceNotFound", 10010},
	http.StatusUnsupportedMediaType:  {"CF-MessageParseError", 1001},
	http.StatusRequestEntityTooLarge: {"CF-MessageParseError", 1001},
	http.StatusUnprocessableEntity:   {"CF-UnprocessableEntity", 10008},
	http.StatusConflict:              {"CF-UnprocessableEntity", 10008},
	http.StatusServiceUnavailable:    {"CF-ServiceUnavailable", 10015},
}

// writeV3Error writes the v3 API's error shape.
func writeV3Error(w http.ResponseWriter, status int, msg string) {
	t, ok := v3Titles[status]
	if !ok {
		t.title, t.code = "UnknownError", 10001
	}
	// A token that is there but does not verify (expired, revoked, not
	// ours) is CF's CF-InvalidAuthToken: on it the cf CLI refreshes its
	// token and retries.
	if status == http.StatusUnauthorized && msg != errMissingAuth.Error() {
		t.title, t.code = "CF-InvalidAuthToken", 1000
	}
	writeJSON(w, status, api.V3Errors{Errors: []api.V3Error{{Detail: msg, Title: t.title, Code: t.code}}})
}

// readV3 decodes a v3 JSON body strictly into v; on failure it has answered.
func readV3(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct, ok := checkContentType(r); !ok {
		writeV3Error(w, http.StatusUnsupportedMediaType, fmt.Sprintf("unsupported content type %q: use application/json", ct))
		return false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxV3Body))
	if err != nil {
		writeV3Error(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body too large: limit is %d bytes", maxV3Body))
		return false
	}
	// encoding/json would turn invalid UTF-8 into U+FFFD: refuse it
	// rather than store something else than what was sent.
	if !utf8.Valid(body) {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("request body is not valid UTF-8 (at byte %d)", invalidUTF8At(body)))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("empty body")
		}
		writeV3Error(w, http.StatusBadRequest, "Request invalid due to parse error: "+err.Error())
		return false
	}
	if dec.More() {
		writeV3Error(w, http.StatusBadRequest, "Request invalid due to parse error: data after the JSON value")
		return false
	}
	return true
}

// invalidUTF8At returns the offset of the first invalid UTF-8 sequence in b.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// storeError maps a store error onto a v3 answer.
func (s *Server) storeError(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, store.ErrConflict):
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, store.ErrNotFound):
		writeV3Error(w, http.StatusNotFound, err.Error())
	default:
		s.log.Error(op, "err", err)
		writeV3Error(w, http.StatusInternalServerError, op+" failed")
	}
}

func list[T any](r *http.Request, items []T) api.List[T] {
	if items == nil {
		items = []T{}
	}
	u := url.URL{Scheme: "https", Host: r.Host, Path: r.URL.Path}
	q := r.URL.Query()
	q.Set("page", "1")
	q.Set("per_page", fmt.Sprint(max(len(items), 1)))
	u.RawQuery = q.Encode()
	return api.List[T]{
		Pagination: api.Pagination{TotalResults: len(items), TotalPages: 1, First: api.Link{Href: u.String()}, Last: api.Link{Href: u.String()}},
		Resources:  items,
	}
}

func query(r *http.Request, key string) []string { return splitList(r.URL.Query().Get(key)) }

// restrict narrows a GUID filter to the caller's spaces for network.write.
// It returns false when the caller can see nothing.
func restrict(p *principal, filter []string) ([]string, bool) {
	if p.admin() {
		return filter, true
	}
	if len(filter) == 0 {
		return p.Spaces, len(p.Spaces) > 0
	}
	var out []string
	for _, g := range filter {
		if slices.Contains(p.Spaces, g) {
			out = append(out, g)
		}
	}
	return out, len(out) > 0
}

func orgJSON(o store.Org) api.Organization {
	return api.Organization{GUID: o.GUID, Name: o.Name, CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt}
}

// listOrgs lists the organizations: every one for an admin, those of its
// spaces for a network.write token (as Cloud Foundry shows a space
// developer only the orgs it belongs to).
func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) {
	f := store.OrgFilter{GUIDs: query(r, "guids"), Names: query(r, "names")}
	if p := principalFrom(r.Context()); !p.admin() {
		var mine []string
		if len(p.Spaces) > 0 {
			spaces, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: p.Spaces})
			if err != nil {
				s.storeError(w, "list organizations", err)
				return
			}
			for _, sp := range spaces {
				mine = append(mine, sp.OrgGUID)
			}
		}
		if len(f.GUIDs) > 0 {
			mine = intersect(f.GUIDs, mine)
		}
		if len(mine) == 0 {
			writeList[ccOrg](w, r, nil)
			return
		}
		f.GUIDs = mine
	}
	orgs, err := s.store.Orgs(r.Context(), f)
	if err != nil {
		s.storeError(w, "list organizations", err)
		return
	}
	out := make([]ccOrg, len(orgs))
	for i, o := range orgs {
		out[i] = ccOrgOf(r, o)
	}
	writeList(w, r, out)
}

func (s *Server) createOrg(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name      string          `json:"name"`
		Suspended bool            `json:"suspended"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	if !readV3(w, r, &req) {
		return
	}
	if req.Suspended {
		writeV3Error(w, http.StatusUnprocessableEntity, "Suspended is not supported: trellis has no suspended organizations")
		return
	}
	if err := validateName("organization", req.Name); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	o, err := s.store.CreateOrg(r.Context(), req.Name)
	if errors.Is(err, store.ErrConflict) {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Organization '%s' already exists.", req.Name))
		return
	}
	if err != nil {
		s.storeError(w, "create organization", err)
		return
	}
	s.log.Info("created organization", "name", o.Name, "guid", o.GUID, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, ccOrgOf(r, o))
}

func spaceJSON(sp store.Space) api.Space {
	return api.Space{GUID: sp.GUID, Name: sp.Name, CreatedAt: sp.CreatedAt, UpdatedAt: sp.UpdatedAt,
		Relationships: api.SpaceRelationships{Organization: api.ToOne{Data: api.Ref{GUID: sp.OrgGUID}}}}
}

func (s *Server) listSpaces(w http.ResponseWriter, r *http.Request) {
	guids, ok := restrict(principalFrom(r.Context()), query(r, "guids"))
	if !ok {
		writeList[ccSpace](w, r, nil)
		return
	}
	spaces, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: guids, Names: query(r, "names"), OrgGUIDs: query(r, "organization_guids")})
	if err != nil {
		s.storeError(w, "list spaces", err)
		return
	}
	out := make([]ccSpace, len(spaces))
	for i, sp := range spaces {
		out[i] = ccSpaceOf(r, sp)
	}
	if !slices.Contains(strings.Split(r.URL.Query().Get("include"), ","), "organization") {
		writeList(w, r, out)
		return
	}
	// include=organization (cf security-groups): the page's orgs, as
	// Cloud Controller includes them.
	orgGUIDs := map[string]bool{}
	for _, sp := range spaces {
		orgGUIDs[sp.OrgGUID] = true
	}
	orgs, err := s.store.Orgs(r.Context(), store.OrgFilter{GUIDs: slices.Sorted(maps.Keys(orgGUIDs))})
	if err != nil {
		s.storeError(w, "list spaces", err)
		return
	}
	writeListIncluded(w, r, out, func(page []ccSpace) any {
		onPage := map[string]bool{}
		for _, sp := range page {
			onPage[sp.Relationships.Organization.Data.GUID] = true
		}
		included := []ccOrg{}
		for _, o := range orgs {
			if onPage[o.GUID] {
				included = append(included, ccOrgOf(r, o))
			}
		}
		return map[string][]ccOrg{"organizations": included}
	})
}

func (s *Server) createSpace(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name          string                 `json:"name"`
		Relationships api.SpaceRelationships `json:"relationships"`
		Metadata      json.RawMessage        `json:"metadata"`
	}
	if !readV3(w, r, &req) {
		return
	}
	if err := validateName("space", req.Name); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	org := req.Relationships.Organization.Data.GUID
	if org == "" {
		writeV3Error(w, http.StatusUnprocessableEntity, "Relationships Organization must be given")
		return
	}
	sp, err := s.store.CreateSpace(r.Context(), org, req.Name)
	if errors.Is(err, store.ErrConflict) {
		writeV3Error(w, http.StatusUnprocessableEntity, "Name must be unique per organization")
		return
	}
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusUnprocessableEntity, "Invalid organization. Ensure the organization exists and you have access to it.")
		return
	}
	if err != nil {
		s.storeError(w, "create space", err)
		return
	}
	s.log.Info("created space", "name", sp.Name, "guid", sp.GUID, "org", org, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, ccSpaceOf(r, sp))
}

func appJSON(a store.App) api.App {
	return api.App{GUID: a.GUID, Name: a.Name, State: a.State, Instances: a.Instances, Command: a.Command, CellGUID: a.CellGUID, CreatedAt: a.CreatedAt, UpdatedAt: a.UpdatedAt,
		Relationships: api.AppRelationships{Space: api.ToOne{Data: api.Ref{GUID: a.SpaceGUID}}}}
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	spaces, ok := restrict(principalFrom(r.Context()), query(r, "space_guids"))
	if !ok {
		writeList[ccApp](w, r, nil)
		return
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: query(r, "guids"), Names: query(r, "names"), SpaceGUIDs: spaces})
	if err != nil {
		s.storeError(w, "list apps", err)
		return
	}
	out := make([]ccApp, len(apps))
	for i, a := range apps {
		out[i] = ccAppOf(r, a)
	}
	writeList(w, r, out)
}

// visibleApp loads one app the caller may see, or answers 404.
func (s *Server) visibleApp(w http.ResponseWriter, r *http.Request, guid string) (store.App, bool) {
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "get app", err)
		return store.App{}, false
	}
	if len(apps) == 0 || !principalFrom(r.Context()).inSpace(apps[0].SpaceGUID) {
		writeV3Error(w, http.StatusNotFound, "App not found")
		return store.App{}, false
	}
	return apps[0], true
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	if a, ok := s.visibleApp(w, r, r.PathValue("guid")); ok {
		writeJSON(w, http.StatusOK, ccAppOf(r, a))
	}
}

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name          string               `json:"name"`
		Relationships api.AppRelationships `json:"relationships"`
		Metadata      json.RawMessage      `json:"metadata"`
		Lifecycle     *v3Lifecycle         `json:"lifecycle"`
	}
	if !readV3(w, r, &req) {
		return
	}
	if err := validateName("app", req.Name); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	space := req.Relationships.Space.Data.GUID
	const invalidSpace = "Invalid space. Ensure that the space exists and you have access to it."
	p := principalFrom(r.Context())
	if space == "" || !p.inSpace(space) {
		writeV3Error(w, http.StatusUnprocessableEntity, invalidSpace)
		return
	}
	a, err := s.store.CreateApp(r.Context(), space, req.Name)
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusUnprocessableEntity, invalidSpace)
		return
	}
	if errors.Is(err, store.ErrConflict) {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("App with the name '%s' already exists.", req.Name))
		return
	}
	if err != nil {
		s.storeError(w, "create app", err)
		return
	}
	s.log.Info("created app", "name", a.Name, "guid", a.GUID, "space", space, "user", p.user())
	writeJSON(w, http.StatusCreated, ccAppOf(r, a))
}

func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	if err := s.store.DeleteApp(r.Context(), a.GUID); err != nil {
		s.storeError(w, "delete app", err)
		return
	}
	s.log.Info("deleted app", "name", a.Name, "guid", a.GUID, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

func domainJSON(d store.Domain) api.Domain {
	return api.Domain{GUID: d.GUID, Name: d.Name, Internal: d.Internal, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
}

func (s *Server) listDomains(w http.ResponseWriter, r *http.Request) {
	ds, err := s.store.Domains(r.Context(), store.DomainFilter{GUIDs: query(r, "guids"), Names: query(r, "names")})
	if err != nil {
		s.storeError(w, "list domains", err)
		return
	}
	out := make([]ccDomain, len(ds))
	for i, d := range ds {
		out[i] = ccDomainOf(r, d)
	}
	writeList(w, r, out)
}

func (s *Server) createDomain(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name          string          `json:"name"`
		Internal      bool            `json:"internal"`
		Metadata      json.RawMessage `json:"metadata"`
		Relationships json.RawMessage `json:"relationships"`
		RouterGroup   json.RawMessage `json:"router_group"`
	}
	if !readV3(w, r, &req) {
		return
	}
	name := strings.ToLower(req.Name)
	if err := validateDomain(name); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if !req.Internal {
		writeV3Error(w, http.StatusUnprocessableEntity, "only internal domains are supported: set \"internal\": true")
		return
	}
	d, err := s.store.CreateDomain(r.Context(), name, true)
	if errors.Is(err, store.ErrConflict) {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("The domain name \"%s\" is already in use", name))
		return
	}
	if err != nil {
		s.storeError(w, "create domain", err)
		return
	}
	s.log.Info("created domain", "name", d.Name, "guid", d.GUID, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, ccDomainOf(r, d))
}

func routeJSON(rt store.Route) api.Route {
	out := api.Route{GUID: rt.GUID, Host: rt.Host, URL: rt.Host + "." + rt.DomainName,
		CreatedAt: rt.CreatedAt, UpdatedAt: rt.UpdatedAt, Destinations: []api.RouteDestination{},
		Relationships: api.RouteRelationships{Domain: api.ToOne{Data: api.Ref{GUID: rt.DomainGUID}},
			Space: api.ToOne{Data: api.Ref{GUID: rt.SpaceGUID}}}}
	for _, a := range rt.AppGUIDs {
		out.Destinations = append(out.Destinations, api.RouteDestination{GUID: a, App: api.Ref{GUID: a}})
	}
	return out
}

// appsOfCaller lists the GUIDs of the apps in a network.write caller's spaces.
func (s *Server) appsOfCaller(r *http.Request, p *principal) ([]string, error) {
	if len(p.Spaces) == 0 {
		return nil, nil
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{SpaceGUIDs: p.Spaces})
	if err != nil {
		return nil, err
	}
	out := make([]string, len(apps))
	for i, a := range apps {
		out[i] = a.GUID
	}
	return out, nil
}

// listRoutes lists the routes of the caller's spaces (every route for an
// admin), narrowed by the query's filters.
func (s *Server) listRoutes(w http.ResponseWriter, r *http.Request) {
	spaces, ok := restrict(principalFrom(r.Context()), query(r, "space_guids"))
	if !ok {
		writeList[ccRoute](w, r, nil)
		return
	}
	// Routes of internal domains have no path: a path filter other than
	// none matches nothing.
	for _, p := range query(r, "paths") {
		if p != "" && p != "/" {
			writeList[ccRoute](w, r, nil)
			return
		}
	}
	if orgs := query(r, "organization_guids"); len(orgs) > 0 {
		in, err := s.spacesOfOrgs(r.Context(), spaces, orgs)
		if err != nil {
			s.storeError(w, "list routes", err)
			return
		}
		if len(in) == 0 {
			writeList[ccRoute](w, r, nil)
			return
		}
		spaces = in
	}
	f := store.RouteFilter{GUIDs: query(r, "guids"), Hosts: query(r, "hosts"), DomainGUIDs: query(r, "domain_guids"),
		SpaceGUIDs: spaces, AppGUIDs: query(r, "app_guids")}
	rts, err := s.store.Routes(r.Context(), f)
	if err != nil {
		s.storeError(w, "list routes", err)
		return
	}
	out := make([]ccRoute, len(rts))
	for i, rt := range rts {
		out[i] = ccRouteOf(r, rt)
	}
	writeList(w, r, out)
}

// visibleRoute loads one route of the caller's spaces, or answers 404: a
// route of another space is answered as if it did not exist, as apps are.
func (s *Server) visibleRoute(w http.ResponseWriter, r *http.Request, guid string) (store.Route, bool) {
	rts, err := s.store.Routes(r.Context(), store.RouteFilter{GUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "get route", err)
		return store.Route{}, false
	}
	if len(rts) == 0 || !principalFrom(r.Context()).inSpace(rts[0].SpaceGUID) {
		writeV3Error(w, http.StatusNotFound, "Route not found")
		return store.Route{}, false
	}
	return rts[0], true
}

func (s *Server) getRoute(w http.ResponseWriter, r *http.Request) {
	if rt, ok := s.visibleRoute(w, r, r.PathValue("guid")); ok {
		writeJSON(w, http.StatusOK, ccRouteOf(r, rt))
	}
}

// createRoute creates a route in a space of the caller's
// (relationships.space, required as in Cloud Foundry).
func (s *Server) createRoute(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Host          string                 `json:"host"`
		Path          string                 `json:"path"`
		Port          *int                   `json:"port"`
		Relationships api.RouteRelationships `json:"relationships"`
		Metadata      json.RawMessage        `json:"metadata"`
	}
	if !readV3(w, r, &req) {
		return
	}
	if req.Path != "" {
		writeV3Error(w, http.StatusUnprocessableEntity, "Path is not supported: routes of internal domains have no path")
		return
	}
	if req.Port != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, "Port is not supported: routes of internal domains have no port")
		return
	}
	host := strings.ToLower(req.Host)
	if err := validateHost(host); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	space := req.Relationships.Space.Data.GUID
	if space == "" {
		writeV3Error(w, http.StatusUnprocessableEntity, "Relationships Space must be given: relationships.space.data.guid is required")
		return
	}
	const invalidSpace = "Invalid space. Ensure that the space exists and you have access to it."
	p := principalFrom(r.Context())
	if !p.inSpace(space) {
		writeV3Error(w, http.StatusUnprocessableEntity, invalidSpace)
		return
	}
	if sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: []string{space}}); err != nil {
		s.storeError(w, "create route", err)
		return
	} else if len(sps) == 0 {
		writeV3Error(w, http.StatusUnprocessableEntity, invalidSpace)
		return
	}
	domain := req.Relationships.Domain.Data.GUID
	rt, err := s.store.CreateRoute(r.Context(), space, domain, host)
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusUnprocessableEntity, "Invalid domain. Ensure that the domain exists and you have access to it.")
		return
	}
	if errors.Is(err, store.ErrConflict) {
		name := domain
		if ds, err := s.store.Domains(r.Context(), store.DomainFilter{GUIDs: []string{domain}}); err == nil && len(ds) == 1 {
			name = ds[0].Name
		}
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Route already exists with host '%s' for domain '%s'.", host, name))
		return
	}
	if err != nil {
		s.storeError(w, "create route", err)
		return
	}
	s.log.Info("created route", "url", rt.Host+"."+rt.DomainName, "guid", rt.GUID, "space", space, "user", p.user())
	writeJSON(w, http.StatusCreated, ccRouteOf(r, rt))
}

func (s *Server) deleteRoute(w http.ResponseWriter, r *http.Request) {
	rt, ok := s.visibleRoute(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	if err := s.store.DeleteRoute(r.Context(), rt.GUID); err != nil {
		s.storeError(w, "delete route", err)
		return
	}
	s.log.Info("deleted route", "url", rt.Host+"."+rt.DomainName, "guid", rt.GUID, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

// addRouteDestinations maps apps to a route of the caller's spaces; the
// apps must be the caller's and in the route's space.
func (s *Server) addRouteDestinations(w http.ResponseWriter, r *http.Request) {
	var req v3DestinationsRequest
	if !readV3(w, r, &req) {
		return
	}
	if len(req.Destinations) == 0 {
		writeV3Error(w, http.StatusUnprocessableEntity, "Destinations must have at least 1 destination")
		return
	}
	guids := make([]string, len(req.Destinations))
	for i, d := range req.Destinations {
		if d.App.GUID == "" {
			writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Destinations[%d]: app guid must be given", i))
			return
		}
		if d.App.Process != nil && d.App.Process.Type != "web" {
			writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Destinations[%d]: process type %q: trellis apps have one process, web", i, d.App.Process.Type))
			return
		}
		if d.Port != nil && *d.Port != appPort {
			writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Destinations[%d]: port %d: apps listen on %d", i, *d.Port, appPort))
			return
		}
		if d.Protocol != "" && d.Protocol != "http1" {
			writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Destinations[%d]: protocol %q: use http1", i, d.Protocol))
			return
		}
		guids[i] = d.App.GUID
	}
	rt, ok := s.visibleRoute(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	p := principalFrom(r.Context())
	f := store.AppFilter{GUIDs: guids}
	if !p.admin() {
		f.SpaceGUIDs = p.Spaces
	}
	apps, err := s.store.Apps(r.Context(), f)
	if err != nil {
		s.storeError(w, "add route destinations", err)
		return
	}
	for _, g := range guids {
		i := slices.IndexFunc(apps, func(a store.App) bool { return a.GUID == g })
		if i < 0 {
			writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("App(s) with guid(s) \"%s\" do not exist or you do not have access.", g))
			return
		}
		if apps[i].SpaceGUID != rt.SpaceGUID {
			writeV3Error(w, http.StatusUnprocessableEntity, routeSpaceError(g))
			return
		}
	}
	rt, err = s.store.AddRouteDestinations(r.Context(), rt.GUID, guids)
	if errors.Is(err, store.ErrOtherSpace) {
		// The app moved or the route changed since the check above.
		writeV3Error(w, http.StatusUnprocessableEntity, routeSpaceError(strings.Join(guids, ", ")))
		return
	}
	if err != nil {
		s.storeError(w, "add route destinations", err)
		return
	}
	s.log.Info("mapped route", "url", rt.Host+"."+rt.DomainName, "apps", guids, "user", p.user())
	writeJSON(w, http.StatusOK, struct {
		Destinations []ccDestination `json:"destinations"`
		Links        ccLinks         `json:"links"`
	}{ccDestinationsOf(routeJSON(rt)), links(r, "self", "/v3/routes/"+rt.GUID+"/destinations", "route", "/v3/routes/"+rt.GUID)})
}

// routeSpaceError is the 422 for destinations outside the route's space
// (Cloud Foundry's words, without its shared spaces).
func routeSpaceError(apps string) string {
	return fmt.Sprintf("Routes destinations must be in the route's space: app(s) %s are in another space.", apps)
}

// removeRouteDestination unmaps an app from a route of the caller's spaces.
func (s *Server) removeRouteDestination(w http.ResponseWriter, r *http.Request) {
	rt, ok := s.visibleRoute(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	app := r.PathValue("app")
	if err := s.store.RemoveRouteDestination(r.Context(), rt.GUID, app); err != nil {
		s.storeError(w, "remove route destination", err)
		return
	}
	s.log.Info("unmapped route", "url", rt.Host+"."+rt.DomainName, "route", rt.GUID, "app", app, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

// spacesOfOrgs narrows a space_guids filter (none: every space) to the
// spaces of orgs, as Cloud Controller's organization_guids filter does;
// an empty result matches nothing.
func (s *Server) spacesOfOrgs(ctx context.Context, spaces, orgs []string) ([]string, error) {
	sps, err := s.store.Spaces(ctx, store.SpaceFilter{OrgGUIDs: orgs})
	if err != nil {
		return nil, err
	}
	var in []string
	for _, sp := range sps {
		in = append(in, sp.GUID)
	}
	if len(spaces) > 0 {
		in = intersect(spaces, in)
	}
	return in, nil
}
