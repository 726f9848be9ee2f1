package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// The calls a cell's agent makes: Join with a join token (a Client made by
// NewClient), the others as the cell (a Client made by NewCellClient).

// Join joins the foundation as a new cell: the controller leases it a
// subnet and signs the certificate request in r. c must carry a join token.
func (c *Client) Join(ctx context.Context, r JoinRequest) (JoinResponse, error) {
	var out JoinResponse
	err := c.do(ctx, http.MethodPost, "trellis/v1/cells/join", nil, r, &out)
	return out, err
}

// CellState gets the cell's desired state. With after >= 0 the controller
// holds the request until its revision passes after, or for wait at most
// (it holds no longer than 30 s); with after < 0 it answers at once.
func (c *Client) CellState(ctx context.Context, after int64, wait time.Duration) (CellState, error) {
	var q url.Values
	if after >= 0 {
		q = url.Values{
			"after": {strconv.FormatInt(after, 10)},
			"wait":  {strconv.FormatFloat(wait.Seconds(), 'f', -1, 64)},
		}
	}
	var st CellState
	err := c.do(ctx, http.MethodGet, "trellis/v1/cell/state", q, nil, &st)
	return st, err
}

// RegisterInstance tells the controller that an instance is attached to the
// cell, with the address in reg.
func (c *Client) RegisterInstance(ctx context.Context, instanceGUID string, reg InstanceRegistration) error {
	p, err := itemPath("trellis/v1/cell/instances", instanceGUID)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, p, nil, reg, nil)
}

// DeregisterInstance tells the controller that an instance left the cell.
func (c *Client) DeregisterInstance(ctx context.Context, instanceGUID string) error {
	p, err := itemPath("trellis/v1/cell/instances", instanceGUID)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// LeaveCell removes the calling cell from the foundation and frees its
// lease.
func (c *Client) LeaveCell(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "trellis/v1/cell", nil, nil, nil)
}

// ReportFlows sends the cell's logged connection attempts and the count of
// denials it did not log.
func (c *Client) ReportFlows(ctx context.Context, f FlowEvents) error {
	return c.do(ctx, http.MethodPost, "trellis/v1/cell/flows", nil, f, nil)
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
