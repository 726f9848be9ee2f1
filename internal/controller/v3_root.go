package controller

import "net/http"

// ccAPIVersion is the Cloud Controller v3 version trellis answers as: the
// cf CLI needs 3.99.0 or later, and from 3.211.0 on it reads app instances
// with /v3/processes?embed=process_instances (one request for cf apps)
// rather than a stats request per process.
const ccAPIVersion = "3.211.0"

// baseURL is the API's absolute URL as the request reached it. (The auth
// work defines the same; at the merge, this file gives way to its.)
func baseURL(r *http.Request) string { return "https://" + r.Host }

// rootInfo answers GET / (no token), Cloud Controller's root document:
// where the v3 API, the token endpoints and the policy API are. The auth
// work (issue 15) owns this document; this is the least the resources
// need.
func (s *Server) rootInfo(w http.ResponseWriter, r *http.Request) {
	b := baseURL(r)
	link := func(path string) map[string]any { return map[string]any{"href": b + path} }
	v3 := link("/v3")
	v3["meta"] = map[string]string{"version": ccAPIVersion}
	writeJSON(w, http.StatusOK, map[string]any{"links": map[string]any{
		"self": link(""), "cloud_controller_v2": nil, "cloud_controller_v3": v3,
		"network_policy_v0": nil, "network_policy_v1": link("/networking/v1/external"),
		"login": link(""), "uaa": link(""), "credhub": nil, "routing": nil,
		"logging": nil, "log_cache": nil, "log_stream": nil, "app_ssh": nil,
	}})
}
