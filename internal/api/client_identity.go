package api

import (
	"context"
	"net/http"
)

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
