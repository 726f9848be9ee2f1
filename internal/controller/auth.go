package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/store"
)

// Scopes a token may carry.
const (
	ScopeAdmin = "network.admin"
	ScopeWrite = "network.write"
)

// tokenPrefix marks trellis tokens so they are recognisable in logs and
// secret scanners.
const tokenPrefix = "trls_"

// principal is the authenticated caller of a request.
type principal struct {
	TokenGUID string
	Name      string
	Scope     string
	Spaces    []string // network.write only
	// UserGUID is the user a JWT was issued to (empty for trellis tokens
	// and client-credentials JWTs).
	UserGUID string
}

func (p *principal) admin() bool { return p.Scope == ScopeAdmin }

// inSpace reports whether the caller may act in space.
func (p *principal) inSpace(space string) bool {
	return p.admin() || slices.Contains(p.Spaces, space)
}

// user is how logs and CLI messages name the caller.
func (p *principal) user() string {
	if p.Name != "" {
		return p.Name
	}
	return p.TokenGUID
}

type principalKey struct{}

func principalFrom(ctx context.Context) *principal {
	p, _ := ctx.Value(principalKey{}).(*principal)
	return p
}

// NewToken returns a fresh random token value and the hash to store.
func NewToken() (value string, hash []byte) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	value = tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return value, HashToken(value)
}

// HashToken is what the store keeps of a token. Tokens carry 256 random
// bits, so a fast hash is enough: there is nothing to brute-force.
func HashToken(value string) []byte {
	sum := sha256.Sum256([]byte(value))
	return sum[:]
}

// The 401 messages are Cloud Foundry's policy server's, byte for byte (it
// verifies tokens with UAA; trellis verifies them against its store).
// A revoked token is unknown; an expired one says so, so that its holder
// knows to ask for a new one.
var (
	errMissingAuth  = errors.New("missing authorization header")
	errBadToken     = errors.New("failed to verify token with uaa")
	errTokenExpired = errors.New("token expired")
)

// authenticate resolves the bearer token of r.
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, errMissingAuth
	}
	scheme, value, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return nil, errBadToken
	}
	value = strings.TrimSpace(value)
	if looksLikeJWT(value) {
		return s.authenticateJWT(r.Context(), value)
	}
	if !strings.HasPrefix(value, tokenPrefix) || len(value) > 128 {
		return nil, errBadToken
	}
	t, err := s.store.TokenByHash(r.Context(), HashToken(value))
	if errors.Is(err, store.ErrNotFound) {
		return nil, errBadToken
	}
	if err != nil {
		return nil, err
	}
	// Read from the store on every request, never cached: a revocation or
	// rotation on any controller holds from the next request on.
	now := time.Now()
	if t.Expired(now) {
		return nil, errTokenExpired
	}
	if now.Sub(t.LastUsedAt) >= store.TokenTouchInterval {
		if err := s.store.TouchToken(r.Context(), t.GUID); err != nil {
			s.log.Warn("record token use", "token", t.GUID, "err", err)
		}
	}
	return &principal{TokenGUID: t.GUID, Name: t.Name, Scope: t.Scope, Spaces: t.SpaceGUIDs}, nil
}

// errorWriter writes an error in the shape of one API family.
type errorWriter func(w http.ResponseWriter, status int, msg string)

// requireAuth wraps h so that it runs only for an authenticated caller
// whose scope is one of scopes; others get 401 (with WWW-Authenticate) or
// 403 in the API family's error shape.
func (s *Server) requireAuth(writeErr errorWriter, scopes []string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err != nil {
			if errors.Is(err, errMissingAuth) || errors.Is(err, errBadToken) || errors.Is(err, errTokenExpired) {
				s.logAuthFailure(r, err)
				w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
				writeErr(w, http.StatusUnauthorized, err.Error())
				return
			}
			s.log.Error("authenticate", "err", err)
			writeErr(w, http.StatusInternalServerError, "failed to verify token: store unavailable")
			return
		}
		if !slices.Contains(scopes, p.Scope) {
			writeErr(w, http.StatusForbidden, "provided scopes ["+p.Scope+"] do not include allowed scopes ["+strings.Join(scopes, " ")+"]")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	}
}

var (
	anyScope   = []string{ScopeAdmin, ScopeWrite}
	adminScope = []string{ScopeAdmin}
)
