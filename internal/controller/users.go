package controller

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// userJSON is u as the API shows it: never its password hash.
func userJSON(u store.User) api.User {
	out := api.User{GUID: u.GUID, Name: u.Name, Admin: u.Admin, Spaces: []api.UserSpace{}, CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt}
	for _, sp := range u.Spaces {
		out.Spaces = append(out.Spaces, api.UserSpace{SpaceGUID: sp.SpaceGUID, Role: sp.Role})
	}
	return out
}

// createUser answers POST /trellis/v1/users (admin).
func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	var req api.UserRequest
	if !readV3(w, r, &req) {
		return
	}
	if err := validateName("user", req.Name); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := validatePassword(req.Password); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if req.Admin && len(req.Spaces) > 0 {
		writeNetError(w, http.StatusBadRequest, "an admin user takes no spaces: it acts in every space")
		return
	}
	u := store.User{Name: req.Name, Admin: req.Admin}
	for i, sp := range req.Spaces {
		if sp.Role != api.RoleDeveloper {
			writeNetError(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid spaces[%d].role %q: must be %q (network.write in the space)", i, sp.Role, api.RoleDeveloper))
			return
		}
		if sp.SpaceGUID == "" {
			writeNetError(w, http.StatusUnprocessableEntity, fmt.Sprintf("invalid spaces[%d].space_guid: must not be empty", i))
			return
		}
		u.Spaces = append(u.Spaces, store.UserSpace{SpaceGUID: sp.SpaceGUID, Role: sp.Role})
	}
	u.PasswordHash = HashPassword(req.Password)
	u, err := s.store.CreateUser(r.Context(), u)
	switch {
	case errors.Is(err, store.ErrConflict):
		writeNetError(w, http.StatusConflict, fmt.Sprintf("user %q already exists", req.Name))
		return
	case errors.Is(err, store.ErrNotFound):
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	case err != nil:
		s.internalError(w, "create user", err)
		return
	}
	s.log.Info("created user", "guid", u.GUID, "name", u.Name, "admin", u.Admin, "spaces", len(u.Spaces), "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusCreated, userJSON(u))
}

// listUsers answers GET /trellis/v1/users (admin).
func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	us, err := s.store.Users(r.Context(), store.UserFilter{Names: query(r, "names")})
	if err != nil {
		s.internalError(w, "list users", err)
		return
	}
	out := make([]api.User, len(us))
	for i, u := range us {
		out[i] = userJSON(u)
	}
	writeJSON(w, http.StatusOK, list(r, out))
}

// deleteUser answers DELETE /trellis/v1/users/{guid} (admin).
func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request) {
	guid := r.PathValue("guid")
	err := s.store.DeleteUser(r.Context(), guid)
	if errors.Is(err, store.ErrNotFound) {
		writeNetError(w, http.StatusNotFound, "user not found")
		return
	}
	if err != nil {
		s.internalError(w, "delete user", err)
		return
	}
	s.log.Info("deleted user", "guid", guid, "user", principalFrom(r.Context()).user())
	w.WriteHeader(http.StatusNoContent)
}

// setUserPassword answers PUT /trellis/v1/users/{guid}/password: an admin
// sets any user's password, a user its own (another's is not found, as it
// is not theirs to see).
func (s *Server) setUserPassword(w http.ResponseWriter, r *http.Request) {
	p, guid := principalFrom(r.Context()), r.PathValue("guid")
	if !p.admin() && (p.UserGUID == "" || p.UserGUID != guid) {
		writeNetError(w, http.StatusNotFound, "user not found")
		return
	}
	var req api.PasswordRequest
	if !readV3(w, r, &req) {
		return
	}
	if err := validatePassword(req.Password); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	err := s.store.SetUserPassword(r.Context(), guid, HashPassword(req.Password))
	if errors.Is(err, store.ErrNotFound) {
		writeNetError(w, http.StatusNotFound, "user not found")
		return
	}
	if err != nil {
		s.internalError(w, "set password", err)
		return
	}
	s.log.Info("set a user's password", "guid", guid, "user", p.user())
	w.WriteHeader(http.StatusNoContent)
}
