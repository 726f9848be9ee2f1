package api

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// multiClient is a Client of the fakes, in that order, that pauses little
// between them.
func multiClient(t *testing.T, fs ...*fakeController) *Client {
	t.Helper()
	cfg := fs[0].config()
	for _, f := range fs {
		cfg.APIURLs = append(cfg.APIURLs, f.srv.URL)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	c.retryBase, c.retryMax = time.Millisecond, 5*time.Millisecond
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// down is a fake controller that was closed: nothing answers at its URL.
func down(t *testing.T) *fakeController {
	f := newFakeController(t, nil)
	f.srv.Close()
	return f
}

const healthOK = `{"status":"ok","revision":7}`

func TestClientFailsOverToTheNextController(t *testing.T) {
	ctx := context.Background()
	a := down(t)
	b := newFakeController(t, map[string]answer{"GET /health": {200, healthOK}})
	c := multiClient(t, a, b)
	if got := c.Controller(); got != a.srv.URL {
		t.Fatalf("Controller() before any request = %s, want the first, %s", got, a.srv.URL)
	}
	for range 2 {
		if h, err := c.Health(ctx); err != nil || h.Revision != 7 {
			t.Fatalf("Health = %+v, %v; want revision 7 from the second controller", h, err)
		}
	}
	if got := c.Controller(); got != b.srv.URL {
		t.Errorf("Controller() = %s, want %s", got, b.srv.URL)
	}
	if got := c.Failovers(); got != 1 {
		t.Errorf("Failovers() = %d, want 1 (the second request goes to the second controller at once)", got)
	}
	if got := len(b.requests()); got != 2 {
		t.Errorf("the second controller saw %d requests, want 2", got)
	}
}

// TestClientFailoverOrder: the controllers are tried in the order given,
// from the one in use, each once; a 5xx counts as no answer.
func TestClientFailoverOrder(t *testing.T) {
	ctx := context.Background()
	a := down(t)
	b := newFakeController(t, map[string]answer{"GET /health": {503, `{"error":"database unavailable"}`}})
	cc := newFakeController(t, map[string]answer{"GET /health": {200, healthOK}})
	c := multiClient(t, a, b, cc)
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("Health = %v, want the third controller's answer", err)
	}
	if len(b.requests()) != 1 || len(cc.requests()) != 1 {
		t.Errorf("requests seen: second %d, third %d; want 1 and 1", len(b.requests()), len(cc.requests()))
	}
	if got := c.Controller(); got != cc.srv.URL {
		t.Errorf("Controller() = %s, want the third, %s", got, cc.srv.URL)
	}
	// The third is in use: when it fails, the first (down) and the second
	// (503) come next, and the error names what failed at each.
	cc.srv.Close()
	_, err := c.Health(ctx)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Health with no controller answering = %v, want ErrUnreachable", err)
	}
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 503 {
		t.Errorf("Health error %v: want it to hold the second controller's 503", err)
	}
	msg := err.Error()
	for _, want := range []string{"no controller answered", cc.srv.URL + "/health", a.srv.URL + "/health", b.srv.URL + "/health", "database unavailable"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Health error %q does not name %q", msg, want)
		}
	}
	if i, j := strings.Index(msg, cc.srv.URL+"/health"), strings.Index(msg, a.srv.URL+"/health"); i > j {
		t.Errorf("Health error %q: want the third controller (in use) tried before the first", msg)
	}
}

// TestClientDoesNotFailOverOnRefusal: a 4xx is the controller's answer,
// and a POST that may have been handled (a 500) is not sent again.
func TestClientDoesNotFailOverOnRefusal(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		answer map[string]answer
		call   func(c *Client) error
		status int
	}{
		{"404", map[string]answer{}, func(c *Client) error { _, err := c.Health(ctx); return err }, 404},
		{"403", map[string]answer{"GET /health": {403, `{"error":"forbidden"}`}}, func(c *Client) error { _, err := c.Health(ctx); return err }, 403},
		{"POST 500", map[string]answer{"POST /v3/organizations": {500, `{"error":"boom"}`}},
			func(c *Client) error { _, err := c.CreateOrg(ctx, "o"); return err }, 500},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := newFakeController(t, tt.answer)
			b := newFakeController(t, map[string]answer{
				"GET /health": {200, healthOK}, "POST /v3/organizations": {201, `{"guid":"g","name":"o"}`}})
			c := multiClient(t, a, b)
			err := tt.call(c)
			var he *HTTPError
			if !errors.As(err, &he) || he.Status != tt.status {
				t.Errorf("call = %v, want the first controller's %d", err, tt.status)
			}
			if got := b.requests(); len(got) != 0 {
				t.Errorf("the second controller saw %v, want nothing", got)
			}
			if c.Failovers() != 0 || c.Controller() != a.srv.URL {
				t.Errorf("Controller() = %s after %d failovers, want the first, none", c.Controller(), c.Failovers())
			}
		})
	}
	// A POST that could not connect was not handled: it goes to the next.
	b := newFakeController(t, map[string]answer{"POST /v3/organizations": {201, `{"guid":"g","name":"o"}`}})
	c := multiClient(t, down(t), b)
	if o, err := c.CreateOrg(ctx, "o"); err != nil || o.GUID != "g" {
		t.Errorf("CreateOrg with the first controller down = %+v, %v; want the second's answer", o, err)
	}
}

// TestClientLeavesAControllerThatHangs: a request out of time leaves the
// controller in use, so that the next goes to the next controller.
func TestClientLeavesAControllerThatHangs(t *testing.T) {
	release := make(chan struct{})
	hang := &fakeController{srv: httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))}
	t.Cleanup(hang.srv.Close)
	defer close(release)
	b := newFakeController(t, map[string]answer{"GET /health": {200, healthOK}})
	c := multiClient(t, hang, b)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := c.Health(ctx)
	cancel()
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Health of a hung controller = %v, want ErrUnreachable", err)
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatalf("Health after = %v, want the second controller's answer", err)
	}
	if c.Controller() != b.srv.URL || c.Failovers() != 1 {
		t.Errorf("Controller() = %s after %d failovers, want %s after 1", c.Controller(), c.Failovers(), b.srv.URL)
	}
}

func TestClientFailoverPauseIsBounded(t *testing.T) {
	c := &Client{retryBase: 100 * time.Millisecond, retryMax: 2 * time.Second}
	for i := int64(1); i < 100; i++ {
		want := min(c.retryBase<<min(i-1, 20), c.retryMax)
		for range 20 {
			if d := c.pauseFor(i); d < want/2 || d > want {
				t.Fatalf("pauseFor(%d) = %v, want within [%v, %v]", i, d, want/2, want)
			}
		}
	}
}

func TestClientConfigURLs(t *testing.T) {
	for _, tt := range []struct {
		cfg  ClientConfig
		want []string
	}{
		{ClientConfig{APIURL: "https://a"}, []string{"https://a"}},
		{ClientConfig{APIURL: "https://a", APIURLs: []string{"https://a", "https://b"}}, []string{"https://a", "https://b"}},
		{ClientConfig{APIURL: "https://b", APIURLs: []string{"https://a", "https://b"}}, []string{"https://b", "https://a"}},
		{ClientConfig{APIURLs: []string{"https://a", "https://b"}}, []string{"https://a", "https://b"}},
	} {
		if got := tt.cfg.URLs(); strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("%+v.URLs() = %v, want %v", tt.cfg, got, tt.want)
		}
	}
}

func TestLoadClientConfigWithSeveralURLs(t *testing.T) {
	path := t.TempDir() + "/config.json"
	cfg := ClientConfig{APIURLs: []string{"https://a:4002", "https://b:4002"}, CACert: "CA", Token: "t"}
	if err := cfg.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadClientConfig(path)
	if err != nil {
		t.Fatalf("LoadClientConfig = %v", err)
	}
	if got.APIURL != "https://a:4002" || strings.Join(got.URLs(), " ") != "https://a:4002 https://b:4002" {
		t.Errorf("LoadClientConfig: api_url %q, URLs %v; want the first of api_urls, and both", got.APIURL, got.URLs())
	}
}

// TestNotSent: a POST moves to the next controller only on errors that
// mean the request did not reach the controller whole.
func TestNotSent(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&url.Error{Op: "Post", URL: "https://c", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, true},
		{&url.Error{Op: "Post", URL: "https://c", Err: &net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}}, true},
		{&url.Error{Op: "Post", URL: "https://c", Err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}}, false},
		{&url.Error{Op: "Post", URL: "https://c", Err: io.ErrUnexpectedEOF}, false},
	} {
		if got := notSent(tt.err); got != tt.want {
			t.Errorf("notSent(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestClientPolicyWritesFailOver: creating and deleting policies are safe
// to send twice, so a 5xx moves them to the next controller as a GET.
func TestClientPolicyWritesFailOver(t *testing.T) {
	ctx := context.Background()
	a := newFakeController(t, map[string]answer{
		"POST /networking/v1/external/policies":        {500, `{"error":"boom"}`},
		"POST /networking/v1/external/policies/delete": {500, `{"error":"boom"}`}})
	b := newFakeController(t, map[string]answer{
		"POST /networking/v1/external/policies":        {200, `{}`},
		"POST /networking/v1/external/policies/delete": {200, `{}`}})
	c := multiClient(t, a, b)
	if err := c.CreatePolicies(ctx, []Policy{{}}); err != nil {
		t.Errorf("CreatePolicies with the first controller failing = %v, want the second's answer", err)
	}
	if err := c.DeletePolicies(ctx, []Policy{{}}); err != nil {
		t.Errorf("DeletePolicies = %v, want the second's answer", err)
	}
	if c.Controller() != b.srv.URL {
		t.Errorf("Controller() = %s, want the second", c.Controller())
	}
}
