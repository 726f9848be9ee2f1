package controller

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// Application security groups, as Cloud Foundry's v3 API has them
// (/v3/security_groups). The admin creates, changes, binds and deletes
// them; a network.write token sees the groups that apply to its spaces
// (bound to one of them, or globally enabled), with only its own spaces
// among the bindings.

const securityGroupsPath = "/v3/security_groups"

// securityGroupRoutes registers the security group endpoints.
func (s *Server) securityGroupRoutes() {
	m := s.handle
	m("GET "+securityGroupsPath, s.requireAuth(writeV3Error, anyScope, s.listSecurityGroups))
	m("POST "+securityGroupsPath, s.requireAuth(writeV3Error, adminScope, s.createSecurityGroup))
	m("GET "+securityGroupsPath+"/{guid}", s.requireAuth(writeV3Error, anyScope, s.getSecurityGroup))
	m("PATCH "+securityGroupsPath+"/{guid}", s.requireAuth(writeV3Error, adminScope, s.updateSecurityGroup))
	m("DELETE "+securityGroupsPath+"/{guid}", s.requireAuth(writeV3Error, adminScope, s.deleteSecurityGroup))
	m("POST "+securityGroupsPath+"/{guid}/relationships/{lifecycle}", s.requireAuth(writeV3Error, adminScope, s.bindSecurityGroup))
	m("DELETE "+securityGroupsPath+"/{guid}/relationships/{lifecycle}/{space}", s.requireAuth(writeV3Error, adminScope, s.unbindSecurityGroup))
}

// securityGroupJSON is g as p may see it.
func securityGroupJSON(r *http.Request, p *principal, g store.SecurityGroup) api.SecurityGroup {
	refs := func(spaces []string) api.ToMany {
		out := api.ToMany{Data: []api.Ref{}}
		for _, sp := range spaces {
			if p.inSpace(sp) {
				out.Data = append(out.Data, api.Ref{GUID: sp})
			}
		}
		return out
	}
	rules := g.Rules
	if rules == nil {
		rules = []api.SecurityGroupRule{}
	}
	return api.SecurityGroup{GUID: g.GUID, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt, Name: g.Name,
		GloballyEnabled: api.GloballyEnabled{Running: g.GlobalRunning, Staging: g.GlobalStaging}, Rules: rules,
		Relationships: api.SecurityGroupRelationships{RunningSpaces: refs(g.RunningSpaces), StagingSpaces: refs(g.StagingSpaces)},
		Links:         map[string]api.Link{"self": {Href: "https://" + r.Host + securityGroupsPath + "/" + g.GUID}}}
}

// visibleTo reports whether p may see g.
func visibleTo(p *principal, g store.SecurityGroup) bool {
	if p.admin() || g.GlobalRunning || g.GlobalStaging {
		return true
	}
	for _, sp := range append(slices.Clip(g.RunningSpaces), g.StagingSpaces...) {
		if p.inSpace(sp) {
			return true
		}
	}
	return false
}

func (s *Server) listSecurityGroups(w http.ResponseWriter, r *http.Request) {
	f := store.SecurityGroupFilter{GUIDs: query(r, "guids"), Names: query(r, "names"),
		RunningSpaces: query(r, "running_space_guids"), StagingSpaces: query(r, "staging_space_guids")}
	for key, dst := range map[string]**bool{"globally_enabled_running": &f.GlobalRunning, "globally_enabled_staging": &f.GlobalStaging} {
		if v := r.URL.Query().Get(key); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				writeV3Error(w, http.StatusBadRequest, "The query parameter is invalid: "+key+" must be true or false")
				return
			}
			*dst = &b
		}
	}
	gs, err := s.store.SecurityGroups(r.Context(), f)
	if err != nil {
		s.storeError(w, "list security groups", err)
		return
	}
	p := principalFrom(r.Context())
	out := []api.SecurityGroup{}
	for _, g := range gs {
		if visibleTo(p, g) {
			out = append(out, securityGroupJSON(r, p, g))
		}
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// visibleSecurityGroup loads a group the caller may see, or answers 404.
func (s *Server) visibleSecurityGroup(w http.ResponseWriter, r *http.Request) (store.SecurityGroup, bool) {
	g, err := s.store.SecurityGroup(r.Context(), r.PathValue("guid"))
	if err == nil && !visibleTo(principalFrom(r.Context()), g) {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusNotFound, "Security group not found")
		return g, false
	}
	if err != nil {
		s.storeError(w, "get security group", err)
		return g, false
	}
	return g, true
}

func (s *Server) getSecurityGroup(w http.ResponseWriter, r *http.Request) {
	if g, ok := s.visibleSecurityGroup(w, r); ok {
		writeJSON(w, http.StatusOK, securityGroupJSON(r, principalFrom(r.Context()), g))
	}
}

// validRules answers 422 with CF's messages unless rules are valid.
func validRules(w http.ResponseWriter, rules []api.SecurityGroupRule) bool {
	if _, err := policy.ParseRules(rules); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return false
	}
	return true
}

func (s *Server) createSecurityGroup(w http.ResponseWriter, r *http.Request) {
	var req api.SecurityGroupRequest
	if !readV3(w, r, &req) {
		return
	}
	if req.Name == nil {
		writeV3Error(w, http.StatusUnprocessableEntity, "Name must be a string")
		return
	}
	if err := validateName("security group", *req.Name); err != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	g := store.SecurityGroup{Name: *req.Name, Rules: []api.SecurityGroupRule{}}
	if req.Rules != nil {
		if !validRules(w, *req.Rules) {
			return
		}
		g.Rules = *req.Rules
	}
	if ge := req.GloballyEnabled; ge != nil {
		g.GlobalRunning = ge.Running != nil && *ge.Running
		g.GlobalStaging = ge.Staging != nil && *ge.Staging
	}
	if rel := req.Relationships; rel != nil {
		g.RunningSpaces, g.StagingSpaces = refGUIDs(rel.RunningSpaces), refGUIDs(rel.StagingSpaces)
	}
	g, err := s.store.CreateSecurityGroup(r.Context(), g)
	switch {
	case errors.Is(err, store.ErrConflict):
		writeV3Error(w, http.StatusUnprocessableEntity, "Security group with name '"+*req.Name+"' already exists.")
		return
	case errors.Is(err, store.ErrNotFound):
		writeV3Error(w, http.StatusUnprocessableEntity, "Space guids "+err.Error()+": ensure the spaces exist")
		return
	case err != nil:
		s.storeError(w, "create security group", err)
		return
	}
	p := principalFrom(r.Context())
	s.log.Info("created security group", "name", g.Name, "guid", g.GUID, "rules", len(g.Rules), "user", p.user())
	writeJSON(w, http.StatusCreated, securityGroupJSON(r, p, g))
}

func refGUIDs(m api.ToMany) []string {
	out := make([]string, 0, len(m.Data))
	for _, d := range m.Data {
		out = append(out, d.GUID)
	}
	return out
}

func (s *Server) updateSecurityGroup(w http.ResponseWriter, r *http.Request) {
	var req api.SecurityGroupRequest
	if !readV3(w, r, &req) {
		return
	}
	if req.Relationships != nil {
		writeV3Error(w, http.StatusUnprocessableEntity, "Relationships cannot be changed here: use /relationships/running_spaces or staging_spaces")
		return
	}
	u := store.SecurityGroupUpdate{Name: req.Name, Rules: req.Rules}
	if req.Name != nil {
		if err := validateName("security group", *req.Name); err != nil {
			writeV3Error(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
	}
	if req.Rules != nil && !validRules(w, *req.Rules) {
		return
	}
	if ge := req.GloballyEnabled; ge != nil {
		u.GlobalRunning, u.GlobalStaging = ge.Running, ge.Staging
	}
	g, err := s.store.UpdateSecurityGroup(r.Context(), r.PathValue("guid"), u)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeV3Error(w, http.StatusNotFound, "Security group not found")
		return
	case errors.Is(err, store.ErrConflict):
		writeV3Error(w, http.StatusUnprocessableEntity, "Security group with name '"+*req.Name+"' already exists.")
		return
	case err != nil:
		s.storeError(w, "update security group", err)
		return
	}
	p := principalFrom(r.Context())
	s.log.Info("updated security group", "name", g.Name, "guid", g.GUID, "user", p.user())
	writeJSON(w, http.StatusOK, securityGroupJSON(r, p, g))
}

func (s *Server) deleteSecurityGroup(w http.ResponseWriter, r *http.Request) {
	guid := r.PathValue("guid")
	err := s.store.DeleteSecurityGroup(r.Context(), guid)
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusNotFound, "Security group not found")
		return
	}
	if err != nil {
		s.storeError(w, "delete security group", err)
		return
	}
	s.log.Info("deleted security group", "guid", guid, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusAccepted)
}

// lifecycleOf maps a relationship name onto a lifecycle.
func lifecycleOf(w http.ResponseWriter, r *http.Request) (string, bool) {
	switch r.PathValue("lifecycle") {
	case "running_spaces":
		return store.Running, true
	case "staging_spaces":
		return store.Staging, true
	}
	writeV3Error(w, http.StatusNotFound, "Unknown relationship: use running_spaces or staging_spaces")
	return "", false
}

func (s *Server) bindSecurityGroup(w http.ResponseWriter, r *http.Request) {
	life, ok := lifecycleOf(w, r)
	if !ok {
		return
	}
	var req api.ToMany
	if !readV3(w, r, &req) {
		return
	}
	spaces := refGUIDs(req)
	if len(spaces) == 0 {
		writeV3Error(w, http.StatusUnprocessableEntity, "Data must have at least one space guid")
		return
	}
	guid := r.PathValue("guid")
	err := s.store.BindSecurityGroup(r.Context(), guid, life, spaces)
	if errors.Is(err, store.ErrNotFound) {
		if _, gerr := s.store.SecurityGroup(r.Context(), guid); gerr != nil {
			writeV3Error(w, http.StatusNotFound, "Security group not found")
			return
		}
		writeV3Error(w, http.StatusUnprocessableEntity, "Spaces with guids "+err.Error()+": ensure the spaces exist")
		return
	}
	if err != nil {
		s.storeError(w, "bind security group", err)
		return
	}
	g, err := s.store.SecurityGroup(r.Context(), guid)
	if err != nil {
		s.storeError(w, "get security group", err)
		return
	}
	s.log.Info("bound security group", "guid", guid, "lifecycle", life, "spaces", spaces, "user", principalFrom(r.Context()).user())
	bound := g.RunningSpaces
	if life == store.Staging {
		bound = g.StagingSpaces
	}
	out := api.ToMany{Data: []api.Ref{}}
	for _, sp := range bound {
		out.Data = append(out.Data, api.Ref{GUID: sp})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) unbindSecurityGroup(w http.ResponseWriter, r *http.Request) {
	life, ok := lifecycleOf(w, r)
	if !ok {
		return
	}
	guid, space := r.PathValue("guid"), r.PathValue("space")
	err := s.store.UnbindSecurityGroup(r.Context(), guid, life, space)
	if errors.Is(err, store.ErrNotFound) {
		writeV3Error(w, http.StatusUnprocessableEntity, "Unable to unbind security group from space with guid '"+space+"'. Ensure the space is bound to this security group.")
		return
	}
	if err != nil {
		s.storeError(w, "unbind security group", err)
		return
	}
	s.log.Info("unbound security group", "guid", guid, "lifecycle", life, "space", space, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

// policySecurityGroups is what the compiler needs of the groups: their
// parsed rules and running bindings (trellis runs no staging). A group
// whose stored rules no longer parse is left out and logged.
func (s *Server) policySecurityGroups(gs []store.SecurityGroup) []policy.SecurityGroup {
	out := make([]policy.SecurityGroup, 0, len(gs))
	for _, g := range gs {
		rules, err := policy.ParseRules(g.Rules)
		if err != nil {
			s.log.Error("security group rules do not parse: group left out", "group", g.Name, "err", err)
			continue
		}
		out = append(out, policy.SecurityGroup{GUID: g.GUID, Name: g.Name, Rules: rules, GlobalRunning: g.GlobalRunning, RunningSpaces: g.RunningSpaces})
	}
	return out
}

// explainEgress answers /trellis/v1/explain?source=APP&to=IP[&protocol=P&port=N]:
// whether the app's instances may reach IP, by the first rule of the
// groups that apply to its space (global running ones first, then those
// bound to it, each by name) that allows it.
func (s *Server) explainEgress(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	proto := q.Get("protocol")
	if proto == "" {
		proto = policy.TCP
	}
	if proto != policy.TCP && proto != policy.UDP && proto != policy.ICMP {
		writeNetError(w, http.StatusBadRequest, "invalid protocol: specify tcp, udp or icmp")
		return
	}
	to, err := netip.ParseAddr(q.Get("to"))
	if err != nil || !to.Is4() {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid to %q: must be an IPv4 address", q.Get("to")))
		return
	}
	port := 0
	if proto != policy.ICMP {
		if port, err = strconv.Atoi(q.Get("port")); err != nil || port < 1 || port > 65535 {
			writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid port %q: must be in range 1-65535", q.Get("port")))
			return
		}
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: []string{q.Get("source")}})
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	if len(apps) == 0 || !principalFrom(r.Context()).inSpace(apps[0].SpaceGUID) {
		writeNetError(w, http.StatusForbidden, msgAppsNotFound)
		return
	}
	app := apps[0]
	spaceName := app.SpaceGUID
	if sps, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: []string{app.SpaceGUID}}); err == nil && len(sps) == 1 {
		spaceName = sps[0].Name
	}
	gs, err := s.store.SecurityGroups(r.Context(), store.SecurityGroupFilter{})
	if err != nil {
		s.storeError(w, "explain", err)
		return
	}
	out := api.EgressExplanation{Groups: []string{}}
	for _, g := range s.policySecurityGroups(gs) {
		if !g.GlobalRunning && !slices.Contains(g.RunningSpaces, app.SpaceGUID) {
			continue
		}
		out.Groups = append(out.Groups, g.Name)
		for i, rule := range g.Rules {
			if !out.Allowed && ruleAllows(rule, proto, to, port) {
				out.Allowed, out.Group, out.Rule = true, g.Name, i
				how := "bound to space " + spaceName
				if g.GlobalRunning {
					how = "globally enabled for running"
				}
				out.Reason = fmt.Sprintf("allowed: rule %d of security group %s (%s) covers %s to %s", i, g.Name, how, proto, target(to, port))
			}
		}
	}
	if !out.Allowed {
		out.Reason = fmt.Sprintf("egress: no security group allows %s to %s for app %s in space %s", proto, target(to, port), app.Name, spaceName)
		if len(out.Groups) > 0 {
			out.Reason += " (groups that apply: " + strings.Join(out.Groups, ", ") + ")"
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func target(to netip.Addr, port int) string {
	if port == 0 {
		return to.String()
	}
	return netip.AddrPortFrom(to, uint16(port)).String()
}

// ruleAllows reports whether rule admits proto to (to, port).
func ruleAllows(rule policy.Rule, proto string, to netip.Addr, port int) bool {
	if rule.Protocol != policy.All && rule.Protocol != proto {
		return false
	}
	in := false
	for _, d := range rule.Destinations {
		in = in || d.Contains(to)
	}
	if !in || rule.Protocol == policy.All || proto == policy.ICMP {
		return in
	}
	for _, p := range rule.Ports {
		if int(p.From) <= port && port <= int(p.To) {
			return true
		}
	}
	return false
}
