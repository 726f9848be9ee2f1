package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// agentTimeout bounds one request to the agent, answer included.
const agentTimeout = 10 * time.Second

// maxAgentBody bounds how much of an answer is read.
const maxAgentBody = 1 << 20

// agentClient speaks the agent's unix-socket API (internal/api/agent.go).
type agentClient struct {
	socket string
	http   *http.Client
}

func newAgentClient(socket string) *agentClient {
	d := &net.Dialer{Timeout: agentTimeout}
	return &agentClient{
		socket: socket,
		http: &http.Client{
			Timeout: agentTimeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return d.DialContext(ctx, "unix", socket)
				},
				DisableKeepAlives: true,
			},
		},
	}
}

// unreachableError means no answer came from the agent: it is not running,
// its socket is elsewhere, or it did not answer in time.
type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	cause := e.err
	var op *net.OpError
	if errors.As(e.err, &op) && op.Err != nil {
		cause = op.Err // "connect: no such file or directory", without the socket path again
	}
	var ue *url.Error
	if errors.As(e.err, &ue) && ue.Timeout() {
		return fmt.Sprintf("the trellis agent at %s did not answer within %v — is `trellis agent` running and healthy on this cell?",
			e.socket, agentTimeout)
	}
	return fmt.Sprintf("cannot reach the trellis agent at %s: %v — is `trellis agent` running on this cell?", e.socket, cause)
}

func (e *unreachableError) Unwrap() error { return e.err }

// statusError is an answer of the agent other than 2xx.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func isNotFound(err error) bool {
	var se *statusError
	return errors.As(err, &se) && se.status == http.StatusNotFound
}

func isUnreachable(err error) bool {
	var ue *unreachableError
	return errors.As(err, &ue)
}

func (c *agentClient) allocate(ctx context.Context, req api.AllocateRequest) (api.Allocation, error) {
	var a api.Allocation
	err := c.do(ctx, http.MethodPost, "/v1/containers", req, &a)
	return a, err
}

func (c *agentClient) commit(ctx context.Context, containerID string, req api.CommitRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(containerID)+"/commit", req, nil)
}

func (c *agentClient) container(ctx context.Context, containerID string) (api.Allocation, error) {
	var a api.Allocation
	err := c.do(ctx, http.MethodGet, "/v1/containers/"+url.PathEscape(containerID), nil, &a)
	return a, err
}

func (c *agentClient) release(ctx context.Context, containerID string) error {
	return c.do(ctx, http.MethodDelete, "/v1/containers/"+url.PathEscape(containerID), nil, nil)
}

func (c *agentClient) gc(ctx context.Context, valid []string) error {
	return c.do(ctx, http.MethodPost, "/v1/gc", api.GCRequest{Valid: valid}, nil)
}

func (c *agentClient) status(ctx context.Context) (api.AgentStatus, error) {
	var s api.AgentStatus
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// do sends in as JSON and decodes a 2xx answer into out. A transport
// failure is an *unreachableError, any other status a *statusError with
// the agent's message.
func (c *agentClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	// The host is not used for dialling; it names the peer in errors.
	req, err := http.NewRequestWithContext(ctx, method, "http://trellis-agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return &unreachableError{socket: c.socket, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAgentBody))
	if err != nil {
		return &unreachableError{socket: c.socket, err: err}
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return &statusError{status: resp.StatusCode, msg: fmt.Sprintf("trellis agent: %s %s: %s", method, path, msg)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("trellis agent: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}
