package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestIdentityScenario walks the instance identity verbs against the fake
// controller and checks their whole output.
func TestIdentityScenario(t *testing.T) {
	f := newFakeController(t)
	admin := f.adminJSON(t, t.TempDir())
	steps := []step{
		{args: "login --config-from " + admin, stdout: "Logged in to $URL\nOK\n"},
		{args: "create-app backend", stdout: "\nCreating app backend in org default / space default as admin...\nOK\n"},
		{args: "create-app frontend", stdout: "\nCreating app frontend in org default / space default as admin...\nOK\n"},
		{args: "app backend --guid", stdout: "app-4\n"},
		{args: "app nope --guid", code: 1, stderr: "trellis: App nope not found\n"},
		{args: "app backend", stdout: `
Showing app backend in org default / space default as admin...

name:                           backend
guid:                           app-4
requested state:                stopped
instances:                      0/0
routes:
client certificates on 61443:   not required
`},
		{args: "tls backend", stdout: `
app:                            backend
client certificates on 61443:   not required
apps allowed on tcp/61443:      none: add one with ` + "`trellis add-network-policy SOURCE_APP backend --protocol tcp --port 61443`" + `
`},
		{args: "add-network-policy frontend backend --protocol tcp --port 61443", stdout: `
Adding network policy from app frontend to app backend in org default / space default as admin...
OK
`},
		{args: "add-network-policy frontend backend --protocol tcp --port 8080", stdout: `
Adding network policy from app frontend to app backend in org default / space default as admin...
OK
`},
		{args: "set-tls backend --require-client-cert", stdout: `
Setting TLS of app backend in org default / space default as admin...
OK

Port 61443 of backend now requires a client certificate from the instance CA, of an app with a policy to backend on tcp/61443.
`},
		{args: "tls backend", stdout: `
app:                            backend
client certificates on 61443:   required
apps allowed on tcp/61443:      frontend
`},
		{args: "tls backend --json", stdout: "{\n  \"require_client_cert\": true\n}\n"},
		{args: "set-tls backend --no-require-client-cert", stdout: `
Setting TLS of app backend in org default / space default as admin...
OK

Port 61443 of backend accepts any client that the network policies let through.
`},
		{args: "set-tls nope --require-client-cert", code: 1, stderr: "trellis: App nope not found\n"},
		{args: "instance-ca", stdout: `
generation:             1
rotating:               no
trust domain:           trellis.internal
certificate validity:   24h0m0s
intermediate:           trellis instance CA 1
trusted root:           trellis instance root CA 1 (until 2035-01-01)
`},
		{args: "rotate-instance-ca --finish", code: 1, stdout: "Finishing the rotation of the instance CA as admin...\n",
			stderr: "trellis: no rotation of the instance CA is under way: begin one with `trellis rotate-instance-ca`\n"},
		{args: "rotate-instance-ca", stdout: `
Beginning a rotation of the instance CA as admin...
OK

Both roots are trusted now; cells renew every certificate with the new intermediate.

generation:             2
rotating:               since 2030-01-02T03:04:05Z (finish it from 2030-01-03T03:04:05Z: ` + "`trellis rotate-instance-ca --finish`" + `)
trust domain:           trellis.internal
certificate validity:   24h0m0s
intermediate:           trellis instance CA 2
trusted root:           trellis instance root CA 1 (until 2035-01-01)
trusted root:           trellis instance root CA 2 (until 2035-01-01)
`},
		{args: "rotate-instance-ca --finish", code: 1, stdout: "Finishing the rotation of the instance CA as admin...\n",
			stderr: "trellis: the rotation began at 2030-01-02T03:04:05Z: it is safe to finish from 2030-01-03T03:04:05Z\n"},
		{args: "rotate-instance-ca --finish --force", stdout: `
Finishing the rotation of the instance CA as admin...
OK

The old root is no longer trusted; cells renew every certificate.

generation:             3
rotating:               no
trust domain:           trellis.internal
certificate validity:   24h0m0s
intermediate:           trellis instance CA 2
trusted root:           trellis instance root CA 2 (until 2035-01-01)
`},
	}
	vars := map[string]string{"HOME": t.TempDir()}
	runSteps(t, f, vars, steps)
	got := runCLI(vars, "instance-ca", "--pem")
	if got.Code != 0 || got.Stdout != f.ca.Bundle || !strings.HasPrefix(got.Stdout, "-----BEGIN CERTIFICATE-----\n") {
		t.Errorf("trellis instance-ca --pem = %+v, want the bundle alone", got)
	}
}

func TestIdentityUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args   string
		stderr string
	}{
		{"app", "Incorrect Usage: the required argument `APP` was not provided"},
		{"app a b", `Incorrect Usage: unexpected argument "b"`},
		{"tls", "Incorrect Usage: the required argument `APP` was not provided"},
		{"set-tls backend", "Incorrect Usage: give exactly one of --require-client-cert and --no-require-client-cert"},
		{"set-tls backend --require-client-cert --no-require-client-cert", "Incorrect Usage: give exactly one of --require-client-cert and --no-require-client-cert"},
		{"rotate-instance-ca --force", "Incorrect Usage: --force is only for --finish"},
		{"rotate-instance-ca now", `Incorrect Usage: unexpected argument "now"`},
		{"instance-ca --pem --json", "Incorrect Usage: --pem and --json cannot be used together"},
		{"controller --state-dir /nonexistent --instance-cert-validity 30s", "trellis: invalid --instance-cert-validity 30s: at least 1m0s"},
		{"controller --state-dir /nonexistent --instance-cert-validity soon", `Incorrect Usage: invalid value "soon" for flag -instance-cert-validity: parse error`},
		{"controller --state-dir /nonexistent --trust-domain Bad_Domain", `trellis: --trust-domain: invalid trust domain "Bad_Domain": character 'B' is outside [a-z0-9.-]`},
	} {
		got := runCLI(map[string]string{"HOME": t.TempDir()}, strings.Fields(tt.args)...)
		if diff := cmp.Diff(result{Code: 2, Stderr: tt.stderr + "\n"}, got); diff != "" {
			t.Errorf("trellis %s (-want +got):\n%s", tt.args, diff)
		}
	}
}
