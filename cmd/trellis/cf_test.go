package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// Cloud Foundry's own CLI in scripts (cf_*.txtar): the unmodified cf
// binary, from $TRELLIS_CF_CLI or the project's ../shared/tools/cf/cf.
// Without one the scripts that need it ([cf]) are skipped, except under
// CI=true, where a missing binary fails them.

// cfBinary finds the cf CLI, or returns "".
func cfBinary() string {
	if p := os.Getenv("TRELLIS_CF_CLI"); p != "" {
		return p
	}
	for _, p := range []string{"../../../shared/tools/cf/cf", "/work/shared/tools/cf/cf"} {
		if abs, err := filepath.Abs(p); err == nil {
			if st, err := os.Stat(abs); err == nil && !st.IsDir() {
				return abs
			}
		}
	}
	return ""
}

// setupCF sets $CF and $CF_HOME for a script; under CI=true a missing
// binary is an error.
func setupCF(env *testscript.Env) error {
	bin := cfBinary()
	if bin == "" && os.Getenv("CI") == "true" {
		return fmt.Errorf("no cf CLI: set TRELLIS_CF_CLI or provide ../shared/tools/cf/cf (CI=true: the cf scripts must run)")
	}
	if bin != "" {
		if st, err := os.Stat(bin); err != nil || st.IsDir() {
			return fmt.Errorf("cf CLI %s: not a file (%v)", bin, err)
		}
	}
	env.Setenv("CF", bin)
	env.Setenv("CF_HOME", filepath.Join(env.WorkDir, "cf"))
	env.Setenv("CF_COLOR", "false")
	env.Values["cfgateway"] = &cfGateway{tokens: map[string]string{}}
	env.Values["cell"] = &scriptCell{}
	return nil
}

// cfCondition is the [cf] condition: the cf CLI is there.
func cfCondition(cond string) (bool, error) {
	if cond != "cf" {
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	return cfBinary() != "", nil
}

// cfGateway stands in front of the script's controller until the
// controller issues the JWTs the cf CLI insists on decoding (the auth
// work of issue 15): it hands the CLI an unsigned JWT naming a user and
// puts that user's trellis token on every request it forwards. Requests
// reach the controller otherwise unchanged (the Host header too, so links
// point at the gateway); everything else of the CLI is real.
type cfGateway struct {
	srv    *httptest.Server
	mu     sync.Mutex
	tokens map[string]string // fake JWT -> trellis token
}

// cmdCFLogin: cflogin USER TOKEN — points the cf CLI ($CF_HOME) at the
// script's controller (through the gateway, started on first use) as
// USER, whose requests carry TOKEN ("admin" is admin.json's token).
func cmdCFLogin(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: cflogin USER TOKEN|admin")
	}
	c := ts.Value("controller").(*scriptController)
	cfg, err := api.LoadClientConfig(filepath.Join(c.stateDir, controller.AdminConfigFile))
	ts.Check(err)
	token := args[1]
	if token == "admin" {
		token = cfg.Token
	}
	g := ts.Value("cfgateway").(*cfGateway)
	if g.srv == nil {
		g.start(ts, cfg.APIURL)
	}
	jwt := fakeJWT(args[0])
	g.mu.Lock()
	g.tokens[jwt] = token
	g.mu.Unlock()

	u := g.srv.URL
	conf := map[string]any{
		"ConfigVersion": 4, "Target": u, "APIVersion": "3.211.0",
		"AuthorizationEndpoint": u, "UaaEndpoint": u, "NetworkPolicyV1Endpoint": u + "/networking/v1/external",
		"AccessToken": "bearer " + jwt, "RefreshToken": "", "UAAOAuthClient": "cf", "UAAOAuthClientSecret": "",
		"SSLDisabled": true, "ColorEnabled": "false",
		"OrganizationFields": map[string]string{"GUID": "", "Name": ""},
		"SpaceFields":        map[string]any{"GUID": "", "Name": "", "AllowSSH": false},
	}
	b, err := json.MarshalIndent(conf, "", " ")
	ts.Check(err)
	dir := filepath.Join(ts.Getenv("CF_HOME"), ".cf")
	ts.Check(os.MkdirAll(dir, 0o700))
	ts.Check(os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600))
}

// start serves the gateway to target until the script ends.
func (g *cfGateway) start(ts *testscript.TestScript, target string) {
	u, err := url.Parse(target)
	ts.Check(err)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host
			jwt, ok := strings.CutPrefix(pr.In.Header.Get("Authorization"), "bearer ")
			g.mu.Lock()
			tok, known := g.tokens[jwt]
			g.mu.Unlock()
			if ok && known {
				pr.Out.Header.Set("Authorization", "bearer "+tok)
			}
		},
		// The controller's certificate is the script's own CA's; the
		// gateway is loopback to loopback.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	g.srv = httptest.NewTLSServer(rp)
	ts.Defer(g.srv.Close)
}

// fakeJWT is an unsigned token carrying the claims the cf CLI reads.
func fakeJWT(user string) string {
	enc := base64.RawURLEncoding.EncodeToString
	claims, _ := json.Marshal(map[string]any{"user_name": user, "user_id": "user-" + user, "origin": "uaa",
		"client_id": "cf", "exp": time.Now().Add(24 * time.Hour).Unix(), "iat": time.Now().Unix()})
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(claims) + "." + enc([]byte("unsigned"))
}

// scriptCell is a cell the script joined through the API, registering
// instances as a cell's agent does once it has wired them: what makes an
// instance RUNNING without network namespaces.
type scriptCell struct {
	client *api.Client
	subnet netip.Prefix
	next   netip.Addr
}

// cmdCellRun: cellrun APP INDEX — registers an instance of APP (by name,
// any space) at INDEX on the script's cell (joined on first use), with the
// next address of its subnet.
func cmdCellRun(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: cellrun APP INDEX")
	}
	index, err := strconv.Atoi(args[1])
	ts.Check(err)
	c := ts.Value("controller").(*scriptController)
	cfg, err := api.LoadClientConfig(filepath.Join(c.stateDir, controller.AdminConfigFile))
	ts.Check(err)
	admin, err := api.NewClient(cfg)
	ts.Check(err)
	ctx := context.Background()
	cell := ts.Value("cell").(*scriptCell)
	if cell.client == nil {
		jt, err := admin.CreateJoinToken(ctx, 60)
		ts.Check(err)
		joinCfg := cfg
		joinCfg.Token = jt.Token
		joiner, err := api.NewClient(joinCfg)
		ts.Check(err)
		keyPEM, csrPEM, err := identity.NewKeyAndCSR("script-cell")
		ts.Check(err)
		resp, err := joiner.Join(ctx, api.JoinRequest{Name: "script-cell", UnderlayIP: "198.51.100.31", CSR: string(csrPEM)})
		ts.Check(err)
		cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
		ts.Check(err)
		cell.client, err = api.NewCellClient(cfg.URLs(), cfg.CACert, cert)
		ts.Check(err)
		// Past the network, gateway and VTEP addresses.
		cell.subnet, cell.next = resp.Cell.Subnet, resp.Cell.Subnet.Addr().Next().Next().Next()
	}
	status, body, err := admin.Raw(ctx, "GET", "/v3/apps?names="+url.QueryEscape(args[0]), nil)
	ts.Check(err)
	var apps api.List[api.App]
	ts.Check(json.Unmarshal(body, &apps))
	if status != 200 || len(apps.Resources) != 1 {
		ts.Fatalf("app %s: %d %s", args[0], status, body)
	}
	cell.next = cell.next.Next()
	ts.Check(cell.client.RegisterInstance(ctx, uuid.NewString(),
		api.InstanceRegistration{AppGUID: apps.Resources[0].GUID, Index: index, IP: cell.next.String(), ContainerID: "script"}))
}
