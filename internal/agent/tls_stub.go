//go:build !trellis_wip

package agent

import (
	"context"

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
	return &identities{sysDir: a.cfg.StateDir + "/system-certs"}, nil
}
func (id *identities) credentialsDir(instance string) string {
	return id.sysDir + "/../credentials/" + instance
}
func (id *identities) poke()                                  {}
func (id *identities) loop(ctx context.Context)               {}
func (id *identities) attach(ctx context.Context, rec record) {}
func (id *identities) detach(guid string)                     {}
