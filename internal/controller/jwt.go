package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"
)

// The JWTs the controller signs for users and clients, in the shape of
// Cloud Foundry's UAA tokens (the cf CLI decodes them, unverified, for
// user_name, user_id, origin, client_id and exp). They are signed with
// ES256 by a P-256 key made by the first controller to need it and kept in
// the store's settings, so that every controller sharing the store signs
// and verifies with the same key; its public half is at /token_keys.

// jwtKeySetting is the settings key of the signing key (PKCS #8 PEM).
const jwtKeySetting = "jwt_signing_key"

// maxJWT bounds the length of a bearer JWT: ours are well under 2 KiB.
const maxJWT = 8192

// Token uses: an access token authenticates API requests; a refresh token
// only gets new access tokens at /oauth/token.
const (
	useAccess  = "access"
	useRefresh = "refresh"
)

// jwtClaims are the claims of the controller's tokens: UAA's, and Use.
type jwtClaims struct {
	JTI       string   `json:"jti"`
	Sub       string   `json:"sub"`
	Scope     []string `json:"scope"`
	ClientID  string   `json:"client_id"`
	CID       string   `json:"cid"`
	Azp       string   `json:"azp"`
	GrantType string   `json:"grant_type"`
	UserID    string   `json:"user_id,omitempty"`
	Origin    string   `json:"origin,omitempty"`
	UserName  string   `json:"user_name,omitempty"`
	Email     string   `json:"email,omitempty"`
	IAT       int64    `json:"iat"`
	EXP       int64    `json:"exp"`
	ISS       string   `json:"iss"`
	ZID       string   `json:"zid"`
	AUD       []string `json:"aud"`
	// RevSig ties the token to the user's password hash (or the trellis
	// token it was issued for): a new password or a revoked token makes
	// every JWT signed before it fail, as UAA's revocable tokens do.
	RevSig string `json:"rev_sig"`
	// Use is useAccess or useRefresh.
	Use string `json:"trellis_use"`
}

type jwtHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// jwtSigner is the controller's signing key and its key ID.
type jwtSigner struct {
	key *ecdsa.PrivateKey
	kid string
}

// jwtKeys loads the signing key from the store, making and storing one if
// the store has none, once per Server: the key never changes.
type jwtKeys struct {
	mu     sync.Mutex
	signer *jwtSigner
}

// signer returns the store's signing key.
func (s *Server) signer(ctx context.Context) (*jwtSigner, error) {
	s.jwt.mu.Lock()
	defer s.jwt.mu.Unlock()
	if s.jwt.signer != nil {
		return s.jwt.signer, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	stored, err := s.store.EnsureSetting(ctx, jwtKeySetting, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	if err != nil {
		return nil, fmt.Errorf("token signing key: %w", err)
	}
	sg, err := parseSigner(stored)
	if err != nil {
		return nil, fmt.Errorf("token signing key in the store: %w", err)
	}
	s.jwt.signer = sg
	return sg, nil
}

// parseSigner parses a PKCS #8 PEM P-256 key.
func parseSigner(pemText string) (*jwtSigner, error) {
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("not a P-256 ECDSA key")
	}
	pub, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(pub)
	return &jwtSigner{key: ec, kid: "trellis-" + hex.EncodeToString(sum[:8])}, nil
}

var b64 = base64.RawURLEncoding

// sign returns c as a signed compact JWT.
func (sg *jwtSigner) sign(c jwtClaims) (string, error) {
	h, err := json.Marshal(jwtHeader{Alg: "ES256", Kid: sg.kid, Typ: "JWT"})
	if err != nil {
		return "", err
	}
	p, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signed := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, sg.key, sum[:])
	if err != nil {
		return "", err
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + b64.EncodeToString(sig[:]), nil
}

// Why a JWT is refused.
var (
	errJWTMalformed = errors.New("malformed token")
	errJWTSignature = errors.New("token signature does not verify")
	errJWTExpired   = errors.New("token expired")
)

// looksLikeJWT tells a JWT from a trellis token before parsing it.
func looksLikeJWT(v string) bool {
	return !strings.HasPrefix(v, tokenPrefix) && strings.Count(v, ".") == 2 && len(v) <= maxJWT
}

// verify checks a compact JWT's header (ES256, this key), signature and
// expiry at now, and returns its claims. Only the algorithm the controller
// signs with is accepted: never "none", never another key.
func (sg *jwtSigner) verify(token string, now time.Time) (jwtClaims, error) {
	var c jwtClaims
	if len(token) > maxJWT {
		return c, errJWTMalformed
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return c, errJWTMalformed
	}
	hb, err1 := b64.DecodeString(parts[0])
	pb, err2 := b64.DecodeString(parts[1])
	sig, err3 := b64.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return c, errJWTMalformed
	}
	var h jwtHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return c, errJWTMalformed
	}
	if h.Alg != "ES256" || h.Kid != sg.kid || len(sig) != 64 {
		return c, errJWTSignature
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(&sg.key.PublicKey, sum[:], r, s) {
		return c, errJWTSignature
	}
	if err := json.Unmarshal(pb, &c); err != nil {
		return c, errJWTMalformed
	}
	if c.EXP == 0 || !now.Before(time.Unix(c.EXP, 0)) {
		return c, errJWTExpired
	}
	return c, nil
}

// jwk is the public key as UAA's /token_keys lists keys (RFC 7517).
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

func (sg *jwtSigner) jwk() jwk {
	var x, y [32]byte
	sg.key.PublicKey.X.FillBytes(x[:])
	sg.key.PublicKey.Y.FillBytes(y[:])
	return jwk{Kty: "EC", Crv: "P-256", X: b64.EncodeToString(x[:]), Y: b64.EncodeToString(y[:]), Kid: sg.kid, Alg: "ES256", Use: "sig"}
}

// revSig is the revocation signature of a token issued for subject with
// secret (a user's password hash, a trellis token's GUID): it changes when
// the secret does.
func revSig(subject, secret string) string {
	sum := sha256.Sum256([]byte(subject + "\x00" + secret))
	return hex.EncodeToString(sum[:8])
}
