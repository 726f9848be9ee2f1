package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/uuid"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cftest"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// Cloud Foundry's own CLI in scripts (cf_*.txtar): the unmodified cf
// binary, logged in for real (cf api, cf auth) as users the script makes
// with trellis create-user.

// cfCLI returns the path of Cloud Foundry's cf CLI for the scripts that
// run it (see cftest.Path), "" to skip them ([!cf]; never under CI=true).
func cfCLI(t *testing.T) string { return cftest.Path(t) }

// cfCondition is the [cf] condition: the cf CLI is there.
func cfCondition(cf string) func(string) (bool, error) {
	return func(cond string) (bool, error) {
		if cond != "cf" {
			return false, fmt.Errorf("unknown condition %q", cond)
		}
		return cf != "", nil
	}
}

// setupCF gives a script what it needs to run the cf CLI against its
// controller: $CF (the binary), $CF_HOME (the cf CLI's config, in the
// script's work dir), $API_URL and $WORK/ca.pem (the controller's CA).
func setupCF(env *testscript.Env, c *scriptController, cf string) error {
	cfg, err := api.LoadClientConfig(filepath.Join(c.stateDir, controller.AdminConfigFile))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(env.WorkDir, "ca.pem"), []byte(cfg.CACert), 0o644); err != nil {
		return err
	}
	env.Setenv("CF", cf)
	env.Setenv("CF_HOME", filepath.Join(env.WorkDir, "cfhome"))
	env.Setenv("CF_COLOR", "false")
	env.Setenv("API_URL", cfg.APIURL)
	env.Values["cell"] = &scriptCell{}
	return nil
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
