package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// MaxPoliciesPerSource is Cloud Foundry's quota of policies per source app
// for callers that are not network admins.
const MaxPoliciesPerSource = 150

// Errors the networking API answers with, in Cloud Foundry's words.
const (
	msgAppsNotFound  = "one or more applications cannot be found or accessed"
	msgQuotaExceeded = "policy quota exceeded"
)

// apiVersion checks the {version} path segment: v0 and v1 are served, any
// other answers 406 as Cloud Foundry does. It reports whether to go on.
func apiVersion(w http.ResponseWriter, r *http.Request) (string, bool) {
	v := r.PathValue("version")
	if v != "v0" && v != "v1" {
		writeNetError(w, http.StatusNotAcceptable, fmt.Sprintf("api version '%s' not supported", v))
		return "", false
	}
	return v, true
}

func splitList(q string) []string {
	if q == "" {
		return nil
	}
	var out []string
	for _, s := range strings.Split(q, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request) {
	version, ok := apiVersion(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := store.PolicyFilter{IDs: splitList(q.Get("id")), SourceIDs: splitList(q.Get("source_id")), DestIDs: splitList(q.Get("dest_id"))}
	p := principalFrom(r.Context())
	if !p.admin() {
		f.SpaceGUIDs = p.Spaces
		if len(f.SpaceGUIDs) == 0 {
			writeJSON(w, http.StatusOK, api.PoliciesResponse{Policies: []api.Policy{}})
			return
		}
	}
	ps, err := s.store.Policies(r.Context(), f)
	if err != nil {
		s.log.Error("list policies", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database read failed")
		return
	}
	if version == "v0" {
		out := policy.V0PoliciesResponse{Policies: []policy.V0Policy{}}
		for _, sp := range ps {
			if sp.StartPort != sp.EndPort {
				continue // v0 cannot express a range; Cloud Foundry hides these too
			}
			out.Policies = append(out.Policies, policy.V0Policy{
				Source:      api.Source{ID: sp.SourceApp},
				Destination: policy.V0Destination{ID: sp.DestApp, Protocol: sp.Protocol, Port: sp.StartPort},
			})
		}
		out.TotalPolicies = len(out.Policies)
		writeJSON(w, http.StatusOK, out)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(appendPolicies(make([]byte, 0, 64+len(ps)*160), ps))
}

// appendPolicies renders a v1 list body exactly as encoding/json renders an
// api.PoliciesResponse, several times faster: listing all of a large
// foundation's policies is the API's heaviest call.
func appendPolicies(b []byte, ps []store.Policy) []byte {
	b = append(b, `{"total_policies":`...)
	b = strconv.AppendInt(b, int64(len(ps)), 10)
	b = append(b, `,"policies":[`...)
	for i, p := range ps {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"source":{"id":`...)
		b = appendJSONString(b, p.SourceApp)
		b = append(b, `},"destination":{"id":`...)
		b = appendJSONString(b, p.DestApp)
		b = append(b, `,"protocol":`...)
		b = appendJSONString(b, p.Protocol)
		b = append(b, `,"ports":{"start":`...)
		b = strconv.AppendInt(b, int64(p.StartPort), 10)
		b = append(b, `,"end":`...)
		b = strconv.AppendInt(b, int64(p.EndPort), 10)
		b = append(b, `}}}`...)
	}
	return append(b, `]}`...)
}

// appendJSONString appends s as a JSON string; the store's GUIDs and
// protocols need no escaping, anything else goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// readPolicies reads, decodes and validates a policies body. On failure it
// has answered the request and returns ok=false.
func (s *Server) readPolicies(w http.ResponseWriter, r *http.Request, version string) ([]store.Policy, bool) {
	if ct, ok := checkContentType(r); !ok {
		writeNetError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("unsupported content type %q: use application/json", ct))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, policy.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeNetError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body too large: limit is %d bytes", policy.MaxBodyBytes))
			return nil, false
		}
		writeNetError(w, http.StatusBadRequest, "failed reading request body")
		return nil, false
	}
	decode := policy.Decode
	if version == "v0" {
		decode = policy.DecodeV0
	}
	ps, err := decode(body)
	if err != nil {
		writeNetError(w, http.StatusBadRequest, "mapper: "+err.Error())
		return nil, false
	}
	out := make([]store.Policy, len(ps))
	for i, p := range ps {
		out[i] = store.Policy{
			SourceApp: p.Source.ID, DestApp: p.Destination.ID, Protocol: p.Destination.Protocol,
			StartPort: p.Destination.Ports.Start, EndPort: p.Destination.Ports.End,
		}
	}
	return out, true
}

func (s *Server) createPolicies(w http.ResponseWriter, r *http.Request) {
	version, ok := apiVersion(w, r)
	if !ok {
		return
	}
	ps, ok := s.readPolicies(w, r, version)
	if !ok {
		return
	}
	p := principalFrom(r.Context())
	var opts store.CreatePoliciesOptions
	if !p.admin() {
		if len(p.Spaces) == 0 {
			writeNetError(w, http.StatusForbidden, msgAppsNotFound)
			return
		}
		opts = store.CreatePoliciesOptions{MaxPerSource: MaxPoliciesPerSource, SpaceGUIDs: p.Spaces}
	}
	err := s.store.CreatePolicies(r.Context(), ps, opts)
	switch {
	case errors.Is(err, store.ErrAppNotFound):
		writeNetError(w, http.StatusForbidden, msgAppsNotFound)
		return
	case errors.Is(err, store.ErrQuotaExceeded):
		writeNetError(w, http.StatusForbidden, msgQuotaExceeded)
		return
	case errors.Is(err, store.ErrTagsExhausted):
		writeNetError(w, http.StatusConflict, store.ErrTagsExhausted.Error())
		return
	case err != nil:
		s.log.Error("create policies", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database create failed")
		return
	}
	s.log.Info("created policies", "count", len(ps), "user", p.user())
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) deletePolicies(w http.ResponseWriter, r *http.Request) {
	version, ok := apiVersion(w, r)
	if !ok {
		return
	}
	ps, ok := s.readPolicies(w, r, version)
	if !ok {
		return
	}
	p := principalFrom(r.Context())
	var spaces []string
	if !p.admin() {
		if !s.appsAccessible(w, r, p, ps) {
			return
		}
		spaces = p.Spaces
	}
	n, err := s.store.DeletePolicies(r.Context(), ps, spaces)
	if err != nil {
		s.log.Error("delete policies", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database delete failed")
		return
	}
	s.log.Info("deleted policies", "requested", len(ps), "deleted", n, "user", p.user())
	writeJSON(w, http.StatusOK, struct{}{})
}

// appsAccessible answers 403 unless every app the policies name exists in
// one of the caller's spaces, as Cloud Foundry's policy guard does.
func (s *Server) appsAccessible(w http.ResponseWriter, r *http.Request, p *principal, ps []store.Policy) bool {
	want := map[string]bool{}
	for _, sp := range ps {
		want[sp.SourceApp], want[sp.DestApp] = true, true
	}
	guids := make([]string, 0, len(want))
	for g := range want {
		guids = append(guids, g)
	}
	apps, err := s.store.Apps(r.Context(), store.AppFilter{GUIDs: guids, SpaceGUIDs: p.Spaces})
	if err != nil {
		s.log.Error("check app access", "err", err)
		writeNetError(w, http.StatusInternalServerError, "check access failed")
		return false
	}
	if len(apps) != len(want) {
		writeNetError(w, http.StatusForbidden, msgAppsNotFound)
		return false
	}
	return true
}

func (s *Server) listTags(w http.ResponseWriter, r *http.Request) {
	if _, ok := apiVersion(w, r); !ok {
		return
	}
	tags, err := s.store.Tags(r.Context())
	if err != nil {
		s.log.Error("list tags", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database read failed")
		return
	}
	out := api.TagsResponse{Tags: make([]api.Tag, len(tags))}
	for i, t := range tags {
		out.Tags[i] = api.Tag{ID: t.AppGUID, Tag: policy.FormatTag(t.Tag), Type: "app"}
	}
	writeJSON(w, http.StatusOK, out)
}
