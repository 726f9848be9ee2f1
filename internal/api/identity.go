package api

import "time"

// Instance identity: the certificates the controller's instance CA signs
// for app instances, on a CSR from the instance's cell (the key never
// leaves the cell), and the per-app TLS settings of port 61443.

// InstanceCertificateRequest is the body of
// POST /trellis/v1/cell/instances/{guid}/certificate (cell mTLS only): a
// CSR for an instance registered on the asking cell.
type InstanceCertificateRequest struct {
	CSR string `json:"csr"` // PEM
}

// InstanceCertificate is a signed instance identity certificate.
type InstanceCertificate struct {
	// Certificate holds the leaf, then the intermediate that signed it
	// (and, while the CA rotates, that intermediate cross-signed by the
	// old root), PEM.
	Certificate string    `json:"certificate"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	// CA is the instance CA as it was when this certificate was signed.
	CA InstanceCA `json:"ca"`
}

// InstanceCA is the trust anchor of instance identities: what a client
// inside a container (or any app that verifies peers) trusts.
type InstanceCA struct {
	// Generation grows by one every time the CA changes (a rotation
	// begins or finishes); cells renew their certificates when it does.
	Generation int64 `json:"generation"`
	// Bundle is the PEM of every trusted root: one, or two while a
	// rotation overlaps the old root and the new.
	Bundle string `json:"bundle"`
	// Rotating is true between the start and the finish of a rotation.
	Rotating         bool       `json:"rotating"`
	RotationStarted  *time.Time `json:"rotation_started,omitempty"`
	TrustDomain      string     `json:"trust_domain"`
	ValiditySeconds  int64      `json:"certificate_validity_seconds"`
	IntermediateName string     `json:"intermediate"` // subject CN of the signing intermediate
}

// InstanceCARotation is the body of POST /trellis/v1/instance-ca/rotation
// (admin): start a rotation (a new root and intermediate, cross-signed by
// the old root), or finish one (drop the old root).
type InstanceCARotation struct {
	Action string `json:"action"` // "begin" or "finish"
	// Force finishes before a full certificate validity has passed since
	// the rotation began (certificates signed by the old intermediate may
	// still be in use and will stop verifying).
	Force bool `json:"force,omitempty"`
}

// AppTLS is an app's settings for automatic TLS on port 61443:
// GET/PUT /trellis/v1/apps/{guid}/tls.
type AppTLS struct {
	// RequireClientCert makes 61443 demand a client certificate from the
	// instance CA, and accept only apps that a policy allows to reach this
	// app on tcp 61443.
	RequireClientCert bool `json:"require_client_cert"`
}

// LocalApp is what a cell needs to know of an app with an instance on it
// to run that instance's identity and its 61443 listener.
type LocalApp struct {
	GUID string `json:"guid"`
	// Hosts are the FQDNs of the app's internal routes, sorted: the DNS
	// names of its certificates. A change renews them.
	Hosts             []string `json:"hosts"`
	RequireClientCert bool     `json:"require_client_cert"`
	// TLSClients are the GUIDs of the apps that a policy allows to reach
	// this app on tcp 61443, sorted.
	TLSClients []string `json:"tls_clients"`
}
