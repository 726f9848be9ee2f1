package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/store"
)

// TestMain makes the test binary the CNI plugin when libcni runs it with
// CNI_COMMAND set (the tests install it as trellis-cni), a controller when
// a test starts it with envTestController set (a process of its own, which
// the test may kill -9), an instance's init when the executor starts one
// (executor.InitCommand), and fails the run when a namespace of this process
// is left in /run/netns.
func TestMain(m *testing.M) {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(cni.Main())
	}
	if len(os.Args) > 1 && os.Args[1] == executor.InitCommand {
		os.Exit(executor.InitMain(os.Args[2:]))
	}
	if cfg := os.Getenv(envTestController); cfg != "" {
		os.Exit(runTestController(cfg))
	}
	os.Exit(dataplanetest.Run(m))
}

// envTestController holds a testControllerConfig as JSON.
const envTestController = "TRELLIS_TEST_CONTROLLER"

// testControllerConfig is what a controller process of a test runs.
type testControllerConfig struct {
	StateDir, Listen, DatabaseURL, AdminConfig string
	// Upgrade, if set, is the SQL of a schema migration this build lacks:
	// the controller plays a newer build (store.ExtraMigrations).
	Upgrade string
}

// upgradeVersion is the version of the migration of testControllerConfig's
// Upgrade: above any trellis has.
const upgradeVersion = 9000

// readyFile, in the controller's state dir, holds its URL once it serves.
const readyFile = "ready.url"

// runTestController runs controller.Run until SIGTERM, logging to stderr.
func runTestController(js string) int {
	var c testControllerConfig
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if c.Upgrade != "" {
		store.ExtraMigrations = []store.ExtraMigration{{Version: upgradeVersion, Name: fmt.Sprintf("%04d_test_upgrade.sql", upgradeVersion), SQL: c.Upgrade}}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := controller.Run(ctx, controller.Config{StateDir: c.StateDir, Listen: c.Listen, DatabaseURL: c.DatabaseURL, AdminConfig: c.AdminConfig,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Ready: func(url string) {
			os.WriteFile(filepath.Join(c.StateDir, readyFile), []byte(url), 0o600)
		}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
