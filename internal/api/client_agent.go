package api

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
)

// agentTimeout bounds one request to the agent, answer included.
const agentTimeout = 10 * time.Second

// maxAgentBody bounds an answer of the agent (its metrics are the largest).
const maxAgentBody = 16 << 20

// AgentClient speaks a cell agent's unix-socket API (see the top of
// agent.go), for the CNI plugin, the launcher and the benchmarks. A request
// that gets no answer fails with an error matching ErrUnreachable that says
// so in an operator's words; any answer other than 2xx is an *HTTPError.
// It keeps no connection open between requests.
type AgentClient struct {
	socket string
	http   *http.Client
}

// NewAgentClient returns a client of the agent listening on the unix socket
// at socket.
func NewAgentClient(socket string) *AgentClient {
	d := &net.Dialer{Timeout: agentTimeout}
	return &AgentClient{
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

// Allocate reserves an address for a container (idempotent per container
// ID).
func (c *AgentClient) Allocate(ctx context.Context, r AllocateRequest) (Allocation, error) {
	var a Allocation
	err := c.do(ctx, http.MethodPost, "/v1/containers", r, &a)
	return a, err
}

// Commit reports a container wired; the agent answers once its instance is
// registered with the controller, certified and in the policy table.
func (c *AgentClient) Commit(ctx context.Context, containerID string, r CommitRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(containerID)+"/commit", r, nil)
}

// Container gets the agent's record of a container.
func (c *AgentClient) Container(ctx context.Context, containerID string) (Allocation, error) {
	var a Allocation
	err := c.do(ctx, http.MethodGet, "/v1/containers/"+url.PathEscape(containerID), nil, &a)
	return a, err
}

// Release releases a container's address and deregisters its instance; an
// unknown container is an *HTTPError with status 404.
func (c *AgentClient) Release(ctx context.Context, containerID string) error {
	return c.do(ctx, http.MethodDelete, "/v1/containers/"+url.PathEscape(containerID), nil, nil)
}

// GC releases every container not in valid.
func (c *AgentClient) GC(ctx context.Context, valid []string) error {
	return c.do(ctx, http.MethodPost, "/v1/gc", GCRequest{Valid: valid}, nil)
}

// Status gets the agent's health. An agent that is not ready answers 503
// with its status, which is returned without an error: its Ready and
// Reason say why.
func (c *AgentClient) Status(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	const method, path = http.MethodGet, "/v1/status"
	status, data, err := c.send(ctx, method, path, nil)
	switch {
	case err != nil:
		return st, err
	case status == http.StatusServiceUnavailable:
		// A status body (not the {"error":…} of a failure) says why.
		if json.Unmarshal(data, &st) == nil && (st.Cell != "" || st.Subnet != "" || st.Reason != "") {
			return st, nil
		}
	}
	return st, c.decode(method, path, status, data, &st)
}

// Metrics gets the agent's metrics in the Prometheus text format.
func (c *AgentClient) Metrics(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, http.MethodGet, "/metrics", nil, &b)
	return b, err
}

// do sends in as JSON and decodes a 2xx answer into out.
func (c *AgentClient) do(ctx context.Context, method, path string, in, out any) error {
	status, data, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	return c.decode(method, path, status, data, out)
}

// send sends in, when not nil, as JSON and returns the answer whatever its
// status.
func (c *AgentClient) send(ctx context.Context, method, path string, in any) (status int, data []byte, err error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	// The host is not used for dialling; it names the peer in errors.
	req, err := http.NewRequestWithContext(ctx, method, "http://trellis-agent"+path, body)
	if err != nil {
		return 0, nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, c.unreachable(err)
	}
	defer resp.Body.Close()
	data, err = io.ReadAll(io.LimitReader(resp.Body, maxAgentBody+1))
	if err != nil {
		return 0, nil, c.unreachable(err)
	}
	if len(data) > maxAgentBody {
		return 0, nil, fmt.Errorf("trellis agent: %s %s: answer larger than %d bytes", method, path, maxAgentBody)
	}
	return resp.StatusCode, data, nil
}

// decode decodes a 2xx answer into out (a *[]byte takes the body as it
// is) and turns any other into an *HTTPError with the agent's message.
func (c *AgentClient) decode(method, path string, status int, data []byte, out any) error {
	if status/100 != 2 {
		var e Error
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if msg == "" {
			msg = http.StatusText(status)
		}
		return &HTTPError{Status: status, Message: fmt.Sprintf("trellis agent: %s %s: %s", method, path, msg)}
	}
	switch out := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*out = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("trellis agent: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// unreachable says that no answer came from the agent: it is not running,
// its socket is elsewhere, or it did not answer in time.
func (c *AgentClient) unreachable(err error) error {
	cause := err
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		cause = op.Err // "connect: no such file or directory", without the socket path again
	}
	msg := fmt.Sprintf("cannot reach the trellis agent at %s: %v — is `trellis agent` running on this cell?", c.socket, cause)
	var ue *url.Error
	if errors.As(err, &ue) && ue.Timeout() {
		msg = fmt.Sprintf("the trellis agent at %s did not answer within %v — is `trellis agent` running and healthy on this cell?",
			c.socket, agentTimeout)
	}
	return &unreachableError{err: err, msg: msg}
}
