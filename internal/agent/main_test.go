package agent_test

import (
	"os"
	"testing"

	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestMain makes the test binary the CNI plugin when libcni runs it with
// CNI_COMMAND set (the tests install it as trellis-cni), and fails the run
// when a namespace of this process is left in /run/netns.
func TestMain(m *testing.M) {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(cni.Main())
	}
	os.Exit(dataplanetest.Run(m))
}
