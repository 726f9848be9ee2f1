package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cli"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"trellis": func() {
			os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
		},
	})
}

// TestScripts runs the CLI scripts in testdata/script: the trellis binary
// (this test binary re-executed as trellis) against a real controller
// started for each script, on SQLite and on PostgreSQL.
func TestScripts(t *testing.T) {
	cf := cfCLI(t)
	for _, engine := range storetest.Engines {
		t.Run(engine, func(t *testing.T) {
			if engine == "postgres" {
				storetest.RequirePostgres(t)
			}
			testscript.Run(t, testscript.Params{
				Dir:                 "testdata/script",
				RequireExplicitExec: true,
				Setup: func(env *testscript.Env) error {
					c := &scriptController{stateDir: filepath.Join(env.WorkDir, "state")}
					if engine == "postgres" {
						c.databaseURL = storetest.URL(t, "postgres")
					}
					if err := c.start(); err != nil {
						return err
					}
					env.Values["controller"] = c
					env.Defer(c.stop)
					env.Setenv("TRELLIS_CONFIG", filepath.Join(c.stateDir, controller.AdminConfigFile))
					env.Setenv("HOME", env.WorkDir)
					if err := setupCF(env); err != nil {
						return err
					}
					return setupCFAuth(env, c, cf)
				},
				Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
					"controller": cmdController,
					"api":        cmdAPI,
					"capture":    cmdCapture,
					"cflogin":    cmdCFLogin,
					"cellrun":    cmdCellRun,
				},
				Condition: cfCondition,
			})
		})
	}
}

// defaultCFCLI is where the cf CLI (v8.18.4) is kept on this project's
// machines, beside the checkout.
const defaultCFCLI = "/work/shared/tools/cf/cf"

// cfCLI returns the path of Cloud Foundry's cf CLI for the scripts that
// run it: $TRELLIS_CF_CLI, else defaultCFCLI when it is there. Without
// one those scripts skip, except under CI=true, where a missing cf CLI
// fails the test: CI must run them.
func cfCLI(t *testing.T) string {
	path := os.Getenv("TRELLIS_CF_CLI")
	if path == "" {
		if _, err := os.Stat(defaultCFCLI); err == nil {
			path = defaultCFCLI
		}
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("TRELLIS_CF_CLI: %v", err)
		}
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no cf CLI: set TRELLIS_CF_CLI to Cloud Foundry's cf binary (v8) or install it at %s", defaultCFCLI)
	}
	return ""
}

// setupCFAuth gives a script what it needs to run the cf CLI against its
// controller: $CF (the binary), $CF_HOME (the cf CLI's config, in the
// script's work dir), $API_URL and $WORK/ca.pem (the controller's CA).
func setupCFAuth(env *testscript.Env, c *scriptController, cf string) error {
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
	return nil
}

// scriptController is a controller running in this process for one script.
type scriptController struct {
	stateDir, databaseURL string
	userTokenTTL          time.Duration // 0: the default
	listen                string        // "": a free port of 127.0.0.1
	url                   string        // where it serves
	mu                    sync.Mutex
	cancel                context.CancelFunc
	done                  chan error
}

func (c *scriptController) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- controller.Run(ctx, controller.Config{
			StateDir: c.stateDir, Listen: cmp.Or(c.listen, "127.0.0.1:0"), DatabaseURL: c.databaseURL, UserTokenTTL: c.userTokenTTL,
			Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
			Ready: func(url string) { c.url = url; close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return fmt.Errorf("controller did not start: %v", err)
	case <-time.After(time.Minute):
		cancel()
		return fmt.Errorf("controller did not start within a minute")
	}
	c.mu.Lock()
	c.cancel, c.done = cancel, done
	c.mu.Unlock()
	return nil
}

func (c *scriptController) stop() {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.cancel = nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// cmdController: controller stop|start|restart — stop and start the
// script's controller on the same state dir (and database);
// controller user-token-ttl DURATION — restart it, on the same port, with
// users' access tokens valid for DURATION.
func cmdController(ts *testscript.TestScript, neg bool, args []string) {
	c := ts.Value("controller").(*scriptController)
	if !neg && len(args) == 2 && args[0] == "user-token-ttl" {
		d, err := time.ParseDuration(args[1])
		ts.Check(err)
		c.stop()
		c.userTokenTTL = d
		c.listen = strings.TrimPrefix(c.url, "https://") // the cf CLI keeps the URL
		ts.Check(c.start())
		return
	}
	if neg || len(args) != 1 {
		ts.Fatalf("usage: controller stop|start|restart")
	}
	switch args[0] {
	case "stop":
		c.stop()
	case "start":
		ts.Check(c.start())
	case "restart":
		c.stop()
		ts.Check(c.start())
	default:
		ts.Fatalf("usage: controller stop|start|restart")
	}
}

// cmdAPI: api METHOD PATH [BODY] — calls the controller with the admin
// config it wrote (whatever config the CLI uses) and prints the status and
// body, for checks the CLI does not show.
func cmdAPI(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: api METHOD PATH [BODY]")
	}
	c := ts.Value("controller").(*scriptController)
	cfg, err := api.LoadClientConfig(filepath.Join(c.stateDir, controller.AdminConfigFile))
	ts.Check(err)
	cl, err := api.NewClient(cfg)
	ts.Check(err)
	var body io.Reader
	if len(args) > 2 {
		body = strings.NewReader(args[2])
	}
	status, out, err := cl.Raw(context.Background(), args[0], args[1], body)
	ts.Check(err)
	fmt.Fprintf(ts.Stdout(), "%d\n%s\n", status, out)
	if (status >= 400) != neg {
		ts.Fatalf("%s %s: status %d", args[0], args[1], status)
	}
}

// cmdCapture: capture NAME REGEXP — sets $NAME to the first group of the
// first match of REGEXP (multi-line: ^ and $ match at lines) in the last
// command's stdout, for later commands: a token, a GUID.
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: capture NAME REGEXP")
	}
	re, err := regexp.Compile("(?m)" + args[1])
	ts.Check(err)
	m := re.FindStringSubmatch(ts.ReadFile("stdout"))
	if len(m) < 2 || m[1] == "" {
		ts.Fatalf("capture %s: no match of %q (with a group) in stdout", args[0], args[1])
	}
	ts.Setenv(args[0], m[1])
}
