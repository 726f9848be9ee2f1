// Command trellis-cni is trellis's CNI plugin: a container runtime runs it
// with CNI_COMMAND set, and it wires the container into the cell's overlay
// by asking the cell's trellis agent over its unix socket (package cni).
//
// It is a binary of its own so that it starts fast: it links the plugin,
// the agent-socket client and the container wiring, and nothing of the
// controller, the store, metrics or net/http (TestDeps keeps it so). The trellis
// binary runs the same plugin when CNI_COMMAND is set, for a cell that has
// only that binary. See docs/runtimes.md.
package main

import (
	"os"

	"github.com/trellis-c2c/trellis/internal/cni"
)

func main() { os.Exit(cni.Main()) }
