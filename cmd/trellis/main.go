// Command trellis is container-to-container networking in the model of
// Cloud Foundry: the controller, the agent and the CLI in one binary. See
// `trellis help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/trellis-c2c/trellis/internal/cli"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/executor"
)

func main() {
	// The executor re-executes trellis as instance-init to enter an
	// instance's namespaces before it runs the instance's command.
	if len(os.Args) > 1 && os.Args[1] == executor.InitCommand {
		os.Exit(executor.InitMain(os.Args[2:]))
	}
	// Runtimes run the plugin with CNI_COMMAND set: normally the trellis-cni
	// binary (cmd/trellis-cni), which starts faster; this binary serves when
	// it is installed as trellis-cni itself (cni.PluginBinary).
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(cni.Main())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
