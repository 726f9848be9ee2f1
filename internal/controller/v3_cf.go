package controller

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// The rest of Cloud Controller's v3 that the cf CLI reads for the
// commands trellis supports: single orgs, spaces and domains, deleting
// orgs and spaces (as jobs), route reservations, roles, and the empty
// lists of what trellis has not (service bindings, deployments,
// packages, ...). Anything else under /v3 answers CF-NotFound.

// visibleOrg loads an org the caller may see (an admin every org, a
// write token those of its spaces), or answers 404.
func (s *Server) visibleOrg(w http.ResponseWriter, r *http.Request, guid string) (store.Org, bool) {
	orgs, err := s.store.Orgs(r.Context(), store.OrgFilter{GUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "get organization", err)
		return store.Org{}, false
	}
	if len(orgs) == 1 {
		p := principalFrom(r.Context())
		if p.admin() {
			return orgs[0], true
		}
		if len(p.Spaces) > 0 {
			sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: p.Spaces, OrgGUIDs: []string{guid}})
			if err != nil {
				s.storeError(w, "get organization", err)
				return store.Org{}, false
			}
			if len(sps) > 0 {
				return orgs[0], true
			}
		}
	}
	writeV3Error(w, http.StatusNotFound, "Organization not found")
	return store.Org{}, false
}

func (s *Server) getOrg(w http.ResponseWriter, r *http.Request) {
	if o, ok := s.visibleOrg(w, r, r.PathValue("guid")); ok {
		writeJSON(w, http.StatusOK, ccOrgOf(r, o))
	}
}

// listOrgDomains answers GET /v3/organizations/{guid}/domains: every
// domain, as trellis's domains are all shared.
func (s *Server) listOrgDomains(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.visibleOrg(w, r, r.PathValue("guid")); ok {
		s.listDomains(w, r)
	}
}

// visibleSpace loads a space of the caller's, or answers 404.
func (s *Server) visibleSpace(w http.ResponseWriter, r *http.Request, guid string) (store.Space, bool) {
	sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: []string{guid}})
	if err != nil {
		s.storeError(w, "get space", err)
		return store.Space{}, false
	}
	if len(sps) == 0 || !principalFrom(r.Context()).inSpace(sps[0].GUID) {
		writeV3Error(w, http.StatusNotFound, "Space not found")
		return store.Space{}, false
	}
	return sps[0], true
}

func (s *Server) getSpace(w http.ResponseWriter, r *http.Request) {
	if sp, ok := s.visibleSpace(w, r, r.PathValue("guid")); ok {
		writeJSON(w, http.StatusOK, ccSpaceOf(r, sp))
	}
}

// deleteSpaceApps deletes the apps of the spaces, as Cloud Foundry deletes
// a space's apps with it, after checking that no token is scoped to any
// of the spaces and no user is a developer of any (which would make the space undeletable: nothing is
// deleted then). It answers and returns false on failure.
func (s *Server) deleteSpaceApps(w http.ResponseWriter, r *http.Request, what string, spaces []store.Space) bool {
	guids := make([]string, len(spaces))
	for i, sp := range spaces {
		guids[i] = sp.GUID
	}
	toks, err := s.store.Tokens(r.Context(), store.TokenFilter{})
	if err != nil {
		s.storeError(w, "delete "+what, err)
		return false
	}
	for _, t := range toks {
		for _, sp := range spaces {
			if slices.Contains(t.SpaceGUIDs, sp.GUID) {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Space '%s' cannot be deleted: token %s is scoped to it; revoke it first (trellis revoke-token %s)", sp.Name, t.GUID, t.GUID))
				return false
			}
		}
	}
	users, err := s.store.Users(r.Context(), store.UserFilter{})
	if err != nil {
		s.storeError(w, "delete "+what, err)
		return false
	}
	for _, u := range users {
		for _, sp := range spaces {
			if slices.ContainsFunc(u.Spaces, func(us store.UserSpace) bool { return us.SpaceGUID == sp.GUID }) {
				writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Space '%s' cannot be deleted: user %s is a developer of it; delete the user first (trellis delete-user %s)", sp.Name, u.Name, u.Name))
				return false
			}
		}
	}
	if len(guids) == 0 {
		return true
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{SpaceGUIDs: guids})
	if err != nil {
		s.storeError(w, "delete "+what, err)
		return false
	}
	for _, a := range apps {
		if err := s.store.DeleteApp(r.Context(), a.GUID); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.storeError(w, "delete "+what, err)
			return false
		}
		s.log.Info("deleted app", "name", a.Name, "guid", a.GUID, "with", what, "user", principalFrom(r.Context()).user())
	}
	return true
}

// writeJob answers a deletion that has completed with Cloud Controller's
// 202 and the job to poll (see getJob).
func writeJob(w http.ResponseWriter, r *http.Request, guid string) {
	w.Header().Set("Location", baseURL(r)+"/v3/jobs/"+guid)
	w.WriteHeader(http.StatusAccepted)
}

// deleteSpace deletes a space with its apps and routes (network.admin,
// as a space developer may not delete a space on Cloud Foundry).
func (s *Server) deleteSpace(w http.ResponseWriter, r *http.Request) {
	sp, ok := s.visibleSpace(w, r, r.PathValue("guid"))
	if !ok || !s.deleteSpaceApps(w, r, "space", []store.Space{sp}) {
		return
	}
	if err := s.store.DeleteSpace(r.Context(), sp.GUID); err != nil {
		s.storeError(w, "delete space", err)
		return
	}
	s.log.Info("deleted space", "name", sp.Name, "guid", sp.GUID, "user", principalFrom(r.Context()).user())
	writeJob(w, r, sp.GUID)
}

// deleteOrg deletes an org with its spaces, their apps and routes.
func (s *Server) deleteOrg(w http.ResponseWriter, r *http.Request) {
	o, ok := s.visibleOrg(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{OrgGUIDs: []string{o.GUID}})
	if err != nil {
		s.storeError(w, "delete organization", err)
		return
	}
	if !s.deleteSpaceApps(w, r, "organization", sps) {
		return
	}
	if err := s.store.DeleteOrg(r.Context(), o.GUID); err != nil {
		s.storeError(w, "delete organization", err)
		return
	}
	s.log.Info("deleted organization", "name", o.Name, "guid", o.GUID, "user", principalFrom(r.Context()).user())
	writeJob(w, r, o.GUID)
}

// ccJob is an asynchronous operation; trellis's complete before they are
// answered, so every job is COMPLETE.
type ccJob struct {
	GUID      string     `json:"guid"`
	Operation string     `json:"operation"`
	State     string     `json:"state"`
	Errors    []struct{} `json:"errors"`
	Warnings  []struct{} `json:"warnings"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	Links     ccLinks    `json:"links"`
}

// getJob answers GET /v3/jobs/{guid}: the deletions that made jobs ran to
// completion before their 202, so a job is COMPLETE. A GUID that is not
// one is not found.
func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	g := r.PathValue("guid")
	if uuid.Validate(g) != nil {
		writeV3Error(w, http.StatusNotFound, "Job not found")
		return
	}
	now := time.Now().UTC()
	writeJSON(w, http.StatusOK, ccJob{GUID: g, Operation: "delete", State: "COMPLETE", Errors: []struct{}{}, Warnings: []struct{}{},
		CreatedAt: now, UpdatedAt: now, Links: links(r, "self", "/v3/jobs/"+g)})
}

func (s *Server) getDomain(w http.ResponseWriter, r *http.Request) {
	ds, err := s.store.Domains(r.Context(), store.DomainFilter{GUIDs: []string{r.PathValue("guid")}})
	if err != nil {
		s.storeError(w, "get domain", err)
		return
	}
	if len(ds) == 0 {
		writeV3Error(w, http.StatusNotFound, "Domain not found")
		return
	}
	writeJSON(w, http.StatusOK, ccDomainOf(r, ds[0]))
}

// routeReservations answers GET /v3/domains/{guid}/route_reservations:
// whether HOST.DOMAIN is taken, in any space (a route name is unique in
// its domain across the foundation, which tells a write token no more
// than creating the route would).
func (s *Server) routeReservations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("path") != "" || q.Get("port") != "" {
		writeV3BadQuery(w, "routes of internal domains have no path or port")
		return
	}
	ds, err := s.store.Domains(r.Context(), store.DomainFilter{GUIDs: []string{r.PathValue("guid")}})
	if err != nil {
		s.storeError(w, "route reservations", err)
		return
	}
	if len(ds) == 0 {
		writeV3Error(w, http.StatusNotFound, "Domain not found")
		return
	}
	host := strings.ToLower(q.Get("host"))
	matching := false
	if host != "" {
		rts, err := s.store.Routes(r.Context(), store.RouteFilter{DomainGUIDs: []string{ds[0].GUID}, Hosts: []string{host}})
		if err != nil {
			s.storeError(w, "route reservations", err)
			return
		}
		matching = len(rts) > 0
	}
	writeJSON(w, http.StatusOK, map[string]bool{"matching_route": matching})
}

// listRouteDestinations answers GET /v3/routes/{guid}/destinations.
func (s *Server) listRouteDestinations(w http.ResponseWriter, r *http.Request) {
	rt, ok := s.visibleRoute(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Destinations []ccDestination `json:"destinations"`
		Links        ccLinks         `json:"links"`
	}{ccDestinationsOf(routeJSON(rt)), links(r, "self", "/v3/routes/"+rt.GUID+"/destinations", "route", "/v3/routes/"+rt.GUID)})
}

// listAppRoutes answers GET /v3/apps/{guid}/routes.
func (s *Server) listAppRoutes(w http.ResponseWriter, r *http.Request) {
	a, ok := s.visibleApp(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	rts, err := s.store.Routes(r.Context(), store.RouteFilter{AppGUIDs: []string{a.GUID}, SpaceGUIDs: []string{a.SpaceGUID}})
	if err != nil {
		s.storeError(w, "list app routes", err)
		return
	}
	out := make([]ccRoute, len(rts))
	for i, rt := range rts {
		out[i] = ccRouteOf(r, rt)
	}
	writeList(w, r, out)
}

// roleTypes are Cloud Foundry's roles.
var roleTypes = []string{"organization_user", "organization_auditor", "organization_manager", "organization_billing_manager",
	"space_developer", "space_auditor", "space_manager", "space_supporter"}

// ccRole is a role as POST /v3/roles answers it.
type ccRole struct {
	GUID          string    `json:"guid"`
	Type          string    `json:"type"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	Relationships struct {
		User         api.ToOne   `json:"user"`
		Organization ccNullToOne `json:"organization"`
		Space        ccNullToOne `json:"space"`
	} `json:"relationships"`
	Links ccLinks `json:"links"`
}

// createRole answers POST /v3/roles, which cf create-org and create-space
// send to make their caller a manager of what it made. trellis grants
// access by token scope (an admin manages everything), so the role is
// checked and answered but not kept.
func (s *Server) createRole(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Type          string `json:"type"`
		Relationships struct {
			User struct {
				Data struct {
					GUID     string `json:"guid"`
					Username string `json:"username"`
					Origin   string `json:"origin"`
				} `json:"data"`
			} `json:"user"`
			Organization *api.ToOne `json:"organization"`
			Space        *api.ToOne `json:"space"`
		} `json:"relationships"`
	}
	if !readV3(w, r, &req) {
		return
	}
	if !slices.Contains(roleTypes, req.Type) {
		writeV3Error(w, http.StatusUnprocessableEntity, fmt.Sprintf("Type must be one of the allowed types [%s]", strings.Join(roleTypes, ", ")))
		return
	}
	u := req.Relationships.User.Data
	if u.GUID == "" && u.Username == "" {
		writeV3Error(w, http.StatusUnprocessableEntity, "Relationships User must be given: a user guid or username")
		return
	}
	now := time.Now().UTC()
	role := ccRole{GUID: uuid.NewString(), Type: req.Type, CreatedAt: now, UpdatedAt: now}
	role.Relationships.User.Data.GUID = u.GUID
	if strings.HasPrefix(req.Type, "organization_") {
		if req.Relationships.Organization == nil || req.Relationships.Space != nil {
			writeV3Error(w, http.StatusUnprocessableEntity, "Relationships Organization must be given (and no space) for an organization role")
			return
		}
		g := req.Relationships.Organization.Data.GUID
		if orgs, err := s.store.Orgs(r.Context(), store.OrgFilter{GUIDs: []string{g}}); err != nil {
			s.storeError(w, "create role", err)
			return
		} else if len(orgs) == 0 {
			writeV3Error(w, http.StatusUnprocessableEntity, "Invalid organization. Ensure the organization exists and you have access to it.")
			return
		}
		role.Relationships.Organization.Data = &api.Ref{GUID: g}
	} else {
		if req.Relationships.Space == nil || req.Relationships.Organization != nil {
			writeV3Error(w, http.StatusUnprocessableEntity, "Relationships Space must be given (and no organization) for a space role")
			return
		}
		g := req.Relationships.Space.Data.GUID
		if sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: []string{g}}); err != nil {
			s.storeError(w, "create role", err)
			return
		} else if len(sps) == 0 {
			writeV3Error(w, http.StatusUnprocessableEntity, "Invalid space. Ensure that the space exists and you have access to it.")
			return
		}
		role.Relationships.Space.Data = &api.Ref{GUID: g}
	}
	role.Links = links(r, "self", "/v3/roles/"+role.GUID)
	writeJSON(w, http.StatusCreated, role)
}

// listEmpty answers a list of what trellis does not have (service route
// bindings, deployments, packages, ...): always empty.
func (s *Server) listEmpty(w http.ResponseWriter, r *http.Request) {
	writeList[struct{}](w, r, nil)
}

// v3NotFound answers any /v3 request no route serves: 405 (with Allow) when
// other methods serve the path, else Cloud Controller's CF-NotFound.
func (s *Server) v3NotFound(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range corsMethods {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := s.mux.Handler(probe); strings.HasPrefix(pattern, m+" ") {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, api.V3Errors{Errors: []api.V3Error{{
			Detail: fmt.Sprintf("Method %s is not allowed for %s: use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")),
			Title:  "CF-NotFound", Code: 10000}}})
		return
	}
	writeJSON(w, http.StatusNotFound, api.V3Errors{Errors: []api.V3Error{{Detail: "Unknown request", Title: "CF-NotFound", Code: 10000}}})
}

// getCurrentDroplet answers GET /v3/apps/{guid}/droplets/current: trellis
// apps run without droplets, which the CLI shows as nothing to show.
func (s *Server) getCurrentDroplet(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.visibleApp(w, r, r.PathValue("guid")); ok {
		writeV3Error(w, http.StatusNotFound, "Droplet not found")
	}
}

// getOrgIsolationSegment answers an org's default isolation segment:
// none, as trellis has no isolation segments.
func (s *Server) getOrgIsolationSegment(w http.ResponseWriter, r *http.Request) {
	o, ok := s.visibleOrg(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	g := "/v3/organizations/" + o.GUID + "/relationships/default_isolation_segment"
	writeJSON(w, http.StatusOK, struct {
		Data  *api.Ref `json:"data"`
		Links ccLinks  `json:"links"`
	}{nil, links(r, "self", g)})
}

// getSpaceIsolationSegment answers a space's isolation segment: none.
func (s *Server) getSpaceIsolationSegment(w http.ResponseWriter, r *http.Request) {
	sp, ok := s.visibleSpace(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	g := "/v3/spaces/" + sp.GUID + "/relationships/isolation_segment"
	writeJSON(w, http.StatusOK, struct {
		Data  *api.Ref `json:"data"`
		Links ccLinks  `json:"links"`
	}{nil, links(r, "self", g)})
}

// listSpaceSecurityGroups answers a space's running or staging security
// groups for cf space: the groups bound to it for that lifecycle and
// those enabled globally for it.
func (s *Server) listSpaceSecurityGroups(w http.ResponseWriter, r *http.Request) {
	sp, ok := s.visibleSpace(w, r, r.PathValue("guid"))
	if !ok {
		return
	}
	gs, err := s.store.SecurityGroups(r.Context(), store.SecurityGroupFilter{})
	if err != nil {
		s.storeError(w, "list security groups", err)
		return
	}
	staging := strings.HasSuffix(r.URL.Path, "/staging_security_groups")
	p := principalFrom(r.Context())
	out := []api.SecurityGroup{}
	for _, g := range gs {
		global, spaces := g.GlobalRunning, g.RunningSpaces
		if staging {
			global, spaces = g.GlobalStaging, g.StagingSpaces
		}
		if global || slices.Contains(spaces, sp.GUID) {
			out = append(out, securityGroupJSON(r, p, g))
		}
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// listRoles answers GET /v3/roles from what trellis knows: a user is a
// space developer of each space of its (user_spaces), and a network.write
// token of each of its spaces (the token is the user; an expired token
// holds no role). An admin sees every user's and token's roles, anyone
// else its own. Filters: types, space_guids, organization_guids,
// user_guids.
func (s *Server) listRoles(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	type grant struct {
		user, space string
		created     time.Time
		name        string // the user's or the token's
		isUser      bool
	}
	var grants []grant
	now := time.Now()
	if p.admin() || p.UserGUID == "" {
		var f store.TokenFilter
		if !p.admin() {
			f.GUIDs = []string{p.TokenGUID}
		}
		toks, err := s.store.Tokens(r.Context(), f)
		if err != nil {
			s.storeError(w, "list roles", err)
			return
		}
		for _, t := range toks {
			if t.Scope != ScopeWrite || t.Expired(now) {
				continue
			}
			for _, sp := range t.SpaceGUIDs {
				grants = append(grants, grant{t.GUID, sp, t.CreatedAt, t.Name, false})
			}
		}
	}
	if p.admin() || p.UserGUID != "" {
		var f store.UserFilter
		if !p.admin() {
			f.GUIDs = []string{p.UserGUID}
		}
		us, err := s.store.Users(r.Context(), f)
		if err != nil {
			s.storeError(w, "list roles", err)
			return
		}
		for _, u := range us {
			if u.Admin {
				continue
			}
			for _, sp := range u.Spaces {
				grants = append(grants, grant{u.GUID, sp.SpaceGUID, u.CreatedAt, u.Name, true})
			}
		}
	}
	types, users, spaces := query(r, "types"), query(r, "user_guids"), query(r, "space_guids")
	if len(types) > 0 && !slices.Contains(types, "space_developer") {
		writeList[ccRole](w, r, nil)
		return
	}
	if orgs := query(r, "organization_guids"); len(orgs) > 0 {
		in, err := s.spacesOfOrgs(r.Context(), spaces, orgs)
		if err != nil {
			s.storeError(w, "list roles", err)
			return
		}
		if len(in) == 0 {
			writeList[ccRole](w, r, nil)
			return
		}
		spaces = in
	}
	var out []ccRole
	who := map[string]grant{}
	for _, g := range grants {
		if (len(users) > 0 && !slices.Contains(users, g.user)) || (len(spaces) > 0 && !slices.Contains(spaces, g.space)) {
			continue
		}
		role := ccRole{GUID: uuid.NewSHA1(uuid.NameSpaceURL, []byte("trellis:role:"+g.user+":"+g.space)).String(),
			Type: "space_developer", CreatedAt: g.created.UTC(), UpdatedAt: g.created.UTC()}
		role.Relationships.User.Data.GUID = g.user
		role.Relationships.Space.Data = &api.Ref{GUID: g.space}
		role.Links = links(r, "self", "/v3/roles/"+role.GUID, "user", "/v3/users/"+g.user, "space", "/v3/spaces/"+g.space)
		out = append(out, role)
		who[g.user] = g
	}
	if !slices.Contains(strings.Split(r.URL.Query().Get("include"), ","), "user") {
		writeList(w, r, out)
		return
	}
	// include=user (cf space-users): the page's users, as Cloud
	// Controller includes them; a token is a client (no username, no
	// origin), a user is UAA's.
	writeListIncluded(w, r, out, func(page []ccRole) any {
		type ccUser struct {
			GUID             string    `json:"guid"`
			Username         *string   `json:"username"`
			PresentationName string    `json:"presentation_name"`
			Origin           *string   `json:"origin"`
			CreatedAt        time.Time `json:"created_at"`
			UpdatedAt        time.Time `json:"updated_at"`
			Links            ccLinks   `json:"links"`
		}
		users := []ccUser{}
		seen := map[string]bool{}
		for _, role := range page {
			g := who[role.Relationships.User.Data.GUID]
			if seen[g.user] {
				continue
			}
			seen[g.user] = true
			u := ccUser{GUID: g.user, PresentationName: g.name, CreatedAt: g.created.UTC(), UpdatedAt: g.created.UTC(),
				Links: links(r, "self", "/v3/users/"+g.user)}
			if g.isUser {
				name, origin := g.name, "uaa"
				u.Username, u.Origin = &name, &origin
			}
			users = append(users, u)
		}
		return map[string]any{"users": users}
	})
}
