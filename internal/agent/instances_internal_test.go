package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/executor"
)

type fixedCredentials struct{}

func (fixedCredentials) credentialsDir(instance string) string {
	return "/state/credentials/" + instance
}
func (fixedCredentials) systemCertsDir() string { return "/state/system-certs" }

// TestInstanceSpecHidesTheAgent: every instance is started with the
// agent's state dir and socket hidden and a HOME the executor makes
// private, whatever the app's command; an app may set its own HOME.
func TestInstanceSpecHidesTheAgent(t *testing.T) {
	for _, tt := range []struct {
		socket   string
		env      map[string]string
		wantHide []string
		wantHome string
	}{
		{"", nil, []string{"/state"}, executor.Home},
		{"/state/agent.sock", nil, []string{"/state"}, executor.Home},
		{"/run/trellis/agent.sock", map[string]string{"HOME": "/app"}, []string{"/state", "/run/trellis/agent.sock"}, "/app"},
	} {
		in := &instances{underlayIP: "198.51.100.2", creds: fixedCredentials{}, hide: hiddenPaths("/state", tt.socket)}
		inst := &instance{Desired: api.DesiredInstance{GUID: "g1", AppName: "web", Command: []string{"sh", "-c", "id"}, Env: tt.env},
			NetNS: "ns-g1", IP: netip.MustParseAddr("10.255.1.2")}
		spec := in.spec(inst, "/state/instances/g1")
		if diff := cmp.Diff(tt.wantHide, spec.Hide); diff != "" {
			t.Errorf("spec with socket %q: Hide mismatch (-want +got):\n%s", tt.socket, diff)
		}
		if !slices.Contains(spec.Env, "HOME="+tt.wantHome) {
			t.Errorf("spec with env %v: Env = %v, want HOME=%s", tt.env, spec.Env, tt.wantHome)
		}
	}
}
