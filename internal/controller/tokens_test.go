package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

const tokensPath = "/trellis/v1/tokens"

// createToken creates a token through the API as the admin.
func (e *env) createToken(body string) api.Token {
	e.t.Helper()
	var tok api.Token
	e.must(e.admin, "POST", tokensPath, body, 201, &tok)
	return tok
}

// listTokens lists the tokens as token sees them, and the raw body.
func (e *env) listTokens(token string) (map[string]api.Token, string) {
	e.t.Helper()
	code, body := e.do(token, "GET", tokensPath, "")
	var l api.List[api.Token]
	if err := json.Unmarshal([]byte(body), &l); code != 200 || err != nil {
		e.t.Fatalf("GET %s = %d %s (%v), want 200 and a list", tokensPath, code, body, err)
	}
	out := map[string]api.Token{}
	for _, t := range l.Resources {
		out[t.GUID] = t
	}
	return out, body
}

func TestTokenListRevokeTTL(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		a, b := e.defaultSpace(), e.createSpace("b")
		start := time.Now()
		w1 := e.createToken(fmt.Sprintf(`{"scope":"network.write","space_guids":[%q],"name":"ci","ttl_seconds":3600}`, a))
		w2 := e.createToken(fmt.Sprintf(`{"scope":"network.write","space_guids":[%q]}`, b))
		ops := e.createToken(`{"scope":"network.admin","name":"ops"}`)
		for _, c := range []struct {
			tok  api.Token
			want time.Duration
		}{{w1, time.Hour}, {w2, api.DefaultTokenTTL}, {ops, api.DefaultTokenTTL}} {
			if c.tok.ExpiresAt == nil || c.tok.ExpiresAt.Before(start.Add(c.want-time.Second)) || c.tok.ExpiresAt.After(time.Now().Add(c.want)) {
				t.Errorf("token %s expires at %v, want %v from now", c.tok.Name, c.tok.ExpiresAt, c.want)
			}
		}
		for _, ttl := range []string{"-1", "31536001", `"1h"`} {
			code, got := e.do(e.admin, "POST", tokensPath, `{"scope":"network.admin","ttl_seconds":`+ttl+`}`)
			if code != 400 || !strings.Contains(got, "ttl_seconds") {
				t.Errorf("POST tokens ttl_seconds %s = %d %s, want 400 naming ttl_seconds", ttl, code, got)
			}
		}

		// The admin lists every token, never a value.
		all, body := e.listTokens(e.admin)
		for _, tok := range []api.Token{w1, w2, ops} {
			if got, ok := all[tok.GUID]; !ok || got.Name != tok.Name || got.Scope != tok.Scope || got.ExpiresAt == nil {
				t.Errorf("admin's list has %s as %+v, want %+v", tok.GUID, got, tok)
			}
			if strings.Contains(body, tok.Value) {
				t.Errorf("token list shows the value of %s", tok.GUID)
			}
		}
		if strings.Contains(body, `"token"`) {
			t.Errorf("token list has a token field: %s", body)
		}
		// Last use: none yet for w1.
		if me := all[w1.GUID]; me.LastUsedAt != nil {
			t.Errorf("unused token's last_used_at = %v, want null", me.LastUsedAt)
		}

		// A writer lists its own token alone, with its last use.
		mine, _ := e.listTokens(w1.Value)
		if len(mine) != 1 || mine[w1.GUID].GUID != w1.GUID || mine[w1.GUID].Spaces[0] != a {
			t.Errorf("writer's list = %+v, want its own token alone", mine)
		}
		if used := mine[w1.GUID].LastUsedAt; used == nil || used.Before(start.Add(-time.Second)) {
			t.Errorf("last_used_at of a token just used = %v, want now", used)
		}

		// Not another's token; nor make or rotate tokens.
		e.must(w2.Value, "DELETE", tokensPath+"/"+w1.GUID, "", 404, nil)
		e.must(w2.Value, "DELETE", tokensPath+"/"+ops.GUID, "", 404, nil)
		e.must(w2.Value, "POST", tokensPath, `{"scope":"network.admin"}`, 403, nil)
		e.must(w2.Value, "POST", "/trellis/v1/admin-token/rotation", "", 403, nil)
		e.must(w1.Value, "GET", policiesPath, "", 200, nil)

		// Its own: revoked, then unknown (401, as a token never issued).
		e.must(w1.Value, "DELETE", tokensPath+"/"+w1.GUID, "", 204, nil)
		for _, path := range []string{policiesPath, "/v3/apps"} {
			code, got := e.do(w1.Value, "GET", path, "")
			if code != 401 || !strings.Contains(got, "failed to verify token with uaa") {
				t.Errorf("GET %s with a revoked token = %d %s, want 401 failed to verify token", path, code, got)
			}
		}
		// The admin revokes any.
		e.must(e.admin, "DELETE", tokensPath+"/"+w2.GUID, "", 204, nil)
		e.must(w2.Value, "GET", policiesPath, "", 401, nil)
		e.must(e.admin, "DELETE", tokensPath+"/"+w2.GUID, "", 404, nil)
		all, _ = e.listTokens(e.admin)
		if _, ok := all[w1.GUID]; ok {
			t.Errorf("revoked token %s still listed", w1.GUID)
		}
	})
}

func TestTokenExpired(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		value, hash := NewToken()
		if _, err := e.store.CreateToken(context.Background(), store.Token{Name: "old", Scope: ScopeAdmin, ExpiresAt: time.Now().Add(-time.Second)}, hash); err != nil {
			t.Fatal(err)
		}
		code, got := e.do(value, "GET", policiesPath, "")
		if code != 401 || got != `{"error":"token expired"}` {
			t.Errorf("networking API with an expired token = %d %s, want 401 token expired", code, got)
		}
		code, got = e.do(value, "GET", "/v3/apps", "")
		if code != 401 || got != `{"errors":[{"detail":"token expired","title":"CF-InvalidAuthToken","code":1000}]}` {
			t.Errorf("v3 API with an expired token = %d %s, want 401 token expired", code, got)
		}
		// A token a second from expiry works, then does not.
		soon := e.createToken(`{"scope":"network.admin","ttl_seconds":1}`)
		e.must(soon.Value, "GET", policiesPath, "", 200, nil)
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, got := e.do(soon.Value, "GET", policiesPath, "")
			if code == 401 && got == `{"error":"token expired"}` {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("token with ttl_seconds 1 still answers %d %s after 10s", code, got)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// TestTokenRevocationAcrossControllers: two controllers on one database; a
// token revoked, or the admin token rotated, through one stops working on
// the other at its next request.
func TestTokenRevocationAcrossControllers(t *testing.T) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			url := storetest.URL(t, engine)
			c1, c2 := newEnvAt(t, url, InstanceIdentity{}), newEnvAt(t, url, InstanceIdentity{})
			w := c1.createToken(fmt.Sprintf(`{"scope":"network.write","space_guids":[%q]}`, c1.defaultSpace()))
			c2.must(w.Value, "GET", policiesPath, "", 200, nil)
			c1.must(c1.admin, "DELETE", tokensPath+"/"+w.GUID, "", 204, nil)
			c2.must(w.Value, "GET", policiesPath, "", 401, nil)

			// The bootstrap admin token, as a controller writes it.
			cfgPath := filepath.Join(t.TempDir(), AdminConfigFile)
			if err := ensureAdminConfig(t.Context(), c1.store, cfgPath, "", c1.srv.URL, "", slog.New(slog.DiscardHandler)); err != nil {
				t.Fatal(err)
			}
			cfg, err := api.LoadClientConfig(cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			c2.must(cfg.Token, "GET", tokensPath, "", 200, nil)
			var rotated api.Token
			c1.must(cfg.Token, "POST", "/trellis/v1/admin-token/rotation", "", 201, &rotated)
			if !rotated.Bootstrap || rotated.Value == "" || rotated.ExpiresAt != nil {
				t.Errorf("rotated admin token = %+v, want a bootstrap token with a value and no expiry", rotated)
			}
			c2.must(cfg.Token, "GET", tokensPath, "", 401, nil)
			c2.must(rotated.Value, "GET", tokensPath, "", 200, nil)
			c2.must(c2.admin, "GET", tokensPath, "", 200, nil) // other admin tokens stay
		})
	}
}

// TestAdminConfigOnePerDatabase: the first controller on a database makes
// its admin token; a second one does not make another, takes the first's
// when given it, and a rotated one is not replaced by a restart.
func TestAdminConfigOnePerDatabase(t *testing.T) {
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			ctx := t.Context()
			url := storetest.URL(t, engine)
			st1, st2 := storetest.OpenURL(t, url), storetest.OpenURL(t, url)
			dir1, dir2 := t.TempDir(), t.TempDir()
			path1, path2 := filepath.Join(dir1, AdminConfigFile), filepath.Join(dir2, AdminConfigFile)
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			adminTokens := func() int {
				ts, err := st1.Tokens(ctx, store.TokenFilter{})
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, tok := range ts {
					if tok.Scope == ScopeAdmin {
						n++
					}
				}
				return n
			}

			if err := ensureAdminConfig(ctx, st1, path1, "", "https://c1:4002", "CA1", log); err != nil {
				t.Fatal(err)
			}
			first, err := api.LoadClientConfig(path1)
			if err != nil {
				t.Fatal(err)
			}
			if err := ensureAdminConfig(ctx, st2, path2, "", "https://c2:4002", "CA2", log); err != nil {
				t.Fatal(err)
			}
			if _, err := api.LoadClientConfig(path2); err == nil {
				t.Error("second controller wrote admin.json without being given the admin token")
			}
			if n := adminTokens(); n != 1 {
				t.Errorf("admin tokens after a second controller started = %d, want 1", n)
			}
			if !strings.Contains(logs.String(), "copy admin.json") {
				t.Errorf("second controller's log does not say how to get admin.json:\n%s", logs.String())
			}

			// Given the first's admin.json: the same token, its own URL and CA.
			if err := ensureAdminConfig(ctx, st2, path2, path1, "https://c2:4002", "CA2", log); err != nil {
				t.Fatal(err)
			}
			second, err := api.LoadClientConfig(path2)
			if err != nil || second.Token != first.Token || second.APIURL != "https://c2:4002" || second.CACert != "CA2" {
				t.Errorf("admin.json given the first's = %+v, %v; want token %s, c2's URL and CA", second, err, first.Token)
			}
			// Restarts keep it.
			if err := ensureAdminConfig(ctx, st1, path1, "", "https://c1:4003", "CA1", log); err != nil {
				t.Fatal(err)
			}
			if again, _ := api.LoadClientConfig(path1); again.Token != first.Token || again.APIURL != "https://c1:4003" {
				t.Errorf("admin.json after restart = %+v, want the same token at the new URL", again)
			}

			// Rotated: a restart on the old admin.json makes no new token,
			// and the old one is refused as --admin-config.
			value, hash := NewToken()
			if _, err := st1.RotateBootstrapToken(ctx, store.Token{Name: "admin", Scope: ScopeAdmin}, hash); err != nil {
				t.Fatal(err)
			}
			if err := ensureAdminConfig(ctx, st2, path2, "", "https://c2:4002", "CA2", log); err != nil {
				t.Fatal(err)
			}
			if n := adminTokens(); n != 1 {
				t.Errorf("admin tokens after a restart on a rotated admin.json = %d, want 1", n)
			}
			if err := ensureAdminConfig(ctx, st2, filepath.Join(t.TempDir(), AdminConfigFile), path1, "https://c2:4002", "CA2", log); err == nil || !strings.Contains(err.Error(), "not a valid admin token") {
				t.Errorf("--admin-config with a rotated token = %v, want refused", err)
			}
			fresh := api.ClientConfig{APIURL: "https://c1:4002", CACert: "CA1", Token: value}
			if err := fresh.Save(path1); err != nil {
				t.Fatal(err)
			}
			if err := ensureAdminConfig(ctx, st2, path2, path1, "https://c2:4002", "CA2", log); err != nil {
				t.Fatal(err)
			}
			if got, _ := api.LoadClientConfig(path2); got.Token != value {
				t.Errorf("admin.json given the rotated one has token %q, want the new one", got.Token)
			}
		})
	}
}
