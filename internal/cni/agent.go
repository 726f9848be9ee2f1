package cni

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The plugin's client of the agent's unix-socket API (internal/api/agent.go).
// The plugin speaks it itself, HTTP/1.0 with one connection per request,
// and so links neither net/http nor package api (which links net/http and
// crypto/tls for the controller's client): their package initialisers
// cost every start of the plugin about 10 ms of CPU, as much as the Go
// runtime's own start (CNI_COMMAND=VERSION, 20 runs, user+system of the
// reaped children: a hello-world Go binary 10 ms, the same importing
// net/http 20 ms). api.AgentClient is the client for everything else;
// TestAgentWire keeps the types below encoding as package api's do.

// instanceIdentity is api.Identity: who a container is.
type instanceIdentity struct {
	AppGUID      string `json:"app_guid"`
	AppName      string `json:"app_name,omitempty"`
	SpaceGUID    string `json:"space_guid,omitempty"`
	OrgGUID      string `json:"org_guid,omitempty"`
	InstanceGUID string `json:"instance_guid"`
	Index        int    `json:"index"`
}

// allocateRequest is api.AllocateRequest.
type allocateRequest struct {
	ContainerID string           `json:"container_id"`
	NetNS       string           `json:"netns"`
	IfName      string           `json:"ifname"`
	Identity    instanceIdentity `json:"identity"`
}

// allocation is api.Allocation: how to wire the container.
type allocation struct {
	ContainerID string   `json:"container_id"`
	IP          string   `json:"ip"`
	Subnet      string   `json:"subnet"`
	Gateway     string   `json:"gateway"`
	MTU         int      `json:"mtu"`
	DNS         []string `json:"dns"`
	Committed   bool     `json:"committed"`
}

// commitRequest is api.CommitRequest.
type commitRequest struct {
	HostVeth string `json:"host_veth"`
}

// gcRequest is api.GCRequest.
type gcRequest struct {
	Valid []string `json:"valid_container_ids"`
}

// agentStatus is the part of api.AgentStatus the plugin reads.
type agentStatus struct {
	Cell   string `json:"cell"`
	Subnet string `json:"subnet"`
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

// agentTimeout bounds one request to the agent, answer included.
const agentTimeout = 10 * time.Second

// maxAgentAnswer bounds an answer the plugin reads.
const maxAgentAnswer = 1 << 20

// errAgentUnreachable is matched (errors.Is) by the error of a request
// that got no answer from the agent.
var errAgentUnreachable = errors.New("unreachable")

// unreachableError says, in an operator's words, that no answer came.
type unreachableError struct{ msg string }

func (e *unreachableError) Error() string        { return e.msg }
func (e *unreachableError) Is(target error) bool { return target == errAgentUnreachable }

// agentError is an answer other than 2xx, with the agent's message.
type agentError struct {
	status int
	msg    string
}

func (e *agentError) Error() string { return e.msg }

// isNotFound reports whether err is the agent's 404.
func isNotFound(err error) bool {
	var ae *agentError
	return errors.As(err, &ae) && ae.status == 404
}

// agentClient speaks to the agent on the unix socket at socket.
type agentClient struct{ socket string }

func (c agentClient) allocate(ctx context.Context, r allocateRequest) (allocation, error) {
	var a allocation
	err := c.do(ctx, "POST", "/v1/containers", r, &a)
	return a, err
}

func (c agentClient) commit(ctx context.Context, containerID string, r commitRequest) error {
	return c.do(ctx, "POST", "/v1/containers/"+url.PathEscape(containerID)+"/commit", r, nil)
}

func (c agentClient) container(ctx context.Context, containerID string) (allocation, error) {
	var a allocation
	err := c.do(ctx, "GET", "/v1/containers/"+url.PathEscape(containerID), nil, &a)
	return a, err
}

func (c agentClient) release(ctx context.Context, containerID string) error {
	return c.do(ctx, "DELETE", "/v1/containers/"+url.PathEscape(containerID), nil, nil)
}

func (c agentClient) gc(ctx context.Context, valid []string) error {
	return c.do(ctx, "POST", "/v1/gc", gcRequest{Valid: valid}, nil)
}

// status gets the agent's health; an agent that is not ready answers 503
// with its status, returned without an error.
func (c agentClient) status(ctx context.Context) (agentStatus, error) {
	var st agentStatus
	code, body, err := c.send(ctx, "GET", "/v1/status", nil)
	if err != nil {
		return st, err
	}
	if code == 503 && json.Unmarshal(body, &st) == nil && (st.Cell != "" || st.Subnet != "" || st.Reason != "") {
		return st, nil
	}
	return st, c.decode("GET", "/v1/status", code, body, &st)
}

func (c agentClient) do(ctx context.Context, method, path string, in, out any) error {
	code, body, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	return c.decode(method, path, code, body, out)
}

// send sends one request and returns the answer's status and body.
func (c agentClient) send(ctx context.Context, method, path string, in any) (int, []byte, error) {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return 0, nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", c.socket)
	if err != nil {
		return 0, nil, c.unreachable(err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.0\r\nHost: trellis-agent\r\nAccept: application/json\r\n", method, path)
	if in != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, nil, c.unreachable(err)
	}
	code, answer, err := readAnswer(bufio.NewReader(conn))
	if err != nil {
		return 0, nil, c.unreachable(err)
	}
	return code, answer, nil
}

// readAnswer reads an HTTP/1.x answer to a request that closes the
// connection: the status, and the body (Content-Length long, or to EOF).
func readAnswer(r *bufio.Reader) (int, []byte, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, nil, err
	}
	proto, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return 0, nil, fmt.Errorf("malformed answer %q", line)
	}
	length := -1
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			return 0, nil, err
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "content-length":
			if length, err = strconv.Atoi(strings.TrimSpace(v)); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("malformed header %q", h)
			}
		case "transfer-encoding":
			return 0, nil, fmt.Errorf("unexpected header %q in an answer to HTTP/1.0", h)
		}
	}
	if length > maxAgentAnswer {
		return 0, nil, fmt.Errorf("answer of %d bytes, more than %d", length, maxAgentAnswer)
	}
	var body []byte
	if length >= 0 {
		body = make([]byte, length)
		_, err = io.ReadFull(r, body)
	} else {
		body, err = io.ReadAll(io.LimitReader(r, maxAgentAnswer+1))
		if err == nil && len(body) > maxAgentAnswer {
			err = fmt.Errorf("answer larger than %d bytes", maxAgentAnswer)
		}
	}
	return code, body, err
}

// decode decodes a 2xx answer into out and turns any other into an
// *agentError with the agent's message.
func (c agentClient) decode(method, path string, code int, body []byte, out any) error {
	if code/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if msg == "" {
			msg = "status " + strconv.Itoa(code)
		}
		return &agentError{status: code, msg: fmt.Sprintf("trellis agent: %s %s: %s", method, path, msg)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("trellis agent: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// unreachable says that no answer came from the agent: it is not running,
// its socket is elsewhere, or it did not answer in time.
func (c agentClient) unreachable(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &unreachableError{fmt.Sprintf("the trellis agent at %s did not answer within %v — is `trellis agent` running and healthy on this cell?",
			c.socket, agentTimeout)}
	}
	cause := err
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		cause = op.Err // "connect: no such file or directory", without the socket path again
	}
	return &unreachableError{fmt.Sprintf("cannot reach the trellis agent at %s: %v — is `trellis agent` running on this cell?", c.socket, cause)}
}
