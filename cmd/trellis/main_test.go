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
					return setupCF(env, c, cf)
				},
				Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
					"controller": cmdController,
					"api":        cmdAPI,
					"capture":    cmdCapture,
					"cellrun":    cmdCellRun,
				},
				Condition: cfCondition(cf),
			})
		})
	}
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
