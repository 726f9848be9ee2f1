package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-c2c/trellis/internal/api"
)

// step is one command of a scenario and its whole expected output, exit
// code and stderr: "$URL" in stdout stands for the controller's URL, and a
// leading newline is dropped.
type step struct {
	args   string
	code   int
	stdout string
	stderr string
}

// runSteps runs each step's command line with vars against f, in order,
// and checks its whole result.
func runSteps(t *testing.T, f *fakeController, vars map[string]string, steps []step) {
	t.Helper()
	for _, st := range steps {
		got := runCLI(vars, strings.Fields(st.args)...)
		want := result{
			Code:   st.code,
			Stdout: strings.ReplaceAll(strings.TrimPrefix(st.stdout, "\n"), "$URL", f.srv.URL),
			Stderr: st.stderr,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("trellis %s (-want +got):\n%s", st.args, diff)
		}
	}
}

// TestScenario walks an operator's session against the fake controller
// and checks every command's whole output. "$URL" stands for the
// controller's URL.
func TestScenario(t *testing.T) {
	f := newFakeController(t)
	home := t.TempDir()
	admin := f.adminJSON(t, t.TempDir())
	steps := []step{
		{args: "apps", code: 1,
			stderr: "trellis: no trellis config at ~/.trellis/config.json: run `trellis login --config-from STATE/admin.json` or pass --config\n"},
		{args: "login --config-from " + admin, stdout: "Logged in to $URL\nOK\n"},
		{args: "target", stdout: `
API endpoint:   $URL
user:           admin
org:            default
space:          default
`},
		{args: "apps", stdout: `
Getting apps in org default / space default as admin...

No apps found.
`},
		{args: "create-app frontend", stdout: `
Creating app frontend in org default / space default as admin...
OK
`},
		{args: "create-app backend", stdout: `
Creating app backend in org default / space default as admin...
OK
`},
		{args: "create-app backend", stdout: `
Creating app backend in org default / space default as admin...
App backend already exists.
OK
`},
		{args: "map-route backend apps.internal --hostname backend", stdout: `
Creating route backend.apps.internal for org default / space default as admin...
Mapping route backend.apps.internal to app backend in org default / space default as admin...
OK
`},
		{args: "map-route backend apps.internal -n backend", stdout: `
Mapping route backend.apps.internal to app backend in org default / space default as admin...
App backend is already mapped to route backend.apps.internal.
OK
`},
		{args: "map-route backend apps.nowhere -n backend", code: 1,
			stderr: "trellis: Domain apps.nowhere not found\n"},
		{args: "apps", stdout: `
Getting apps in org default / space default as admin...

name       requested state   instances   routes
backend    stopped           0/0         backend.apps.internal
frontend   stopped           0/0
`},
		{args: "add-network-policy frontend backend", stdout: `
Adding network policy from app frontend to app backend in org default / space default as admin...
OK
`},
		{args: "add-network-policy frontend backend --protocol UDP --port 8080-8090", stdout: `
Adding network policy from app frontend to app backend in org default / space default as admin...
OK
`},
		{args: "add-network-policy frontend nope", code: 1, stdout: `
Adding network policy from app frontend to app nope in org default / space default as admin...
`, stderr: "trellis: App nope not found\n"},
		{args: "create-org other", stdout: `
Creating org other as admin...
OK

TIP: Use 'trellis target -o "other"' to target new org
`},
		{args: "create-space other-space -o other", stdout: `
Creating space other-space in org other as admin...
OK

TIP: Use 'trellis target -o "other" -s "other-space"' to target new space
`},
		{args: "create-app db -s other-space -o other", stdout: `
Creating app db in org other / space other-space as admin...
OK
`},
		{args: "add-network-policy backend db -s other-space -o other --protocol tcp --port 5432", stdout: `
Adding network policy from app backend in org default / space default to app db in org other / space other-space as admin...
OK
`},
		{args: "add-network-policy backend db -s other-space", code: 1,
			stderr: "trellis: Space other-space not found in org default\n"},
		{args: "network-policies", stdout: `
Listing network policies in org default / space default as admin...

source     destination   protocol   ports       destination space   destination org
backend    db            tcp        5432        other-space         other
frontend   backend       tcp        8080        default             default
frontend   backend       udp        8080-8090   default             default
`},
		{args: "network-policies --source frontend", stdout: `
Listing network policies of app frontend in org default / space default as admin...

source     destination   protocol   ports       destination space   destination org
frontend   backend       tcp        8080        default             default
frontend   backend       udp        8080-8090   default             default
`},
		{args: "network-policies --source backend --json", stdout: `
[
  {
    "source": "backend",
    "source_guid": "app-5",
    "destination": "db",
    "destination_guid": "app-10",
    "protocol": "tcp",
    "ports": {
      "start": 5432,
      "end": 5432
    },
    "destination_space": "other-space",
    "destination_org": "other"
  }
]
`},
		{args: "network-policies --source nope", code: 1, stdout: `
Listing network policies of app nope in org default / space default as admin...

`, stderr: "trellis: App nope not found\n"},
		{args: "remove-network-policy frontend backend --protocol udp --port 8080-8090", stdout: `
Removing network policy from app frontend to app backend in org default / space default as admin...
OK
`},
		{args: "remove-network-policy frontend backend --protocol udp --port 8080-8090", stdout: `
Removing network policy from app frontend to app backend in org default / space default as admin...
Policy does not exist.
OK
`},
		{args: "domains", stdout: `
Getting domains as admin...

name            availability   internal
apps.internal   shared         true
`},
		{args: "create-domain apps.example --internal", stdout: `
Creating domain apps.example as admin...
OK
`},
		{args: "routes", stdout: `
Getting routes as admin...

space     host      domain          apps
default   backend   apps.internal   backend
`},
		{args: "unmap-route backend apps.internal --hostname backend", stdout: `
Removing route backend.apps.internal from app backend in org default / space default as admin...
OK
`},
		{args: "unmap-route backend apps.internal --hostname backend", stdout: `
Removing route backend.apps.internal from app backend in org default / space default as admin...
Route to be unmapped is not currently mapped to the application.
OK
`},
		{args: "unmap-route backend apps.internal --hostname db", code: 1, stdout: `
Removing route db.apps.internal from app backend in org default / space default as admin...
`, stderr: "trellis: Route db.apps.internal not found\n"},
		{args: "delete-app frontend", stdout: `
Deleting app frontend in org default / space default as admin...
OK
`},
		{args: "delete-app frontend -f", stdout: `
Deleting app frontend in org default / space default as admin...
App frontend not found
OK
`},
		{args: "network-policies", stdout: `
Listing network policies in org default / space default as admin...

source    destination   protocol   ports   destination space   destination org
backend   db            tcp        5432    other-space         other
`},
		{args: "orgs", stdout: `
Getting orgs as admin...

name
default
other
`},
		{args: "orgs --json", stdout: `
[
  {
    "guid": "org-1",
    "name": "default",
    "created_at": "0001-01-01T00:00:00Z",
    "updated_at": "0001-01-01T00:00:00Z"
  },
  {
    "guid": "org-8",
    "name": "other",
    "created_at": "0001-01-01T00:00:00Z",
    "updated_at": "0001-01-01T00:00:00Z"
  }
]
`},
		{args: "spaces -o other", stdout: `
Getting spaces in org other as admin...

name
other-space
`},
		{args: "create-token --scope network.write --space other-space --org other --name ci", stdout: `
Creating token ci with scope network.write for org other / space other-space as admin...
trls_secret12
OK
`},
		{args: "target -o other", stdout: `
API endpoint:   $URL
user:           admin
org:            other
space:          other-space
`},
		{args: "apps", stdout: `
Getting apps in org other / space other-space as admin...

name   requested state   instances   routes
db     stopped           0/0
`},
		{args: "target -s nope", code: 1, stderr: "trellis: Space nope not found in org other\n"},
		{args: "target -o default -s default", stdout: `
API endpoint:   $URL
user:           admin
org:            default
space:          default
`},
		{args: "create-app a,b", stdout: `
Creating app a,b in org default / space default as admin...
OK
`},
		{args: "delete-app a,b", stdout: `
Deleting app a,b in org default / space default as admin...
OK
`},
	}
	vars := map[string]string{"HOME": home}
	runSteps(t, f, vars, steps)
	if diff := cmp.Diff([]string{"space-9"}, f.tokens[0].Spaces); diff != "" {
		t.Errorf("create-token asked for spaces (-want +got):\n%s", diff)
	}
}

func TestTargetGone(t *testing.T) {
	f := newFakeController(t)
	dir := t.TempDir()
	path := f.adminJSON(t, dir)
	cfg, err := api.LoadClientConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ org, space, want string }{
		{"gone", "", "trellis: Org gone not found: run `trellis target -o ORG -s SPACE`\n"},
		{"", "gone", "trellis: Space gone not found in org default: run `trellis target -s SPACE`\n"},
	} {
		cfg.Org, cfg.Space = tt.org, tt.space
		if err := cfg.Save(path); err != nil {
			t.Fatal(err)
		}
		got := runCLI(map[string]string{"TRELLIS_CONFIG": path}, "apps")
		if diff := cmp.Diff(result{Code: 1, Stderr: tt.want}, got); diff != "" {
			t.Errorf("trellis apps targeting %q / %q (-want +got):\n%s", tt.org, tt.space, diff)
		}
	}
}
