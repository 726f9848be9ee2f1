package controller

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.Token
	if !readV3(w, r, &req) {
		return
	}
	if req.GUID != "" || req.Value != "" || !req.CreatedAt.IsZero() {
		writeNetError(w, http.StatusBadRequest, "only scope, space_guids and name may be given")
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
	value, hash := NewToken()
	t, err := s.store.CreateToken(r.Context(), store.Token{Name: req.Name, Scope: req.Scope, SpaceGUIDs: req.Spaces}, hash)
	if errors.Is(err, store.ErrNotFound) {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err != nil {
		s.log.Error("create token", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database create failed")
		return
	}
	s.log.Info("created token", "guid", t.GUID, "name", t.Name, "scope", t.Scope, "spaces", t.SpaceGUIDs, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, api.Token{GUID: t.GUID, Name: t.Name, Scope: t.Scope, Spaces: t.SpaceGUIDs, Value: value, CreatedAt: t.CreatedAt})
}
