package controller

// ccRoutes registers the Cloud Controller v3 endpoints the cf CLI reads
// beyond trellis's own v3 resources (see v3_cf.go, v3_processes.go), and
// the /v3 catch-all that answers CF-NotFound.
func (s *Server) ccRoutes() {
	m := s.handle
	m("GET /v3/organizations/{guid}", s.requireAuth(writeV3Error, anyScope, s.getOrg))
	m("DELETE /v3/organizations/{guid}", s.requireAuth(writeV3Error, adminScope, s.deleteOrg))
	m("GET /v3/organizations/{guid}/domains", s.requireAuth(writeV3Error, anyScope, s.listOrgDomains))
	m("GET /v3/spaces/{guid}", s.requireAuth(writeV3Error, anyScope, s.getSpace))
	m("DELETE /v3/spaces/{guid}", s.requireAuth(writeV3Error, adminScope, s.deleteSpace))
	m("GET /v3/jobs/{guid}", s.requireAuth(writeV3Error, anyScope, s.getJob))
	m("GET /v3/domains/{guid}", s.requireAuth(writeV3Error, anyScope, s.getDomain))
	m("GET /v3/domains/{guid}/route_reservations", s.requireAuth(writeV3Error, anyScope, s.routeReservations))
	m("GET /v3/routes/{guid}/destinations", s.requireAuth(writeV3Error, anyScope, s.listRouteDestinations))
	m("GET /v3/apps/{guid}/routes", s.requireAuth(writeV3Error, anyScope, s.listAppRoutes))
	m("GET /v3/processes", s.requireAuth(writeV3Error, anyScope, s.listProcesses))
	m("GET /v3/processes/{guid}", s.requireAuth(writeV3Error, anyScope, s.getProcess))
	m("GET /v3/processes/{guid}/stats", s.requireAuth(writeV3Error, anyScope, s.getProcessStats))
	m("GET /v3/apps/{guid}/processes", s.requireAuth(writeV3Error, anyScope, s.listAppProcesses))
	m("GET /v3/apps/{guid}/processes/{type}", s.requireAuth(writeV3Error, anyScope, s.getAppProcess))
	m("GET /v3/apps/{guid}/processes/{type}/stats", s.requireAuth(writeV3Error, anyScope, s.getAppProcessStats))
	m("GET /v3/processes/{guid}/sidecars", s.requireAuth(writeV3Error, anyScope, s.listProcessSidecars))
	m("GET /v3/apps/{guid}/droplets/current", s.requireAuth(writeV3Error, anyScope, s.getCurrentDroplet))
	m("GET /v3/organizations/{guid}/relationships/default_isolation_segment", s.requireAuth(writeV3Error, anyScope, s.getOrgIsolationSegment))
	m("GET /v3/spaces/{guid}/running_security_groups", s.requireAuth(writeV3Error, anyScope, s.listSpaceSecurityGroups))
	m("GET /v3/spaces/{guid}/staging_security_groups", s.requireAuth(writeV3Error, anyScope, s.listSpaceSecurityGroups))
	m("GET /v3/spaces/{guid}/relationships/isolation_segment", s.requireAuth(writeV3Error, anyScope, s.getSpaceIsolationSegment))
	m("GET /v3/roles", s.requireAuth(writeV3Error, anyScope, s.listRoles))
	m("POST /v3/roles", s.requireAuth(writeV3Error, adminScope, s.createRole))
	for _, p := range []string{"/v3/service_route_bindings", "/v3/deployments", "/v3/packages", "/v3/droplets",
		"/v3/organization_quotas", "/v3/space_quotas", "/v3/service_instances", "/v3/isolation_segments"} {
		m("GET "+p, s.requireAuth(writeV3Error, anyScope, s.listEmpty))
	}
	// Unauthenticated, as the mux's own 404 and 405 are: it reads nothing.
	m("/v3/", s.v3NotFound)
}
