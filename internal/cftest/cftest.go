// Package cftest finds Cloud Foundry's cf CLI (v8, unmodified) for the
// tests that drive trellis with it.
package cftest

import (
	"os"
	"path/filepath"
	"testing"
)

// DefaultPath is where the cf CLI is kept on this project's machines.
const DefaultPath = "/work/shared/tools/cf/cf"

// Path returns the cf CLI's path: $TRELLIS_CF_CLI, else ../shared/tools/cf/cf
// beside the repository's root (the directory of go.mod, above the test's
// working directory), else DefaultPath. It returns "" when there is none,
// so the caller skips, except under CI=true, where a missing cf CLI fails
// the test: CI must run them.
func Path(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TRELLIS_CF_CLI"); p != "" {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			t.Fatalf("TRELLIS_CF_CLI=%s: not a file (%v)", p, err)
		}
		return p
	}
	var candidates []string
	if root := repoRoot(); root != "" {
		candidates = append(candidates, filepath.Join(filepath.Dir(root), "shared", "tools", "cf", "cf"))
	}
	for _, p := range append(candidates, DefaultPath) {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("no cf CLI: set TRELLIS_CF_CLI to Cloud Foundry's cf binary (v8) or install it at ../shared/tools/cf/cf beside the repository (CI=true: the cf tests must run)")
	}
	return ""
}

// repoRoot is the nearest directory above the working directory with a
// go.mod, or "".
func repoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
