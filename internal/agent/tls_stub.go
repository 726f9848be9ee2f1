//go:build !trellis_wip

package agent

import (
	"context"
	"os"

	"github.com/prometheus/client_golang/prometheus"
)

// Temporary: the TLS side builds once internal/proxy and the instance CA land.
const (
	CredentialsDir = "/etc/cf-instance-credentials"
	SystemCertsDir = "/etc/cf-system-certificates"
	certFile       = "instance.crt"
	keyFile        = "instance.key"
	bundleFile     = "trusted-ca.crt"
)

type identities struct{ sysDir string }

func newIdentities(a *Agent, reg prometheus.Registerer) (*identities, error) {
	id := &identities{sysDir: a.cfg.StateDir + "/system-certs"}
	return id, os.MkdirAll(id.sysDir, 0o755)
}
func (id *identities) credentialsDir(instance string) string {
	return id.sysDir + "/../credentials/" + instance
}
func (id *identities) poke()                    {}
func (id *identities) loop(ctx context.Context) {}
func (id *identities) attach(ctx context.Context, rec record) {
	os.MkdirAll(id.credentialsDir(rec.Identity.InstanceGUID), 0o755)
}
func (id *identities) detach(guid string) {}
