package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// newFakeAgent serves answers on a unix socket, as an agent does, and
// returns the socket's path.
func newFakeAgent(t *testing.T, answers map[string]answer) (*fakeController, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeController{answers: answers}
	srv := &http.Server{Handler: f}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f, sock
}

func TestAgentClientRequests(t *testing.T) {
	ctx := context.Background()
	allocJSON := `{"container_id":"c/1","ip":"10.255.1.9","subnet":"10.255.1.0/24","gateway":"169.254.0.1","mtu":1450,"dns":["169.254.0.2"],"committed":false}`
	alloc := Allocation{ContainerID: "c/1", IP: "10.255.1.9", Subnet: "10.255.1.0/24", Gateway: "169.254.0.1", MTU: 1450, DNS: []string{"169.254.0.2"}}
	tests := []struct {
		name   string
		answer answer
		call   func(c *AgentClient) (any, error)
		want   any
		req    request
	}{
		{
			name:   "allocate",
			answer: answer{200, allocJSON},
			call: func(c *AgentClient) (any, error) {
				return c.Allocate(ctx, AllocateRequest{ContainerID: "c/1", NetNS: "/run/netns/x", IfName: "eth0",
					Identity: Identity{AppGUID: "a1", InstanceGUID: "i1"}})
			},
			want: alloc,
			req: request{Method: "POST", Path: "/v1/containers", ContentType: "application/json",
				Body: `{"container_id":"c/1","netns":"/run/netns/x","ifname":"eth0","identity":{"app_guid":"a1","instance_guid":"i1","index":0}}`},
		},
		{
			name:   "commit",
			answer: answer{200, allocJSON},
			call:   func(c *AgentClient) (any, error) { return nil, c.Commit(ctx, "c/1", CommitRequest{HostVeth: "s-1"}) },
			req: request{Method: "POST", Path: "/v1/containers/c/1/commit", ContentType: "application/json",
				Body: `{"host_veth":"s-1"}`},
		},
		{
			name:   "container",
			answer: answer{200, allocJSON},
			call:   func(c *AgentClient) (any, error) { return c.Container(ctx, "c/1") },
			want:   alloc,
			req:    request{Method: "GET", Path: "/v1/containers/c/1"},
		},
		{
			name:   "release",
			answer: answer{204, ""},
			call:   func(c *AgentClient) (any, error) { return nil, c.Release(ctx, "c1") },
			req:    request{Method: "DELETE", Path: "/v1/containers/c1"},
		},
		{
			name:   "gc",
			answer: answer{204, ""},
			call:   func(c *AgentClient) (any, error) { return nil, c.GC(ctx, []string{"c1", "c2"}) },
			req: request{Method: "POST", Path: "/v1/gc", ContentType: "application/json",
				Body: `{"valid_container_ids":["c1","c2"]}`},
		},
		{
			name:   "status",
			answer: answer{200, `{"cell":"cell1","subnet":"10.255.1.0/24","revision":4,"ready":true}`},
			call:   func(c *AgentClient) (any, error) { return c.Status(ctx) },
			want:   AgentStatus{Cell: "cell1", Subnet: "10.255.1.0/24", Revision: 4, Ready: true},
			req:    request{Method: "GET", Path: "/v1/status"},
		},
		{
			name:   "status not ready",
			answer: answer{503, `{"cell":"cell1","revision":0,"ready":false,"reason":"no subnet lease yet"}`},
			call:   func(c *AgentClient) (any, error) { return c.Status(ctx) },
			want:   AgentStatus{Cell: "cell1", Reason: "no subnet lease yet"},
			req:    request{Method: "GET", Path: "/v1/status"},
		},
		{
			name:   "metrics",
			answer: answer{200, "trellis_proxy_instances 3\n"},
			call: func(c *AgentClient) (any, error) {
				b, err := c.Metrics(ctx)
				return string(b), err
			},
			want: "trellis_proxy_instances 3\n",
			req:  request{Method: "GET", Path: "/metrics"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, sock := newFakeAgent(t, map[string]answer{tt.req.Method + " " + tt.req.Path: tt.answer})
			got, err := tt.call(NewAgentClient(sock))
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s answer (-want +got):\n%s", tt.name, diff)
			}
			if diff := cmp.Diff([]request{tt.req}, f.requests()); diff != "" {
				t.Errorf("%s request (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

func TestAgentClientErrors(t *testing.T) {
	_, sock := newFakeAgent(t, map[string]answer{
		"GET /v1/containers/gone": {404, `{"error":"no such container"}`},
		"GET /v1/containers/busy": {503, `{"error":"subnet lease pending"}`},
		"GET /v1/containers/bad":  {400, `{"error":"bad container ID"}`},
		"GET /v1/containers/text": {500, "out of memory\n"},
		"GET /v1/status":          {500, `{"error":"broken"}`},
	})
	c := NewAgentClient(sock)
	ctx := context.Background()
	tests := []struct {
		id   string
		want *HTTPError
	}{
		{"gone", &HTTPError{Status: 404, Message: "trellis agent: GET /v1/containers/gone: no such container"}},
		{"busy", &HTTPError{Status: 503, Message: "trellis agent: GET /v1/containers/busy: subnet lease pending"}},
		{"bad", &HTTPError{Status: 400, Message: "trellis agent: GET /v1/containers/bad: bad container ID"}},
		{"text", &HTTPError{Status: 500, Message: "trellis agent: GET /v1/containers/text: out of memory"}},
	}
	for _, tt := range tests {
		_, err := c.Container(ctx, tt.id)
		var got *HTTPError
		if !errors.As(err, &got) {
			t.Errorf("Container(%s) = %v (%T), want *HTTPError", tt.id, err, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Container(%s) error (-want +got):\n%s", tt.id, diff)
		}
		// An answer, whatever its status, is not "unreachable": the agent
		// said something, which the caller handles.
		if errors.Is(err, ErrUnreachable) {
			t.Errorf("Container(%s) = %v matches ErrUnreachable, want not", tt.id, err)
		}
	}
	if _, err := c.Container(ctx, "gone"); !IsNotFound(err) {
		t.Errorf("IsNotFound(Container(gone)) = false, want true")
	}
	if st, err := c.Status(ctx); err == nil || err.Error() != "trellis agent: GET /v1/status: broken" {
		t.Errorf("Status answered 500 = %+v, %v, want the agent's error", st, err)
	}
}

func TestAgentClientUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cell1.sock")
	_, err := NewAgentClient(sock).Status(context.Background())
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Status with no agent = %v, want ErrUnreachable", err)
	}
	want := "cannot reach the trellis agent at " + sock + ": connect: no such file or directory — is `trellis agent` running on this cell?"
	if err.Error() != want {
		t.Errorf("Status with no agent = %q\nwant %q", err, want)
	}
}
