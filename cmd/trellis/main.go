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
)

func main() {
	// Runtimes run the plugin as trellis-cni with CNI_COMMAND set.
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(cni.Main())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
