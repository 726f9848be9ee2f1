package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchUsageErrors checks the command lines `trellis bench` refuses
// before it builds anything.
func TestBenchUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "out.json")
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"bench", "frob"}, `trellis: unknown benchmark "frob": choose one of overlay, policy, dns, or all`},
		{[]string{"bench", "overlay", "all"}, `Incorrect Usage: bench takes at most one benchmark, got "overlay all"`},
		{[]string{"bench", "overlay", "--json", missing}, "trellis: cannot write --json " + missing + ": " + filepath.Dir(missing) + " is not a directory"},
		{[]string{"bench", "--frobnicate"}, "Incorrect Usage: flag provided but not defined: -frobnicate"},
	}
	for _, tt := range tests {
		got := runCLI(nil, tt.args...)
		if got.Code != 2 || strings.TrimSpace(got.Stderr) != tt.stderr || got.Stdout != "" {
			t.Errorf("trellis %s = %+v, want exit 2 and stderr %q", strings.Join(tt.args, " "), got, tt.stderr)
		}
	}
}
