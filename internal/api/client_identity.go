package api

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
)

// NewCellClient returns a Client that authenticates as a cell, with the
// client certificate the controller's CA issued it at join (mutual TLS)
// instead of a token: for the /trellis/v1/cell/ calls, such as
// InstanceCertificate. It trusts only the CA in caPEM.
func NewCellClient(apiURL, caPEM string, cert tls.Certificate) (*Client, error) {
	if len(cert.Certificate) == 0 {
		return nil, errors.New("invalid cell certificate: empty")
	}
	c, err := NewClient(ClientConfig{APIURL: apiURL, CACert: caPEM, Token: "cell"})
	if err != nil {
		return nil, err
	}
	c.token = "" // no Authorization header: the certificate is the credential
	c.http.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	return c, nil
}

// InstanceCertificate asks the controller, as a cell, to sign csrPEM for
// one of the cell's attached instances. The key stays with the caller.
func (c *Client) InstanceCertificate(ctx context.Context, instanceGUID string, csrPEM []byte) (InstanceCertificate, error) {
	var out InstanceCertificate
	p, err := itemPath("trellis/v1/cell/instances", instanceGUID)
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodPost, p+"/certificate", nil, InstanceCertificateRequest{CSR: string(csrPEM)}, &out)
	return out, err
}

// InstanceCA reads the instance CA: its generation, trust bundle and
// rotation.
func (c *Client) InstanceCA(ctx context.Context) (InstanceCA, error) {
	var out InstanceCA
	err := c.do(ctx, http.MethodGet, "trellis/v1/instance-ca", nil, nil, &out)
	return out, err
}

// RotateInstanceCA begins or finishes a rotation of the instance CA (admin)
// and returns the CA as it is afterwards.
func (c *Client) RotateInstanceCA(ctx context.Context, r InstanceCARotation) (InstanceCA, error) {
	var out InstanceCA
	err := c.do(ctx, http.MethodPost, "trellis/v1/instance-ca/rotation", nil, r, &out)
	return out, err
}

// AppTLS reads an app's settings of automatic TLS on port 61443.
func (c *Client) AppTLS(ctx context.Context, appGUID string) (AppTLS, error) {
	var out AppTLS
	p, err := itemPath("trellis/v1/apps", appGUID)
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodGet, p+"/tls", nil, nil, &out)
	return out, err
}

// SetAppTLS sets an app's settings of automatic TLS on port 61443 and
// returns them as stored.
func (c *Client) SetAppTLS(ctx context.Context, appGUID string, t AppTLS) (AppTLS, error) {
	var out AppTLS
	p, err := itemPath("trellis/v1/apps", appGUID)
	if err != nil {
		return out, err
	}
	err = c.do(ctx, http.MethodPut, p+"/tls", nil, t, &out)
	return out, err
}
