package controller

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-c2c/trellis/internal/store"
)

// The Cloud Foundry CLI's way in: the root document that `cf api` reads,
// and a UAA-shaped token endpoint that `cf auth` and `cf login` use. The
// controller is its own login server and UAA: the root document's login
// and uaa links are the controller itself.

// ccAPIVersion is the Cloud Controller v3 API version the root document
// announces. The cf CLI (v8) needs at least 3.99.0, and from 3.211.0 on it
// reads app instances with /v3/processes?embed=process_instances (one
// request for `cf apps`) rather than one /stats request per process.
const ccAPIVersion = "3.211.0"

// Token lifetimes: Cloud Foundry's defaults for the cf client.
const (
	accessTokenTTL  = 20 * time.Minute
	refreshTokenTTL = 14 * 24 * time.Hour
)

// cfClient is the OAuth client the cf CLI authenticates users as, with
// an empty secret (as on Cloud Foundry).
const cfClient = "cf"

// maxTokenForm bounds the body of a token request.
const maxTokenForm = 64 << 10

// uaaRoutes registers the root document, the login server and UAA
// endpoints the cf CLI uses, and the users API.
func (s *Server) uaaRoutes() {
	m := s.handle
	m("GET /{$}", s.rootInfo)
	m("GET /v3/info", s.v3Info)
	m("GET /v2/info", s.v2Info)
	m("GET /login", s.loginInfo)
	m("POST /oauth/token", s.oauthToken)
	m("GET /token_keys", s.tokenKeys)

	m("POST /trellis/v1/users", s.requireAuth(writeNetError, adminScope, s.createUser))
	m("GET /trellis/v1/users", s.requireAuth(writeNetError, adminScope, s.listUsers))
	m("DELETE /trellis/v1/users/{guid}", s.requireAuth(writeNetError, adminScope, s.deleteUser))
	m("PUT /trellis/v1/users/{guid}/password", s.requireAuth(writeNetError, anyScope, s.setUserPassword))
}

// baseURL is the controller's URL as the client reached it.
func baseURL(r *http.Request) string { return "https://" + r.Host }

type href struct {
	Href string         `json:"href"`
	Meta map[string]any `json:"meta,omitempty"`
}

// rootInfo answers GET / as Cloud Controller's root document.
func (s *Server) rootInfo(w http.ResponseWriter, r *http.Request) {
	base := baseURL(r)
	writeJSON(w, http.StatusOK, map[string]any{"links": map[string]any{
		"self":                &href{Href: base},
		"bits_service":        nil,
		"cloud_controller_v2": nil,
		"cloud_controller_v3": &href{Href: base + "/v3", Meta: map[string]any{"version": ccAPIVersion}},
		"network_policy_v0":   &href{Href: base + "/networking/v0/external"},
		"network_policy_v1":   &href{Href: base + "/networking/v1/external"},
		"login":               &href{Href: base},
		"uaa":                 &href{Href: base},
		"credhub":             nil,
		"routing":             nil,
		"logging":             nil,
		"log_cache":           nil,
		"log_stream":          nil,
		"app_ssh":             nil,
	}})
}

// v3Info answers GET /v3/info as Cloud Controller does.
func (s *Server) v3Info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"build": "", "cli_version": map[string]any{"minimum": nil, "recommended": nil},
		"custom": map[string]any{}, "description": "trellis controller", "name": "trellis", "version": 3,
		"osbapi_version": "", "links": map[string]any{"self": &href{Href: baseURL(r) + "/v3/info"}, "support": nil},
	})
}

// v2Info answers GET /v2/info, which older clients read for the token
// endpoint: trellis serves no v2 API.
func (s *Server) v2Info(w http.ResponseWriter, r *http.Request) {
	base := baseURL(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"name": "trellis", "description": "trellis controller (no v2 API: use v3)", "api_version": "2.999.0",
		"authorization_endpoint": base, "token_endpoint": base, "min_cli_version": nil, "min_recommended_cli_version": nil,
	})
}

// loginInfo answers GET /login as UAA does for a JSON client: the prompts
// `cf login` asks.
func (s *Server) loginInfo(w http.ResponseWriter, r *http.Request) {
	base := baseURL(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"app":       map[string]any{"version": "trellis"},
		"zone_name": "uaa",
		"entityID":  r.Host,
		"links":     map[string]any{"uaa": base, "login": base, "passwd": "/forgot_password", "register": "/create_account"},
		"prompts": map[string]any{
			"username": []string{"text", "Username"},
			"password": []string{"password", "Password"},
		},
	})
}

// tokenKeys answers GET /token_keys as UAA does: the public keys that
// verify the controller's tokens.
func (s *Server) tokenKeys(w http.ResponseWriter, r *http.Request) {
	sg, err := s.signer(r.Context())
	if err != nil {
		s.internalError(w, "token keys", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": []jwk{sg.jwk()}})
}

// oauthError writes UAA's error shape.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="trellis", error="`+code+`"`)
	}
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// badCredentials is UAA's answer to a wrong user name, password or client
// secret, which the cf CLI shows as "Credentials were rejected, please try
// again."
func badCredentials(w http.ResponseWriter) {
	oauthError(w, http.StatusUnauthorized, "unauthorized", "Bad credentials")
}

// tokenResponse is UAA's token answer.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	IDToken      string `json:"id_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope"`
	JTI          string `json:"jti"`
}

// oauthToken answers POST /oauth/token: grants password and refresh_token
// (client cf, empty secret) and client_credentials (a trellis token's GUID
// and value as client ID and secret).
func (s *Server) oauthToken(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenForm)
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); !strings.EqualFold(strings.TrimSpace(ct), "application/x-www-form-urlencoded") {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "cannot parse the form: "+err.Error())
		return
	}
	form := r.PostForm
	clientID, secret, basic := r.BasicAuth()
	if !basic {
		clientID, secret = form.Get("client_id"), form.Get("client_secret")
	}
	switch gt := form.Get("grant_type"); gt {
	case "password":
		s.passwordGrant(w, r, clientID, secret, form)
	case "refresh_token":
		s.refreshGrant(w, r, clientID, secret, form)
	case "client_credentials":
		s.clientCredentialsGrant(w, r, clientID, secret)
	case "":
		oauthError(w, http.StatusBadRequest, "invalid_request", "Missing grant type")
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("Unsupported grant type: %.64s", gt))
	}
}

// checkCFClient accepts the cf client with its empty secret.
func checkCFClient(w http.ResponseWriter, clientID, secret string) bool {
	if clientID != cfClient || secret != "" {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "Bad client credentials: user logins use client \"cf\" with an empty secret")
		return false
	}
	return true
}

func (s *Server) passwordGrant(w http.ResponseWriter, r *http.Request, clientID, secret string, form url.Values) {
	if !checkCFClient(w, clientID, secret) {
		return
	}
	name, pw := form.Get("username"), form.Get("password")
	if name == "" || pw == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "username and password are required")
		return
	}
	// Hashing takes memory: a bounded number at once; the others wait.
	if !s.hashing.acquire(r.Context()) {
		oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "too many logins at once: try again")
		return
	}
	defer s.hashing.release()
	if s.lockout.locked(name, time.Now()) {
		checkPassword(dummyHash(), pw)
		s.logAuthFailure(r, errors.New("user locked after repeated failures"))
		oauthError(w, http.StatusUnauthorized, "unauthorized", "Your account has been locked because of too many failed attempts to login.")
		return
	}
	u, err := s.store.UserByName(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) || len(pw) > maxPassword {
		s.lockout.fail(name, time.Now())
		checkPassword(dummyHash(), pw) // as long as a wrong password
		s.logAuthFailure(r, errors.New("bad credentials"))
		badCredentials(w)
		return
	}
	if err != nil {
		s.internalError(w, "log in", err)
		return
	}
	if !checkPassword(u.PasswordHash, pw) {
		s.lockout.fail(name, time.Now())
		s.logAuthFailure(r, errors.New("bad credentials"))
		badCredentials(w)
		return
	}
	s.lockout.succeed(name)
	s.issueUserTokens(w, r, u)
}

func (s *Server) refreshGrant(w http.ResponseWriter, r *http.Request, clientID, secret string, form url.Values) {
	if !checkCFClient(w, clientID, secret) {
		return
	}
	sg, err := s.signer(r.Context())
	if err != nil {
		s.internalError(w, "refresh token", err)
		return
	}
	c, err := sg.verify(form.Get("refresh_token"), time.Now())
	if err != nil || c.Use != useRefresh || c.UserID == "" {
		if err == nil {
			err = errJWTMalformed
		}
		s.logAuthFailure(r, err)
		oauthError(w, http.StatusUnauthorized, "invalid_token", "Invalid refresh token: "+err.Error())
		return
	}
	u, err := s.store.User(r.Context(), c.UserID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && revSig(u.GUID, u.PasswordHash) != c.RevSig) {
		oauthError(w, http.StatusUnauthorized, "invalid_token", "Invalid refresh token: the user was deleted or its password changed")
		return
	}
	if err != nil {
		s.internalError(w, "refresh token", err)
		return
	}
	s.issueUserTokens(w, r, u)
}

// userScope is the scope of u's tokens.
func userScope(u store.User) string {
	if u.Admin {
		return ScopeAdmin
	}
	return ScopeWrite
}

// issueUserTokens answers a user grant with an access and a refresh token.
func (s *Server) issueUserTokens(w http.ResponseWriter, r *http.Request, u store.User) {
	sg, err := s.signer(r.Context())
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	now := time.Now()
	scope := []string{"openid", userScope(u)}
	c := jwtClaims{JTI: uuid.NewString(), Sub: u.GUID, Scope: scope, ClientID: cfClient, CID: cfClient, Azp: cfClient,
		GrantType: "password", UserID: u.GUID, Origin: "uaa", UserName: u.Name, IAT: now.Unix(), EXP: now.Add(s.accessTTL).Unix(),
		ISS: baseURL(r) + "/oauth/token", ZID: "uaa", AUD: []string{"openid", cfClient}, RevSig: revSig(u.GUID, u.PasswordHash), Use: useAccess}
	access, err := sg.sign(c)
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	rc := c
	rc.JTI, rc.EXP, rc.Use = c.JTI+"-r", now.Add(refreshTokenTTL).Unix(), useRefresh
	refresh, err := sg.sign(rc)
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponse{AccessToken: access, TokenType: "bearer", RefreshToken: refresh,
		ExpiresIn: int64(s.accessTTL / time.Second), Scope: strings.Join(scope, " "), JTI: c.JTI})
}

// clientCredentialsGrant exchanges a trellis token (its GUID and value as
// client ID and secret) for a JWT of the same scope and spaces.
func (s *Server) clientCredentialsGrant(w http.ResponseWriter, r *http.Request, clientID, secret string) {
	if clientID == "" || !strings.HasPrefix(secret, tokenPrefix) || len(secret) > 128 {
		s.logAuthFailure(r, errors.New("bad client credentials"))
		badCredentials(w)
		return
	}
	t, err := s.store.TokenByHash(r.Context(), HashToken(secret))
	if errors.Is(err, store.ErrNotFound) || (err == nil && (subtle.ConstantTimeCompare([]byte(t.GUID), []byte(clientID)) != 1 || t.Expired(time.Now()))) {
		s.logAuthFailure(r, errors.New("bad client credentials"))
		badCredentials(w)
		return
	}
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	sg, err := s.signer(r.Context())
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	now := time.Now()
	exp := now.Add(s.accessTTL)
	if !t.ExpiresAt.IsZero() && t.ExpiresAt.Before(exp) {
		exp = t.ExpiresAt
	}
	c := jwtClaims{JTI: uuid.NewString(), Sub: t.GUID, Scope: []string{t.Scope}, ClientID: t.GUID, CID: t.GUID, Azp: t.GUID,
		GrantType: "client_credentials", IAT: now.Unix(), EXP: exp.Unix(), ISS: baseURL(r) + "/oauth/token", ZID: "uaa",
		AUD: []string{t.GUID}, RevSig: revSig(t.GUID, t.GUID), Use: useAccess}
	access, err := sg.sign(c)
	if err != nil {
		s.internalError(w, "issue token", err)
		return
	}
	writeJSON(w, http.StatusOK, tokenResponse{AccessToken: access, TokenType: "bearer",
		ExpiresIn: int64(time.Until(exp) / time.Second), Scope: t.Scope, JTI: c.JTI})
}

// authenticateJWT resolves a JWT the controller signed. The user (or
// trellis token) it was issued for is read from the store on every
// request, as trellis tokens are: deleting the user, changing its password
// or revoking the token stops the JWT at once, and its spaces are the
// user's now, not when the token was issued.
func (s *Server) authenticateJWT(ctx context.Context, value string) (*principal, error) {
	sg, err := s.signer(ctx)
	if err != nil {
		return nil, err
	}
	c, err := sg.verify(value, time.Now())
	if errors.Is(err, errJWTExpired) {
		return nil, errTokenExpired
	}
	if err != nil || c.Use != useAccess {
		return nil, errBadToken
	}
	if c.UserID == "" {
		ts, err := s.store.Tokens(ctx, store.TokenFilter{GUIDs: []string{c.ClientID}})
		if err != nil {
			return nil, err
		}
		if len(ts) == 0 || revSig(ts[0].GUID, ts[0].GUID) != c.RevSig {
			return nil, errBadToken
		}
		if ts[0].Expired(time.Now()) {
			return nil, errTokenExpired
		}
		t := ts[0]
		return &principal{TokenGUID: t.GUID, Name: t.Name, Scope: t.Scope, Spaces: t.SpaceGUIDs}, nil
	}
	u, err := s.store.User(ctx, c.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errBadToken
	}
	if err != nil {
		return nil, err
	}
	if revSig(u.GUID, u.PasswordHash) != c.RevSig {
		return nil, errBadToken
	}
	p := &principal{Name: u.Name, Scope: userScope(u), UserGUID: u.GUID}
	if !u.Admin {
		for _, sp := range u.Spaces {
			p.Spaces = append(p.Spaces, sp.SpaceGUID)
		}
	}
	return p, nil
}
