package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// basicAuth is "Basic base64(id:secret)".
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// testPassword is the password of the users tests create.
const testPassword = "correct horse battery"

// createUser creates a user through the API as the admin: an admin user,
// or a developer of spaces.
func (e *env) createUser(name string, admin bool, spaces ...string) api.User {
	e.t.Helper()
	req := api.UserRequest{Name: name, Password: testPassword, Admin: admin}
	for _, sp := range spaces {
		req.Spaces = append(req.Spaces, api.UserSpace{SpaceGUID: sp, Role: api.RoleDeveloper})
	}
	b, _ := json.Marshal(req)
	var u api.User
	e.must(e.admin, "POST", "/trellis/v1/users", string(b), 201, &u)
	return u
}

// tokenRequest posts form to /oauth/token as the cf CLI does (Basic cf:),
// or with the given Authorization header if auth is not empty.
func (e *env) tokenRequest(form url.Values, auth string) (int, map[string]any) {
	e.t.Helper()
	if auth == "" {
		auth = basicAuth(cfClient, "")
	}
	resp := e.send("", "POST", "/oauth/token", form.Encode(), map[string]string{
		"Content-Type": "application/x-www-form-urlencoded", "Authorization": auth})
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		e.t.Fatalf("POST /oauth/token: decode: %v", err)
	}
	return resp.StatusCode, out
}

// login returns u's access token, from a password grant.
func (e *env) login(u api.User, pw string) string {
	e.t.Helper()
	code, out := e.tokenRequest(url.Values{"grant_type": {"password"}, "username": {u.Name}, "password": {pw}}, "")
	if code != 200 {
		e.t.Fatalf("log in as %s = %d %v", u.Name, code, out)
	}
	return out["access_token"].(string)
}

// userJWT signs an access token for u that expires at exp.
func (e *env) userJWT(u api.User, exp time.Time) string {
	e.t.Helper()
	srv := e.srv.Config.Handler.(*Server)
	sg, err := srv.signer(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	su, err := e.store.User(context.Background(), u.GUID)
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := sg.sign(jwtClaims{JTI: "t", Sub: u.GUID, UserID: u.GUID, UserName: u.Name, ClientID: cfClient, Origin: "uaa",
		IAT: exp.Add(-time.Hour).Unix(), EXP: exp.Unix(), RevSig: revSig(su.GUID, su.PasswordHash), Use: useAccess})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// TestJWT: a signed token verifies with its key and no other; a changed
// payload, another algorithm (none, HS256), another key ID, an expired
// token and malformed ones are refused.
func TestJWT(t *testing.T) {
	newSigner := func() *jwtSigner {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return &jwtSigner{key: k, kid: "k"}
	}
	sg, other := newSigner(), newSigner()
	now := time.Now()
	c := jwtClaims{JTI: "j", UserID: "u", UserName: "dev", EXP: now.Add(time.Minute).Unix(), Use: useAccess}
	tok, err := sg.sign(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sg.verify(tok, now)
	if err != nil || !cmp.Equal(got, c) {
		t.Fatalf("verify(sign(%+v)) = %+v, %v", c, got, err)
	}
	parts := strings.Split(tok, ".")
	forged := c
	forged.UserID = "admin"
	fp, _ := json.Marshal(forged)
	none := b64.EncodeToString([]byte(`{"alg":"none","kid":"k","typ":"JWT"}`))
	hs := b64.EncodeToString([]byte(`{"alg":"HS256","kid":"k","typ":"JWT"}`))
	otherKid := b64.EncodeToString([]byte(`{"alg":"ES256","kid":"other","typ":"JWT"}`))
	expired, _ := sg.sign(jwtClaims{UserID: "u", EXP: now.Add(-time.Second).Unix()})
	noExp, _ := sg.sign(jwtClaims{UserID: "u"})
	otherSigned, _ := other.sign(c)
	for _, tc := range []struct {
		name, token string
		want        error
	}{
		{"changed payload", parts[0] + "." + b64.EncodeToString(fp) + "." + parts[2], errJWTSignature},
		{"alg none", none + "." + parts[1] + ".", errJWTSignature},
		{"alg none, signature kept", none + "." + parts[1] + "." + parts[2], errJWTSignature},
		{"alg HS256", hs + "." + parts[1] + "." + parts[2], errJWTSignature},
		{"another kid", otherKid + "." + parts[1] + "." + parts[2], errJWTSignature},
		{"another key", otherSigned, errJWTSignature},
		{"expired", expired, errJWTExpired},
		{"no exp", noExp, errJWTExpired},
		{"two parts", parts[0] + "." + parts[1], errJWTMalformed},
		{"not base64", parts[0] + ".%%%." + parts[2], errJWTMalformed},
		{"too long", tok + strings.Repeat("A", maxJWT), errJWTMalformed},
	} {
		if _, err := sg.verify(tc.token, now); err != tc.want {
			t.Errorf("verify(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestPassword: a hash matches its password and no other, salts differ,
// malformed or outrageous hashes match nothing, and new passwords are
// checked for length and encoding.
func TestPassword(t *testing.T) {
	h := HashPassword("s3cret-pass")
	if !checkPassword(h, "s3cret-pass") {
		t.Errorf("checkPassword(HashPassword(p), p) = false")
	}
	if checkPassword(h, "s3cret-pasS") || checkPassword(h, "") {
		t.Errorf("checkPassword accepts a wrong password")
	}
	if h2 := HashPassword("s3cret-pass"); h2 == h {
		t.Errorf("two hashes of one password are equal (no salt?): %s", h)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("HashPassword = %s, want argon2id PHC form", h)
	}
	parts := strings.Split(h, "$")
	for _, bad := range []string{"", "s3cret-pass", "$argon2i$" + strings.Join(parts[2:], "$"),
		strings.Replace(h, "m=19456", "m=99999999", 1), strings.Replace(h, "t=2", "t=0", 1),
		"$argon2id$v=19$m=19456,t=2,p=1$$", h + "$x"} {
		if checkPassword(bad, "s3cret-pass") {
			t.Errorf("checkPassword(%q) matched", bad)
		}
	}
	for pw, want := range map[string]string{
		"short":                    "invalid password: 5 bytes long, at least 8 needed",
		strings.Repeat("x", 1025):  "invalid password: 1025 bytes long, at most 1024 allowed",
		"abcdefgh\xff":             "invalid password: not valid UTF-8",
		"long enough and fine ü 🔑": "",
	} {
		got := ""
		if err := validatePassword(pw); err != nil {
			got = err.Error()
		}
		if got != want {
			t.Errorf("validatePassword(%.20q) = %q, want %q", pw, got, want)
		}
	}
}

// TestTokenEndpoint: the password, refresh_token and client_credentials
// grants answer as UAA does, and their errors are UAA's (the cf CLI shows
// "Credentials were rejected" for a 401 unauthorized).
func TestTokenEndpoint(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		dev := e.createUser("dev", false, space)
		ok, out := e.tokenRequest(url.Values{"grant_type": {"password"}, "username": {"dev"}, "password": {testPassword}}, "")
		if ok != 200 || out["token_type"] != "bearer" || out["scope"] != "openid network.write" || out["expires_in"] != float64(1200) {
			t.Fatalf("password grant = %d %v", ok, out)
		}
		access, refresh := out["access_token"].(string), out["refresh_token"].(string)
		// The claims the cf CLI reads.
		payload, _ := b64.DecodeString(strings.Split(access, ".")[1])
		var claims map[string]any
		json.Unmarshal(payload, &claims)
		for _, k := range []string{"user_name", "user_id", "origin", "client_id", "exp", "iat", "jti", "scope"} {
			if claims[k] == nil {
				t.Errorf("access token has no %q claim: %s", k, payload)
			}
		}
		if claims["user_name"] != "dev" || claims["user_id"] != dev.GUID {
			t.Errorf("access token claims = %s", payload)
		}
		e.must(access, "GET", "/v3/spaces", "", 200, nil)

		badCreds := map[string]any{"error": "unauthorized", "error_description": "Bad credentials"}
		tok := e.token(ScopeWrite, []string{space})
		tokGUID := (&authzFixtures{e: e}).tokenGUID(tok)
		for _, tc := range []struct {
			name string
			form url.Values
			auth string
			code int
			want map[string]any
		}{
			{"wrong password", url.Values{"grant_type": {"password"}, "username": {"dev"}, "password": {"wrong"}}, "", 401, badCreds},
			{"unknown user", url.Values{"grant_type": {"password"}, "username": {"nobody"}, "password": {testPassword}}, "", 401, badCreds},
			{"no password", url.Values{"grant_type": {"password"}, "username": {"dev"}}, "", 400,
				map[string]any{"error": "invalid_request", "error_description": "username and password are required"}},
			{"another client", url.Values{"grant_type": {"password"}, "username": {"dev"}, "password": {testPassword}}, basicAuth("admin", "x"), 401,
				map[string]any{"error": "invalid_client", "error_description": `Bad client credentials: user logins use client "cf" with an empty secret`}},
			{"no grant", url.Values{"username": {"dev"}}, "", 400, map[string]any{"error": "invalid_request", "error_description": "Missing grant type"}},
			{"unknown grant", url.Values{"grant_type": {"implicit"}}, "", 400,
				map[string]any{"error": "unsupported_grant_type", "error_description": "Unsupported grant type: implicit"}},
			{"access token as refresh token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {access}}, "", 401,
				map[string]any{"error": "invalid_token", "error_description": "Invalid refresh token: malformed token"}},
			{"garbage refresh token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"a.b.c"}}, "", 401,
				map[string]any{"error": "invalid_token", "error_description": "Invalid refresh token: malformed token"}},
			{"client credentials, wrong GUID", url.Values{"grant_type": {"client_credentials"}, "client_id": {"x"}, "client_secret": {tok}}, "-", 401, badCreds},
			{"client credentials, wrong secret", url.Values{"grant_type": {"client_credentials"}, "client_id": {tokGUID}, "client_secret": {tok + "x"}}, "-", 401, badCreds},
		} {
			auth := tc.auth
			if auth == "-" {
				auth = "Bearer none" // no Basic: the form carries the client
			}
			code, got := e.tokenRequest(tc.form, auth)
			if code != tc.code || !cmp.Equal(got, tc.want) {
				t.Errorf("%s: POST /oauth/token = %d %v, want %d %v", tc.name, code, got, tc.code, tc.want)
			}
		}
		// Not a form.
		if code, body := e.do("", "POST", "/oauth/token", `{"grant_type":"password"}`); code != 400 || !strings.Contains(body, "invalid_request") {
			t.Errorf("POST /oauth/token with JSON = %d %s, want 400 invalid_request", code, body)
		}

		// The refresh token gets a new access token, until the password
		// changes: then both the old access and refresh tokens fail.
		code, out := e.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}, "")
		if code != 200 || out["access_token"] == nil {
			t.Fatalf("refresh grant = %d %v", code, out)
		}
		e.must(e.admin, "PUT", "/trellis/v1/users/"+dev.GUID+"/password", `{"password":"a new password"}`, 204, nil)
		if code, body := e.do(access, "GET", "/v3/spaces", ""); code != 401 || !strings.Contains(body, `"CF-InvalidAuthToken"`) || !strings.Contains(body, `"code":1000`) {
			t.Errorf("GET /v3/spaces with a token from before the password change = %d %s, want 401 CF-InvalidAuthToken", code, body)
		}
		if code, out := e.tokenRequest(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}, ""); code != 401 || out["error"] != "invalid_token" {
			t.Errorf("refresh after the password change = %d %v, want 401 invalid_token", code, out)
		}
		// An expired JWT: CF-InvalidAuthToken on v3 (the cf CLI refreshes
		// on it), the policy API's message on the networking API.
		expired := e.userJWT(dev, time.Now().Add(-time.Minute))
		if code, body := e.do(expired, "GET", "/v3/apps", ""); code != 401 || !strings.Contains(body, `"CF-InvalidAuthToken"`) {
			t.Errorf("GET /v3/apps with an expired JWT = %d %s, want 401 CF-InvalidAuthToken", code, body)
		}
		if code, body := e.do(expired, "GET", policiesPath, ""); code != 401 || strings.TrimSpace(body) != `{"error":"token expired"}` {
			t.Errorf("GET policies with an expired JWT = %d %s, want 401 token expired", code, body)
		}
		if code, body := e.do("", "GET", "/v3/apps", ""); code != 401 || !strings.Contains(body, `"CF-NotAuthenticated"`) {
			t.Errorf("GET /v3/apps without a token = %d %s, want 401 CF-NotAuthenticated", code, body)
		}

		// Client credentials: a trellis token's GUID and value, for a JWT
		// of its scope and spaces, which stops when the token is revoked.
		code, out = e.tokenRequest(url.Values{"grant_type": {"client_credentials"}, "client_id": {tokGUID}, "client_secret": {tok}}, "Bearer none")
		if code != 200 || out["scope"] != ScopeWrite || out["refresh_token"] != nil {
			t.Fatalf("client_credentials grant = %d %v", code, out)
		}
		cc := out["access_token"].(string)
		e.must(cc, "GET", "/v3/apps", "", 200, nil)
		e.must(e.admin, "DELETE", tokensPath+"/"+tokGUID, "", 204, nil)
		if code, _ := e.do(cc, "GET", "/v3/apps", ""); code != 401 {
			t.Errorf("a client-credentials JWT after its token was revoked = %d, want 401", code)
		}
	})
}

// TestUserPassword: a user sets its own password (its tokens from before
// stop working; the new password logs in), not another's; a deleted
// user's token stops at once.
func TestUserPassword(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space := e.defaultSpace()
		dev, other := e.createUser("dev", false, space), e.createUser("other", false, space)
		tok := e.login(dev, testPassword)
		e.must(tok, "PUT", "/trellis/v1/users/"+other.GUID+"/password", `{"password":"hijacked-password"}`, 404, nil)
		e.must(tok, "PUT", "/trellis/v1/users/"+dev.GUID+"/password", `{"password":"short"}`, 422, nil)
		e.must(tok, "PUT", "/trellis/v1/users/"+dev.GUID+"/password", `{"password":"my new password"}`, 204, nil)
		e.must(tok, "GET", "/v3/apps", "", 401, nil)
		tok = e.login(dev, "my new password")
		e.must(tok, "GET", "/v3/apps", "", 200, nil)
		e.must(e.admin, "DELETE", "/trellis/v1/users/"+dev.GUID, "", 204, nil)
		e.must(tok, "GET", "/v3/apps", "", 401, nil)

		// Users and their errors.
		e.must(e.admin, "POST", "/trellis/v1/users", `{"name":"other","password":"long enough"}`, 409, nil)
		e.must(e.admin, "POST", "/trellis/v1/users", `{"name":"x","password":"long enough","admin":true,"spaces":[{"space_guid":"`+space+`","role":"developer"}]}`, 400, nil)
		e.must(e.admin, "POST", "/trellis/v1/users", `{"name":"x","password":"long enough","spaces":[{"space_guid":"`+space+`","role":"auditor"}]}`, 422, nil)
		e.must(e.admin, "POST", "/trellis/v1/users", `{"name":"x","password":"long enough","spaces":[{"space_guid":"nope","role":"developer"}]}`, 422, nil)
		e.must(e.admin, "POST", "/trellis/v1/users", `{"name":" x","password":"long enough"}`, 422, nil)
		var l api.List[api.User]
		e.must(e.admin, "GET", "/trellis/v1/users", "", 200, &l)
		if len(l.Resources) != 1 || l.Resources[0].Name != "other" {
			t.Errorf("users = %+v, want other alone", l.Resources)
		}
		if code, body := e.do(e.admin, "GET", "/trellis/v1/users", ""); strings.Contains(body, "argon2") || code != 200 {
			t.Errorf("GET /trellis/v1/users shows a password hash: %s", body)
		}
	})
}

// TestRootDocument: the links the cf CLI reads, absolute, to the
// controller itself.
func TestRootDocument(t *testing.T) {
	e := newEnv(t, "sqlite")
	var doc struct {
		Links map[string]*struct {
			Href string         `json:"href"`
			Meta map[string]any `json:"meta"`
		} `json:"links"`
	}
	e.must("", "GET", "/", "", 200, &doc)
	base := strings.Replace(e.srv.URL, "http://", "https://", 1)
	for k, want := range map[string]string{"self": base, "login": base, "uaa": base, "cloud_controller_v3": base + "/v3", "network_policy_v1": base + "/networking/v1/external"} {
		if doc.Links[k] == nil || doc.Links[k].Href != want {
			t.Errorf("links.%s = %+v, want %s", k, doc.Links[k], want)
		}
	}
	if v := doc.Links["cloud_controller_v3"].Meta["version"]; v != ccAPIVersion {
		t.Errorf("cloud_controller_v3 version = %v, want %s", v, ccAPIVersion)
	}
	var keys struct{ Keys []jwk }
	e.must("", "GET", "/token_keys", "", 200, &keys)
	if len(keys.Keys) != 1 || keys.Keys[0].Kty != "EC" || keys.Keys[0].Alg != "ES256" || !strings.HasPrefix(keys.Keys[0].Kid, "trellis-") {
		t.Errorf("token_keys = %+v", keys)
	}
	if code, body := e.do("", "GET", "/no-such-page", ""); code != 404 {
		t.Errorf("GET /no-such-page = %d %s, want 404 (the root document is / alone)", code, body)
	}
}

// TestLockout: five wrong passwords for a name within five minutes lock it
// (the right password too is refused) until they are five minutes old; a
// success before that forgets the failures; other names are not affected.
func TestLockout(t *testing.T) {
	var l lockout
	t0 := time.Now()
	for i := range lockoutFailures - 1 {
		l.fail("alice", t0.Add(time.Duration(i)*time.Second))
	}
	if l.locked("alice", t0.Add(time.Minute)) {
		t.Fatalf("locked after %d failures, want %d", lockoutFailures-1, lockoutFailures)
	}
	l.succeed("alice")
	for i := range lockoutFailures {
		l.fail("alice", t0.Add(time.Duration(i)*time.Second))
	}
	if !l.locked("alice", t0.Add(time.Minute)) {
		t.Errorf("not locked after %d failures", lockoutFailures)
	}
	if l.locked("bob", t0.Add(time.Minute)) {
		t.Errorf("bob locked by alice's failures")
	}
	if l.locked("alice", t0.Add(lockoutWindow+time.Second)) {
		t.Errorf("still locked once the failures are %v old", lockoutWindow)
	}
	for i := range maxLockoutNames + 10 {
		l.fail(fmt.Sprintf("u%d", i), t0)
	}
	if n := len(l.names); n > maxLockoutNames {
		t.Errorf("lockout keeps %d names, want at most %d", n, maxLockoutNames)
	}

	// Through the token endpoint, with UAA's message.
	e := newEnv(t, "sqlite")
	u := e.createUser("carol", false, e.defaultSpace())
	for range lockoutFailures {
		if code, _ := e.tokenRequest(url.Values{"grant_type": {"password"}, "username": {"carol"}, "password": {"wrong password"}}, ""); code != 401 {
			t.Fatalf("wrong password = %d, want 401", code)
		}
	}
	code, out := e.tokenRequest(url.Values{"grant_type": {"password"}, "username": {u.Name}, "password": {testPassword}}, "")
	if want := "Your account has been locked because of too many failed attempts to login."; code != 401 || out["error_description"] != want {
		t.Errorf("the right password after %d wrong ones = %d %v, want 401 %q", lockoutFailures, code, out, want)
	}
}

// TestHashSlots: at most maxHashing password hashes at once; a login
// waiting for a slot gives up when its request ends.
func TestHashSlots(t *testing.T) {
	h := make(hashSlots, maxHashing)
	for i := range maxHashing {
		if !h.acquire(context.Background()) {
			t.Fatalf("acquire %d of %d failed", i+1, maxHashing)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if h.acquire(ctx) {
		t.Fatalf("acquired slot %d of %d", maxHashing+1, maxHashing)
	}
	h.release()
	if !h.acquire(context.Background()) {
		t.Errorf("no slot after a release")
	}
}

// BenchmarkCheckPassword is the cost of a login's password check (argon2id,
// 19 MiB, 2 passes); BenchmarkHashToken, a trellis token's check, is the
// baseline.
func BenchmarkCheckPassword(b *testing.B) {
	h := HashPassword("correct horse battery")
	for b.Loop() {
		checkPassword(h, "correct horse battery")
	}
}

func BenchmarkHashToken(b *testing.B) {
	v, _ := NewToken()
	for b.Loop() {
		HashToken(v)
	}
}

// BenchmarkVerifyJWT is the signature and claims check of every request
// with a user's JWT (before its store read, which trellis tokens need too).
func BenchmarkVerifyJWT(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sg := &jwtSigner{key: k, kid: "k"}
	tok, _ := sg.sign(jwtClaims{UserID: "u", EXP: time.Now().Add(time.Hour).Unix(), Use: useAccess})
	for b.Loop() {
		if _, err := sg.verify(tok, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestJWTAcrossControllers: two controllers on one database sign with one
// key (the first's, kept in the store): a user logs in on one and its
// tokens work on the other, until the user is deleted through either.
func TestJWTAcrossControllers(t *testing.T) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			dbURL := storetest.URL(t, engine)
			c1, c2 := newEnvAt(t, dbURL, InstanceIdentity{}), newEnvAt(t, dbURL, InstanceIdentity{})
			k1, err := c1.srv.Config.Handler.(*Server).signer(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			k2, err := c2.srv.Config.Handler.(*Server).signer(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if k1.kid != k2.kid {
				t.Fatalf("controllers on one database sign with keys %s and %s, want one key", k1.kid, k2.kid)
			}
			u := c1.createUser("dev", false, c1.defaultSpace())
			tok := c1.login(u, testPassword)
			c2.must(tok, "GET", "/v3/apps", "", 200, nil)
			code, out := c2.tokenRequest(url.Values{"grant_type": {"password"}, "username": {"dev"}, "password": {testPassword}}, "")
			if code != 200 {
				t.Fatalf("log in on the second controller = %d %v", code, out)
			}
			c1.must(out["access_token"].(string), "GET", "/v3/apps", "", 200, nil)
			c2.must(c2.admin, "DELETE", "/trellis/v1/users/"+u.GUID, "", 204, nil)
			c1.must(tok, "GET", "/v3/apps", "", 401, nil)
		})
	}
}
