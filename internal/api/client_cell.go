package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	if after < 0 || wait <= 0 {
		err := c.do(ctx, http.MethodGet, cellStatePath, q, nil, &st)
		return st, err
	}
	// A held poll: the controller writes a heartbeat every second (see
	// controller's cellState). A connection silent for StateSilence is
	// dropped (a link that lost its packets, a peer gone without a reset),
	// and the next poll goes to the next controller.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.send(ctx, http.MethodGet, cellStatePath, q.Encode(), nil, false, true)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return st, decodeError(resp)
	}
	k := c.cur.Load()
	silent := errors.New("silent")
	t := time.AfterFunc(StateSilence, func() { cancel(silent) })
	defer t.Stop()
	body := &heardReader{r: resp.Body, heard: func() { t.Reset(StateSilence) }}
	if err := json.NewDecoder(body).Decode(&st); err != nil {
		if context.Cause(ctx) == silent {
			if n := int64(len(c.targets())); n > 1 && c.cur.CompareAndSwap(k, (k+1)%n) {
				c.failovers.Add(1)
			}
			c.reresolve(ctx)
			return st, &unreachableError{err: fmt.Errorf("GET %s: the controller fell silent for %v: connection dropped", resp.Request.URL.Redacted(), StateSilence)}
		}
		return st, fmt.Errorf("GET %s: decode answer: %w", resp.Request.URL.Path, err)
	}
	return st, nil
}

const cellStatePath = "trellis/v1/cell/state"

// StateSilence is how long a held poll of CellState may go without a byte
// (the controller writes one every second) before it is dropped.
const StateSilence = 3 * time.Second

// heardReader calls heard after every read that returned bytes.
type heardReader struct {
	r     io.Reader
	heard func()
}

func (h *heardReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.heard()
	}
	return n, err
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
