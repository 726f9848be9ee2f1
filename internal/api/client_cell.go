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
	"strings"
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
	var st CellState
	if err := c.pollState(ctx, stateQuery(after, wait), after >= 0 && wait > 0, &st); err != nil {
		return CellState{}, err
	}
	c.stateFulls.Add(1)
	return st, nil
}

// CellStateFrom is CellState for a cell that holds have (nil: none, the
// state is answered at once): it asks for what changed since have's
// revision (a held poll, as CellState with after = have.Revision), and
// returns the new state: have with the controller's delta applied, or the
// whole state when the controller sends it. A delta comes only when have
// is the state of the last answer CellStateFrom returned, with the digest
// that answer carried, and the controller keeps the state of that revision
// with that digest: so a state from another controller that numbers or
// computes states otherwise is never patched, but replaced. A delta that
// does not fit have is not applied: the whole state is fetched instead.
// have is not modified.
func (c *Client) CellStateFrom(ctx context.Context, have *CellState, wait time.Duration) (CellState, error) {
	st, _, err := c.CellStateChange(ctx, have, wait)
	return st, err
}

// CellStateChange is CellStateFrom that also returns the delta it applied
// to have, nil when the answer was a whole state: a caller that keeps its
// state on disk, or hands it on, can then deal with the change alone.
func (c *Client) CellStateChange(ctx context.Context, have *CellState, wait time.Duration) (CellState, *CellDelta, error) {
	after := int64(-1)
	if have != nil {
		after = have.Revision
	}
	q := stateQuery(after, wait)
	q.Set("delta", "1")
	c.stateMu.Lock()
	if have != nil && c.stateRev == have.Revision && c.stateDigest != "" {
		q.Set("base", c.stateDigest)
	}
	c.stateMu.Unlock()
	// A controller that does not know delta=1 answers with the state
	// itself: its fields fill the embedded CellState.
	var ans struct {
		CellState
		CellStateAnswer
	}
	if err := c.pollState(ctx, q, after >= 0 && wait > 0, &ans); err != nil {
		return CellState{}, nil, err
	}
	var st CellState
	var applied *CellDelta
	switch {
	case ans.Delta != nil && have != nil:
		var err error
		if st, err = have.Apply(*ans.Delta); err != nil {
			c.stateRefused.Add(1)
			return c.CellStateChange(ctx, nil, 0)
		}
		applied = ans.Delta
		c.stateDeltas.Add(1)
	case ans.State != nil:
		st = *ans.State
		c.stateFulls.Add(1)
	case ans.Delta != nil:
		return CellState{}, nil, fmt.Errorf("GET %s: a delta for a poll without a state", cellStatePath)
	default:
		st = ans.CellState
		c.stateFulls.Add(1)
	}
	c.stateMu.Lock()
	c.stateRev, c.stateDigest = st.Revision, ans.Digest
	c.stateMu.Unlock()
	return st, applied, nil
}

// stateQuery is the query of a poll of the cell's state after revision
// after (< 0: none), held for wait at most.
func stateQuery(after int64, wait time.Duration) url.Values {
	q := url.Values{}
	if after >= 0 {
		q.Set("after", strconv.FormatInt(after, 10))
		q.Set("wait", strconv.FormatFloat(wait.Seconds(), 'f', -1, 64))
	}
	return q
}

// StateStats counts the answers to the cell's state polls: bytes read,
// whole states, deltas applied, and deltas that did not fit (each followed
// by a whole state).
type StateStats struct {
	Bytes   int64 `json:"bytes"`
	Fulls   int64 `json:"fulls"`
	Deltas  int64 `json:"deltas"`
	Refused int64 `json:"refused,omitempty"`
}

// StateStats returns the counts of the state polls made so far.
func (c *Client) StateStats() StateStats {
	return StateStats{Bytes: c.stateBytes.Load(), Fulls: c.stateFulls.Load(), Deltas: c.stateDeltas.Load(), Refused: c.stateRefused.Load()}
}

// pollState sends a state poll with query q and decodes its answer into
// out. A held poll hears a heartbeat from the controller
// every second (see controller's cellState); a connection silent for
// StateSilence is dropped (a link that lost its packets, a peer gone
// without a reset), and the next poll goes to the next controller.
func (c *Client) pollState(ctx context.Context, q url.Values, held bool, out any) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.send(ctx, http.MethodGet, cellStatePath, q.Encode(), nil, false, true)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp)
	}
	k := c.cur.Load()
	silent := errors.New("silent")
	heard := func() {}
	if held {
		t := time.AfterFunc(StateSilence, func() { cancel(silent) })
		defer t.Stop()
		heard = func() { t.Reset(StateSilence) }
	}
	body := &heardReader{r: resp.Body, heard: heard}
	defer func() { c.stateBytes.Add(body.n) }()
	if err := json.NewDecoder(body).Decode(out); err != nil {
		if context.Cause(ctx) == silent {
			if n := int64(len(c.targets())); n > 1 && c.cur.CompareAndSwap(k, (k+1)%n) {
				c.failovers.Add(1)
			}
			c.reresolve(ctx)
			return &unreachableError{err: fmt.Errorf("GET %s: the controller fell silent for %v: connection dropped", resp.Request.URL.Redacted(), StateSilence)}
		}
		return fmt.Errorf("GET %s: decode answer: %w", resp.Request.URL.Path, err)
	}
	return nil
}

const cellStatePath = "trellis/v1/cell/state"

// StateSilence is how long a held poll of CellState may go without a byte
// (the controller writes one every second) before it is dropped.
const StateSilence = 3 * time.Second

// heardReader calls heard after every read that returned bytes, and
// counts them.
type heardReader struct {
	r     io.Reader
	heard func()
	n     int64
}

func (h *heardReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.n += int64(n)
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

// Registered is what the controller answered a registration that carried a
// CSR.
type Registered struct {
	// Certificate is signed for the CSR; nil if none came: see Refused.
	Certificate *InstanceCertificate
	// Refused, if Certificate is nil, is why the controller did not sign
	// the CSR. Empty: the controller signs at registration no CSR (it is
	// older), and the caller asks InstanceCertificate.
	Refused string
}

// RegisterInstanceCSR registers an instance as RegisterInstance does and,
// in the same call, asks for the certificate of reg.CSR. A controller
// that does not know the field (it refuses unknown fields) is asked again
// without it, and the answer has neither certificate nor refusal: the
// registration stands, the caller asks InstanceCertificate.
func (c *Client) RegisterInstanceCSR(ctx context.Context, instanceGUID string, reg InstanceRegistration) (Registered, error) {
	p, err := itemPath("trellis/v1/cell/instances", instanceGUID)
	if err != nil {
		return Registered{}, err
	}
	body, err := json.Marshal(reg)
	if err != nil {
		return Registered{}, fmt.Errorf("PUT %s: encode request: %w", p, err)
	}
	resp, err := c.send(ctx, http.MethodPut, p, "", body, true, true)
	if err != nil {
		return Registered{}, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusBadRequest && reg.CSR != "":
		err := decodeError(resp)
		var he *HTTPError
		if errors.As(err, &he) && strings.Contains(he.Message, `unknown field "csr"`) {
			reg.CSR = ""
			return Registered{}, c.RegisterInstance(ctx, instanceGUID, reg)
		}
		return Registered{}, err
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return Registered{}, decodeError(resp) // a 4xx: send returns no 5xx
	case resp.StatusCode == http.StatusCreated:
		var out InstanceCertificate
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return Registered{}, fmt.Errorf("PUT %s: decode answer: %w", resp.Request.URL.Path, err)
		}
		return Registered{Certificate: &out}, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	return Registered{Refused: resp.Header.Get(CertificateRefusedHeader)}, nil
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
