package cni

import (
	"os"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestMain makes the test binary the plugin when a runtime runs it with
// CNI_COMMAND set: the privileged tests install it as trellis-cni and drive
// it through libcni, exactly as the trellis binary would be driven. It fails
// the run when a namespace of this process is left in /run/netns.
func TestMain(m *testing.M) {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(Main())
	}
	os.Exit(dataplanetest.Run(m))
}
