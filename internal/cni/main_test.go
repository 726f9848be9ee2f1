package cni

import (
	"os"
	"testing"
)

// TestMain makes the test binary the plugin when a runtime runs it with
// CNI_COMMAND set: the privileged tests install it as trellis-cni and drive
// it through libcni, exactly as the trellis binary would be driven.
func TestMain(m *testing.M) {
	if os.Getenv("CNI_COMMAND") != "" {
		os.Exit(Main())
	}
	os.Exit(m.Run())
}
