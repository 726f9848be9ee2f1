package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/trellis-c2c/trellis/internal/identity"
)

// newCellController is a fake controller that requires a client
// certificate of its CA, as the controller's cell endpoints do. It returns
// the CA's PEM and the certificate of a cell named cell1.
func newCellController(t *testing.T, answers map[string]answer) (f *fakeController, caPEM string, cell tls.Certificate) {
	t.Helper()
	f = &fakeController{answers: answers}
	f.srv, caPEM, cell = newCellServer(t, f)
	return f, caPEM, cell
}

// newCellServer serves h as newCellController's fake controller does.
func newCellServer(t *testing.T, h http.Handler) (srv *httptest.Server, caPEM string, cell tls.Certificate) {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR("cell1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCellCSR(csrPEM, "g1", "cell1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cell, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	cells := x509.NewCertPool()
	cells.AddCert(ca.Cert)
	srv = httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: cells, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, string(ca.CertPEM), cell
}

func TestCellClientRequests(t *testing.T) {
	ctx := context.Background()
	stateJSON := `{"revision":8,"cell":{"guid":"g1","name":"cell1","underlay_ip":"198.51.100.11","subnet":"10.255.1.0/24","last_seen":"0001-01-01T00:00:00Z","healthy":true}}`
	state := CellState{Revision: 8, Cell: Cell{GUID: "g1", Name: "cell1", UnderlayIP: netip.MustParseAddr("198.51.100.11"), Subnet: netip.MustParsePrefix("10.255.1.0/24"), Healthy: true}}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		answer answer
		call   func(c *Client) (any, error)
		want   any
		req    request
	}{
		{
			name:   "current state",
			answer: answer{200, stateJSON},
			call:   func(c *Client) (any, error) { return c.CellState(ctx, -1, time.Second) },
			want:   state,
			req:    request{Method: "GET", Path: "/trellis/v1/cell/state"},
		},
		{
			name:   "state after a revision",
			answer: answer{200, stateJSON},
			call:   func(c *Client) (any, error) { return c.CellState(ctx, 7, 2500*time.Millisecond) },
			want:   state,
			req:    request{Method: "GET", Path: "/trellis/v1/cell/state", Query: "after=7&wait=2.5"},
		},
		{
			name:   "register instance",
			answer: answer{204, ""},
			call: func(c *Client) (any, error) {
				return nil, c.RegisterInstance(ctx, "i1", InstanceRegistration{AppGUID: "a1", Index: 2, IP: "10.255.1.9", ContainerID: "c1"})
			},
			req: request{Method: "PUT", Path: "/trellis/v1/cell/instances/i1", ContentType: "application/json",
				Body: `{"app_guid":"a1","index":2,"ip":"10.255.1.9","container_id":"c1"}`},
		},
		{
			name:   "deregister instance",
			answer: answer{204, ""},
			call:   func(c *Client) (any, error) { return nil, c.DeregisterInstance(ctx, "i1") },
			req:    request{Method: "DELETE", Path: "/trellis/v1/cell/instances/i1"},
		},
		{
			name:   "leave",
			answer: answer{204, ""},
			call:   func(c *Client) (any, error) { return nil, c.LeaveCell(ctx) },
			req:    request{Method: "DELETE", Path: "/trellis/v1/cell"},
		},
		{
			name:   "report flows",
			answer: answer{204, ""},
			call: func(c *Client) (any, error) {
				return nil, c.ReportFlows(ctx, FlowEvents{Events: []FlowEvent{{Time: at, Verdict: "denied", Protocol: "tcp",
					SrcIP: "10.255.1.9", SrcPort: 40000, DstIP: "10.255.2.3", DstPort: 8080, Reason: "no policy"}}, Suppressed: 3})
			},
			req: request{Method: "POST", Path: "/trellis/v1/cell/flows", ContentType: "application/json",
				Body: `{"events":[{"time":"2030-01-02T03:04:05Z","verdict":"denied","protocol":"tcp","src_ip":"10.255.1.9","src_port":40000,"dst_ip":"10.255.2.3","dst_port":8080,"reason":"no policy"}],"suppressed":3}`},
		},
		{
			name:   "instance certificate",
			answer: answer{201, `{"certificate":"LEAF","not_before":"2030-01-02T03:04:05Z","not_after":"2030-01-03T03:04:05Z","ca":{"generation":1}}`},
			call:   func(c *Client) (any, error) { return c.InstanceCertificate(ctx, "i1", []byte("CSR")) },
			want:   InstanceCertificate{Certificate: "LEAF", NotBefore: at, NotAfter: at.Add(24 * time.Hour), CA: InstanceCA{Generation: 1}},
			req: request{Method: "POST", Path: "/trellis/v1/cell/instances/i1/certificate", ContentType: "application/json",
				Body: `{"csr":"CSR"}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, caPEM, cert := newCellController(t, map[string]answer{tt.req.Method + " " + tt.req.Path: tt.answer})
			c, err := NewCellClient([]string{f.srv.URL}, caPEM, cert)
			if err != nil {
				t.Fatalf("NewCellClient: %v", err)
			}
			defer c.CloseIdleConnections()
			got, err := tt.call(c)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if diff := cmp.Diff(tt.want, got, equateNetip); diff != "" {
				t.Errorf("%s answer (-want +got):\n%s", tt.name, diff)
			}
			tt.req.Peer = "cell1" // the certificate, and no token
			if diff := cmp.Diff([]request{tt.req}, f.requests()); diff != "" {
				t.Errorf("%s request (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

func TestCellClientSendsNoToken(t *testing.T) {
	f := newFakeController(t, map[string]answer{"GET /trellis/v1/instance-ca": {200, `{"generation":1}`}})
	if _, err := NewCellClient([]string{f.srv.URL}, f.config().CACert, tls.Certificate{}); err == nil {
		t.Error("NewCellClient(no certificate) = nil error, want one")
	}
	c, err := NewCellClient([]string{f.srv.URL}, f.config().CACert, tls.Certificate{Certificate: [][]byte{f.srv.Certificate().Raw}})
	if err != nil {
		t.Fatal(err)
	}
	if ca, err := c.InstanceCA(context.Background()); err != nil || ca.Generation != 1 {
		t.Fatalf("InstanceCA = %+v, %v", ca, err)
	}
	if got := f.requests(); len(got) != 1 || got[0].Auth != "" {
		t.Errorf("a cell client sent %+v, want one request without Authorization", got)
	}
	if _, err := c.AppTLS(context.Background(), ""); err == nil {
		t.Error("AppTLS(\"\") = nil error, want one")
	}
}

func TestCellClientNeedsItsCertificate(t *testing.T) {
	f, caPEM, _ := newCellController(t, map[string]answer{"GET /trellis/v1/cell/state": {200, `{}`}})
	c, err := NewClient(ClientConfig{APIURL: f.srv.URL, CACert: caPEM, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CellState(context.Background(), -1, 0)
	if err == nil || !errors.Is(err, ErrUnreachable) {
		t.Errorf("CellState with a token and no certificate = %v, want a failed handshake (unreachable)", err)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestJoin(t *testing.T) {
	f := newFakeController(t, map[string]answer{"POST /trellis/v1/cells/join": {201,
		`{"cell":{"guid":"g1","name":"cell1","underlay_ip":"198.51.100.11","subnet":"10.255.1.0/24","last_seen":"0001-01-01T00:00:00Z","healthy":false},"certificate":"LEAF","ca":"CA"}`}})
	cfg := f.config()
	cfg.Token = "trlsj_join"
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Join(context.Background(), JoinRequest{Name: "cell1", UnderlayIP: "198.51.100.11", CSR: "CSR"})
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	want := JoinResponse{Cell: Cell{GUID: "g1", Name: "cell1", UnderlayIP: netip.MustParseAddr("198.51.100.11"), Subnet: netip.MustParsePrefix("10.255.1.0/24")}, Certificate: "LEAF", CA: "CA"}
	if diff := cmp.Diff(want, got, equateNetip); diff != "" {
		t.Errorf("Join answer (-want +got):\n%s", diff)
	}
	wantReq := []request{{Method: "POST", Path: "/trellis/v1/cells/join", Auth: "Bearer trlsj_join", ContentType: "application/json",
		Body: `{"name":"cell1","underlay_ip":"198.51.100.11","csr":"CSR"}`}}
	if diff := cmp.Diff(wantReq, f.requests()); diff != "" {
		t.Errorf("Join request (-want +got):\n%s", diff)
	}
}

// TestClientUnreachable: a refusal (4xx) is an *HTTPError only; a 5xx
// answer, or none, also matches ErrUnreachable (try again later). The
// texts stay the server's words, or the transport's.
func TestClientUnreachable(t *testing.T) {
	f := newFakeController(t, map[string]answer{
		"GET /trellis/v1/cell/state": {401, `{"error":"this cell was deleted: join again with a new join token"}`},
		"DELETE /trellis/v1/cell":    {503, `{"error":"store unavailable"}`},
	})
	c := f.client(t)
	ctx := context.Background()

	_, err := c.CellState(ctx, -1, 0)
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 401 || errors.Is(err, ErrUnreachable) {
		t.Errorf("CellState answered 401 = %v, want an *HTTPError 401 that is not ErrUnreachable", err)
	}
	if want := "this cell was deleted: join again with a new join token"; err == nil || err.Error() != want {
		t.Errorf("CellState answered 401 says %v, want %q", err, want)
	}

	err = c.LeaveCell(ctx)
	if !errors.As(err, &he) || he.Status != 503 || !errors.Is(err, ErrUnreachable) {
		t.Errorf("LeaveCell answered 503 = %v, want an *HTTPError 503 that is ErrUnreachable", err)
	}
	if want := "store unavailable"; err == nil || err.Error() != want {
		t.Errorf("LeaveCell answered 503 says %v, want %q", err, want)
	}

	f.srv.Close()
	err = c.LeaveCell(ctx)
	if !errors.Is(err, ErrUnreachable) || errors.As(err, &he) {
		t.Errorf("LeaveCell with the controller down = %v, want ErrUnreachable and no *HTTPError", err)
	}
	if err == nil || !strings.Contains(err.Error(), f.srv.URL+"/trellis/v1/cell") {
		t.Errorf("LeaveCell with the controller down says %v, want the request's URL in it", err)
	}
}

// equateNetip compares netip values by ==, which cmp cannot look into.
var equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

// A held poll whose controller falls silent (a link that drops its
// packets) is dropped after StateSilence without a byte, and the next goes
// to the next controller; one that hears a heartbeat at least that often
// is kept however long it is held.
func TestCellStateSilentPoll(t *testing.T) {
	ctx := context.Background()
	stateJSON := `{"revision":8,"cell":{"guid":"g1","name":"cell1","underlay_ip":"198.51.100.11","subnet":"10.255.1.0/24","last_seen":"0001-01-01T00:00:00Z","healthy":true}}`
	stop := make(chan struct{})
	defer close(stop)
	// silent answers 200 and a heartbeat, then nothing.
	silent, caPEM, cell := newCellServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write([]byte("\n"))
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	c, err := NewCellClient([]string{silent.URL, silent.URL}, caPEM, cell)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	t0 := time.Now()
	_, err = c.CellState(ctx, 7, 30*time.Second)
	took := time.Since(t0)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "silent") {
		t.Fatalf("CellState of a silent controller: %v, want an unreachable error naming the silence", err)
	}
	t.Logf("silent poll dropped after %v (StateSilence %v)", took.Round(time.Millisecond), StateSilence)
	if took > 20*time.Second {
		t.Errorf("silent poll dropped after %v, want about %v", took, StateSilence)
	}
	if c.Failovers() != 1 {
		t.Errorf("failovers after a silent poll: %d, want 1", c.Failovers())
	}

	// beating writes a heartbeat every 500 ms for twice StateSilence, then
	// the state.
	beating, caPEM, cell := newCellServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for range 2 * StateSilence / (500 * time.Millisecond) {
			w.Write([]byte("\n"))
			http.NewResponseController(w).Flush()
			time.Sleep(500 * time.Millisecond)
		}
		w.Write([]byte(stateJSON))
	}))
	c, err = NewCellClient([]string{beating.URL}, caPEM, cell)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	st, err := c.CellState(ctx, 7, 30*time.Second)
	if err != nil || st.Revision != 8 {
		t.Fatalf("CellState with heartbeats for %v: %+v %v, want revision 8", 2*StateSilence, st, err)
	}
}

// TestRegisterInstanceCSR checks the answers a registration that carries a
// CSR may get: the certificate (201); a refusal of the CSR, the
// registration standing (204 with the header); nothing (204: a controller
// that does not sign at registration); and a controller that refuses the
// unknown field, asked again without it.
func TestRegisterInstanceCSR(t *testing.T) {
	ctx := context.Background()
	reg := InstanceRegistration{AppGUID: "a1", Index: 2, IP: "10.255.1.9", ContainerID: "c1", CSR: "CSR"}
	const withCSR = `{"app_guid":"a1","index":2,"ip":"10.255.1.9","container_id":"c1","csr":"CSR"}`
	const withoutCSR = `{"app_guid":"a1","index":2,"ip":"10.255.1.9","container_id":"c1"}`
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		name   string
		serve  func(w http.ResponseWriter, body string)
		want   Registered
		bodies []string // the registrations the controller got
	}{
		{
			name: "certificate",
			serve: func(w http.ResponseWriter, _ string) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(201)
				io.WriteString(w, `{"certificate":"LEAF","not_before":"2030-01-02T03:04:05Z","not_after":"2030-01-03T03:04:05Z","ca":{"generation":1}}`)
			},
			want:   Registered{Certificate: &InstanceCertificate{Certificate: "LEAF", NotBefore: at, NotAfter: at.Add(24 * time.Hour), CA: InstanceCA{Generation: 1}}},
			bodies: []string{withCSR},
		},
		{
			name: "refused",
			serve: func(w http.ResponseWriter, _ string) {
				w.Header().Set(CertificateRefusedHeader, "400 key too weak")
				w.WriteHeader(204)
			},
			want:   Registered{Refused: "400 key too weak"},
			bodies: []string{withCSR},
		},
		{
			name:   "not signed at registration",
			serve:  func(w http.ResponseWriter, _ string) { w.WriteHeader(204) },
			want:   Registered{},
			bodies: []string{withCSR},
		},
		{
			name: "unknown field",
			serve: func(w http.ResponseWriter, body string) {
				if strings.Contains(body, "csr") {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(400)
					io.WriteString(w, `{"errors":[{"detail":"Request invalid due to parse error: json: unknown field \"csr\"","title":"CF-MessageParseError","code":1001}]}`)
					return
				}
				w.WriteHeader(204)
			},
			want:   Registered{},
			bodies: []string{withCSR, withoutCSR},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var bodies []string
			srv, caPEM, cert := newCellServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != "PUT" || r.URL.Path != "/trellis/v1/cell/instances/i1" {
					http.NotFound(w, r)
					return
				}
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, string(b))
				mu.Unlock()
				tt.serve(w, string(b))
			}))
			c, err := NewCellClient([]string{srv.URL}, caPEM, cert)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			got, err := c.RegisterInstanceCSR(ctx, "i1", reg)
			if err != nil {
				t.Fatalf("RegisterInstanceCSR: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			mu.Lock()
			defer mu.Unlock()
			if diff := cmp.Diff(tt.bodies, bodies); diff != "" {
				t.Errorf("registrations sent (-want +got):\n%s", diff)
			}
		})
	}
}
