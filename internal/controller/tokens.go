package controller

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// bootstrapAdminName is the name of the bootstrap admin token, the one
// admin.json holds.
const bootstrapAdminName = "admin"

// createToken answers POST /trellis/v1/tokens (admin).
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.TokenRequest
	if !readV3(w, r, &req) {
		return
	}
	switch req.Scope {
	case ScopeAdmin:
		if len(req.Spaces) > 0 {
			writeNetError(w, http.StatusBadRequest, "scope network.admin takes no space_guids: it covers every space")
			return
		}
	case ScopeWrite:
		if len(req.Spaces) == 0 {
			writeNetError(w, http.StatusBadRequest, "scope network.write needs at least one space in space_guids")
			return
		}
		spaces, err := s.store.Spaces(r.Context(), store.SpaceFilter{GUIDs: req.Spaces})
		if err != nil {
			s.log.Error("create token", "err", err)
			writeNetError(w, http.StatusInternalServerError, "database read failed")
			return
		}
		for _, g := range req.Spaces {
			found := false
			for _, sp := range spaces {
				found = found || sp.GUID == g
			}
			if !found {
				writeNetError(w, http.StatusUnprocessableEntity, fmt.Sprintf("space %q does not exist", g))
				return
			}
		}
	default:
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid scope %q: must be network.admin or network.write", req.Scope))
		return
	}
	if req.Name != "" {
		if err := validateName("token", req.Name); err != nil {
			writeNetError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
	}
	maxTTL := int64(api.MaxTokenTTL / time.Second)
	if req.TTLSeconds < 0 || req.TTLSeconds > maxTTL {
		writeNetError(w, http.StatusBadRequest, fmt.Sprintf("invalid ttl_seconds %d: must be from 1 to %d (365 days); leave it out for the default, %d (30 days)",
			req.TTLSeconds, maxTTL, int64(api.DefaultTokenTTL/time.Second)))
		return
	}
	ttl := api.DefaultTokenTTL
	if req.TTLSeconds > 0 {
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	value, hash := NewToken()
	t, err := s.store.CreateToken(r.Context(), store.Token{Name: req.Name, Scope: req.Scope, SpaceGUIDs: req.Spaces, ExpiresAt: time.Now().Add(ttl)}, hash)
	if errors.Is(err, store.ErrNotFound) {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err != nil {
		s.log.Error("create token", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database create failed")
		return
	}
	s.log.Info("created token", "guid", t.GUID, "name", t.Name, "scope", t.Scope, "spaces", t.SpaceGUIDs, "expires_at", t.ExpiresAt, "user", principalFrom(r.Context()).user())
	out := tokenJSON(t)
	out.Value = value
	writeJSON(w, http.StatusCreated, out)
}

// tokenJSON is t as the API shows it, without its value.
func tokenJSON(t store.Token) api.Token {
	out := api.Token{GUID: t.GUID, Name: t.Name, Scope: t.Scope, Spaces: t.SpaceGUIDs, CreatedAt: t.CreatedAt, Bootstrap: t.Bootstrap}
	if !t.ExpiresAt.IsZero() {
		out.ExpiresAt = &t.ExpiresAt
	}
	if !t.LastUsedAt.IsZero() {
		out.LastUsedAt = &t.LastUsedAt
	}
	return out
}

// listTokens answers GET /trellis/v1/tokens: every token for an admin, the
// caller's own for others; never a token's value.
func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	var f store.TokenFilter
	if !p.admin() {
		f.GUIDs = []string{p.TokenGUID}
	}
	ts, err := s.store.Tokens(r.Context(), f)
	if err != nil {
		s.internalError(w, "list tokens", err)
		return
	}
	out := make([]api.Token, len(ts))
	for i, t := range ts {
		out[i] = tokenJSON(t)
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// revokeToken answers DELETE /trellis/v1/tokens/{guid}: an admin revokes
// any token, others only their own (another's is not found, as it is not
// theirs to see).
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	p, guid := principalFrom(r.Context()), r.PathValue("guid")
	if !p.admin() && guid != p.TokenGUID {
		writeNetError(w, http.StatusNotFound, "token not found")
		return
	}
	err := s.store.DeleteToken(r.Context(), guid)
	if errors.Is(err, store.ErrNotFound) {
		writeNetError(w, http.StatusNotFound, "token not found")
		return
	}
	if err != nil {
		s.internalError(w, "revoke token", err)
		return
	}
	s.log.Info("revoked token", "guid", guid, "user", p.user())
	w.WriteHeader(http.StatusNoContent)
}

// rotateAdminToken answers POST /trellis/v1/admin-token/rotation (admin):
// a new bootstrap admin token replaces the old one, which stops working on
// the next request on every controller.
func (s *Server) rotateAdminToken(w http.ResponseWriter, r *http.Request) {
	value, hash := NewToken()
	t, err := s.store.RotateBootstrapToken(r.Context(), store.Token{Name: bootstrapAdminName, Scope: ScopeAdmin}, hash)
	if errors.Is(err, store.ErrConflict) {
		writeNetError(w, http.StatusConflict, "the admin token is being rotated by another request: try again")
		return
	}
	if err != nil {
		s.internalError(w, "rotate admin token", err)
		return
	}
	s.log.Info("rotated the admin token", "guid", t.GUID, "user", principalFrom(r.Context()).user())
	out := tokenJSON(t)
	out.Value = value
	writeJSON(w, http.StatusCreated, out)
}
