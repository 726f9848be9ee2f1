package sampleapp_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-c2c/trellis/internal/sampleapp"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    sampleapp.Config
		wantErr string
	}{
		{
			name: "defaults",
			env:  map[string]string{},
			want: sampleapp.Config{Port: 8080},
		},
		{
			name: "all set",
			env: map[string]string{
				"PORT": "9000", "TRELLIS_APP_NAME": "backend", "TRELLIS_APP_GUID": "a-1", "CF_INSTANCE_GUID": "g-1",
				"CF_INSTANCE_INDEX": "3", "CF_INSTANCE_INTERNAL_IP": "10.255.1.2", "CF_INSTANCE_IP": "198.51.100.2",
				"CF_INSTANCE_CERT": "/etc/cf-instance-credentials/instance.crt", "CF_INSTANCE_KEY": "/etc/cf-instance-credentials/instance.key",
				"SSL_CERT_FILE": "/etc/cf-system-certificates/trusted-ca.crt", "CF_SYSTEM_CERT_PATH": "/etc/cf-system-certificates",
			},
			want: sampleapp.Config{Port: 9000, AppName: "backend", AppGUID: "a-1", InstanceGUID: "g-1", InstanceIndex: 3, InstanceIP: "10.255.1.2",
				Identity: sampleapp.Identity{
					CertFile: "/etc/cf-instance-credentials/instance.crt", KeyFile: "/etc/cf-instance-credentials/instance.key",
					CAFile: "/etc/cf-system-certificates/trusted-ca.crt", CADir: "/etc/cf-system-certificates",
				}},
		},
		{
			name: "instance ip falls back to CF_INSTANCE_IP",
			env:  map[string]string{"CF_INSTANCE_IP": "198.51.100.2"},
			want: sampleapp.Config{Port: 8080, InstanceIP: "198.51.100.2"},
		},
		{name: "reserved port", env: map[string]string{"PORT": "61443"}, wantErr: "port 61443 is reserved for container networking"},
		{name: "port not a number", env: map[string]string{"PORT": "http"}, wantErr: `PORT "http" is not a port number`},
		{name: "port out of range", env: map[string]string{"PORT": "70000"}, wantErr: `PORT "70000" is not a port number`},
		{name: "bad index", env: map[string]string{"CF_INSTANCE_INDEX": "-1"}, wantErr: `CF_INSTANCE_INDEX "-1" is not an instance index`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sampleapp.ConfigFromEnv(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ConfigFromEnv(%v) error = %v, want %q", tt.env, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ConfigFromEnv(%v): %v", tt.env, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ConfigFromEnv(%v) mismatch (-want +got):\n%s", tt.env, diff)
			}
		})
	}
}

func TestRunRefusesReservedPort(t *testing.T) {
	err := sampleapp.Run(t.Context(), sampleapp.Config{Host: "127.0.0.1", Port: 61443})
	if err == nil || err.Error() != "port 61443 is reserved for container networking" {
		t.Fatalf("Run(port 61443) = %v, want the reserved-port error", err)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}, "no such host"},
		{fmt.Errorf("get: %w", context.DeadlineExceeded), "timeout"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, "remote error: tls: bad certificate"},
		{fmt.Errorf("get: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), "tls: certificate signed by unknown authority"},
		{fmt.Errorf("get: %w", x509.HostnameError{Host: "backend.apps.internal", Certificate: &x509.Certificate{}}), "tls: certificate name mismatch"},
		{fmt.Errorf("get: %w", x509.CertificateInvalidError{Reason: x509.Expired}), "tls: certificate expired or not yet valid"},
		{fmt.Errorf("get: %w", x509.CertificateInvalidError{Reason: x509.NotAuthorizedToSign}), "tls: invalid certificate"},
		{fmt.Errorf("get: %w", http.ErrSchemeMismatch), "tls: server does not speak TLS"},
		{errors.New("something else"), ""},
	}
	for _, tt := range tests {
		if got := sampleapp.Classify(tt.err); got != tt.want {
			t.Errorf("Classify(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the app on loopback until the test ends and returns its base
// URL, its UDP address and its log.
func start(t *testing.T) (base, udpAddr string, log *syncBuffer) {
	t.Helper()
	a := startApp(t, sampleapp.Config{
		AppName: "frontend", InstanceGUID: "guid-0", InstanceIndex: 2, InstanceIP: "10.255.7.9",
	})
	return a.base, a.udp, a.log
}

// running is a sample app started by startApp.
type running struct {
	base    string // http://127.0.0.1:PORT
	tlsAddr string // 127.0.0.1:TLSPORT, with Config.TLS
	udp     string
	log     *syncBuffer
}

// startApp runs the app with cfg on loopback until the test ends, with
// short probe timeouts (unless cfg sets ProxyTimeout) and a log the test can read.
func startApp(t *testing.T, cfg sampleapp.Config) running {
	t.Helper()
	log := &syncBuffer{}
	cfg.Host = "127.0.0.1"
	if cfg.ProxyTimeout == 0 {
		cfg.ProxyTimeout = 300 * time.Millisecond
	}
	cfg.UDPTimeout = 300 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	s, err := sampleapp.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", s.Port())
	r := running{base: "http://" + addr, udp: addr, log: log}
	if cfg.TLS != nil {
		r.tlsAddr = fmt.Sprintf("127.0.0.1:%d", s.TLSPort())
	}
	return r
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestIdentity(t *testing.T) {
	base, _, log := start(t)
	code, body := get(t, base+"/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d %s", code, body)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET / body %q: %v", body, err)
	}
	want := map[string]any{"app": "frontend", "instance_guid": "guid-0", "index": 2.0, "ip": "10.255.7.9"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GET / mismatch (-want +got):\n%s", diff)
	}
	if code, _ := get(t, base+"/nothing"); code != http.StatusNotFound {
		t.Errorf("GET /nothing = %d, want 404", code)
	}
	if l := log.String(); !strings.Contains(l, "path=/ status=200") || !strings.Contains(l, "path=/nothing status=404") {
		t.Errorf("log has no line per request:\n%s", l)
	}
}

// silentTCP accepts connections and never answers them.
func silentTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return l.Addr().String()
}

func TestProxy(t *testing.T) {
	base, _, _ := start(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprintf(w, "upstream saw %s", r.URL.RequestURI())
	}))
	t.Cleanup(upstream.Close)
	up := strings.TrimPrefix(upstream.URL, "http://")

	tests := []struct {
		name     string
		path     string
		wantCode int
		wantBody string // a substring
	}{
		{"allowed", "/proxy/" + up + "/some/path?q=1", http.StatusTeapot, "upstream saw /some/path?q=1"},
		{"no path", "/proxy/" + up, http.StatusTeapot, "upstream saw /"},
		{"refused", "/proxy/" + closedPort(t, "tcp") + "/", http.StatusBadGateway, "connection refused"},
		{"timeout", "/proxy/" + silentTCP(t) + "/", http.StatusBadGateway, "timeout"},
		{"no port", "/proxy/localhost/", http.StatusBadRequest, "HOST:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, base+tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s = %d %q, want %d with %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// silentUDP reads datagrams and never answers.
func silentUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return c.LocalAddr().String()
}

func TestUDP(t *testing.T) {
	base, udpAddr, _ := start(t)

	// The echo server on the app's own port.
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("UDP echo of %q = %q, %v", "ping", buf[:n], err)
	}

	tests := []struct {
		name     string
		path     string
		wantCode int
		wantBody string
	}{
		{"echo", "/udp/" + udpAddr + "/hello%20there", http.StatusOK, "hello there"},
		{"timeout", "/udp/" + silentUDP(t) + "/hello", http.StatusBadGateway, "timeout"},
		{"refused", "/udp/" + closedPort(t, "udp") + "/hello", http.StatusBadGateway, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, base+tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s = %d %q, want %d with %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sampleapp.Run(ctx, sampleapp.Config{Host: "127.0.0.1", Logger: slog.New(slog.DiscardHandler)})
	}()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
