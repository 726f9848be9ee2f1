package cli

import (
	"path/filepath"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestTokenVerbs: create-token --ttl, tokens, revoke-token and
// rotate-admin-token against the fake controller.
func TestTokenVerbs(t *testing.T) {
	f := newFakeController(t)
	dir := t.TempDir()
	admin := f.adminJSON(t, dir)
	written := filepath.Join(dir, "state2", "admin.json")
	vars := map[string]string{"HOME": t.TempDir(), "TRELLIS_CONFIG": admin}
	runSteps(t, f, vars, []step{
		{args: "tokens", stdout: "\nGetting tokens as admin...\n\nNo tokens found.\n"},
		{args: "create-token --scope network.write --space default --name ci --ttl 90m", stdout: `
Creating token ci with scope network.write for org default / space default as admin...
trls_secret4
Expires at 2030-01-01T01:30:00Z
OK
`},
		{args: "create-token --scope network.admin --ttl 0.5s", code: 2,
			stderr: "Incorrect Usage: --ttl must be from 1s to 8760h (365 days), got 500ms\n"},
		{args: "tokens", stdout: `
Getting tokens as admin...

guid      name   scope           spaces    created                expires                last used
token-4   ci     network.write   default   0001-01-01T00:00:00Z   2030-01-01T01:30:00Z   never
`},
		{args: "revoke-token token-9", code: 1, stdout: "Revoking token token-9 as admin...\n",
			stderr: "trellis: token token-9 not found: see `trellis tokens`\n"},
		{args: "revoke-token token-4", stdout: "Revoking token token-4 as admin...\nOK\n"},
		{args: "tokens --json", stdout: "[]\n"},
		{args: "rotate-admin-token --admin-config " + written, stdout: `
Rotating the admin token as admin...
Saved the new admin token in ` + admin + `
Wrote the new admin config to ` + written + `
TIP: copy the new admin config to STATE/admin.json of every controller; the old admin token no longer works
OK
`},
		{args: "tokens", stdout: "\nGetting tokens as admin...\n\nNo tokens found.\n"},
	})
	for _, path := range []string{admin, written} {
		cfg, err := api.LoadClientConfig(path)
		if err != nil || cfg.Token != "trls_admin4" || cfg.APIURL != f.srv.URL {
			t.Errorf("%s after rotate-admin-token: token %q, URL %q, %v; want token trls_admin4 at %s", path, cfg.Token, cfg.APIURL, err, f.srv.URL)
		}
	}
	if f.tokens[0].TTLSeconds != 5400 {
		t.Errorf("create-token --ttl 90m asked for ttl_seconds %d, want 5400", f.tokens[0].TTLSeconds)
	}
}
