package controller

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// TestNamesRefused checks that names that would show as something else
// than they are — invalid UTF-8 (which JSON decoding would silently turn
// into U+FFFD), control characters, bidirectional overrides, invisible
// format characters — are refused with 422 and change nothing, for every
// kind of name; and that a NUL cannot go into an app's command or
// environment.
func TestNamesRefused(t *testing.T) {
	e := newEnv(t, "sqlite")
	space := e.defaultSpace()
	var orgs api.List[api.Organization]
	e.must(e.admin, "GET", "/v3/organizations?names=default", "", 200, &orgs)
	org := orgs.Resources[0].GUID
	var ds api.List[api.Domain]
	e.must(e.admin, "GET", "/v3/domains?names=apps.internal", "", 200, &ds)
	domain := ds.Resources[0].GUID

	bodies := map[string]func(name string) (path, body string){
		"organization": func(n string) (string, string) { return "/v3/organizations", `{"name":"` + n + `"}` },
		"space": func(n string) (string, string) {
			return "/v3/spaces", `{"name":"` + n + `","relationships":{"organization":{"data":{"guid":"` + org + `"}}}}`
		},
		"app": func(n string) (string, string) {
			return "/v3/apps", `{"name":"` + n + `","relationships":{"space":{"data":{"guid":"` + space + `"}}}}`
		},
		"domain": func(n string) (string, string) { return "/v3/domains", `{"name":"` + n + `.internal","internal":true}` },
		"route": func(n string) (string, string) {
			return "/v3/routes", `{"host":"` + n + `","relationships":{"domain":{"data":{"guid":"` + domain + `"}}}}`
		},
		"token": func(n string) (string, string) {
			return "/trellis/v1/tokens", `{"scope":"network.admin","name":"` + n + `"}`
		},
	}
	names := []struct{ what, name, want string }{
		{"invalid UTF-8", "ev\xffil", "not valid UTF-8"},
		{"a truncated sequence", "evil\xe2\x80", "not valid UTF-8"},
		{"a lone surrogate", `evil\ud800`, ""},
		{"a control character", `ev\u0007il`, ""},
		{"a NUL", `ev\u0000il`, ""},
		{"right-to-left override", "ev\u202eli", ""},
		{"first strong isolate", "ev\u2068il", ""},
		{"right-to-left mark", "ev\u200fil", ""},
		{"zero-width space", "ev\u200bil", ""},
		{"byte order mark", "\ufeffevil", ""},
		{"line separator", "ev\u2028il", ""},
	}
	for kind, body := range bodies {
		for _, n := range names {
			path, b := body(n.name)
			code, got := e.do(e.admin, "POST", path, b)
			if code != 422 || !strings.Contains(got, n.want) {
				t.Errorf("%s name with %s: POST %s = %d %s, want 422 %q", kind, n.what, path, code, got, n.want)
			}
		}
	}
	var apps api.List[api.App]
	e.must(e.admin, "GET", "/v3/apps", "", 200, &apps)
	if len(apps.Resources) != 0 {
		t.Errorf("apps after refused names = %+v, want none", apps.Resources)
	}
	// The message names the character and what it is.
	_, got := e.do(e.admin, "POST", "/v3/apps", `{"name":"ev`+"\u202e"+`il","relationships":{"space":{"data":{"guid":"`+space+`"}}}}`)
	if want := "character U+202E at byte 2 is a bidirectional control character"; !strings.Contains(got, want) {
		t.Errorf("bidi override in an app name: %s, want %q", got, want)
	}
	// What people write is still fine, joiners included.
	for _, n := range []string{"web", "Ünïcødé app", "مرحبا", "می\u200cخواهم", "👩\u200d💻 team"} {
		e.must(e.admin, "POST", "/v3/apps", `{"name":"`+n+`","relationships":{"space":{"data":{"guid":"`+space+`"}}}}`, 201, nil)
	}

	app := e.createApp(space, "env")
	for _, b := range []string{
		`{"environment_variables":{"A":"x\u0000y"}}`,
		`{"command":["sh","-c","x\u0000y"]}`,
		`{"environment_variables":{"A":"` + "\xff" + `"}}`,
	} {
		if code, got := e.do(e.admin, "PATCH", "/v3/apps/"+app, b); code != 422 {
			t.Errorf("PATCH app %s = %d %s, want 422", b, code, got)
		}
	}
	e.must(e.admin, "PATCH", "/v3/apps/"+app, `{"environment_variables":{"A":"x y"}}`, 200, nil)
}

// TestAPICipherSuites checks that the API's TLS 1.2 offers forward-secret
// AEAD suites only.
func TestAPICipherSuites(t *testing.T) {
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", TLSConfig(cert, ca))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, tt := range []struct {
		name    string
		version uint16
		suite   uint16
		ok      bool
	}{
		{"TLS 1.3", tls.VersionTLS13, 0, true},
		{"ECDHE-ECDSA-AES128-GCM-SHA256", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true},
		{"ECDHE-ECDSA-CHACHA20-POLY1305", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true},
		{"ECDHE-ECDSA-AES128-SHA", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false},
		{"ECDHE-ECDSA-AES256-SHA", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, false},
		{"ECDHE-ECDSA-AES128-SHA256", tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, false},
		{"AES256-SHA", tls.VersionTLS12, tls.TLS_RSA_WITH_AES_256_CBC_SHA, false},
	} {
		cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tt.version, MaxVersion: tt.version}
		if tt.suite != 0 {
			cfg.CipherSuites = []uint16{tt.suite}
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err == nil {
			if got := c.ConnectionState(); tt.suite != 0 && got.CipherSuite != tt.suite {
				t.Errorf("%s: negotiated %s", tt.name, tls.CipherSuiteName(got.CipherSuite))
			}
			c.Close()
		}
		if (err == nil) != tt.ok {
			t.Errorf("handshake offering only %s = %v, want success %v", tt.name, err, tt.ok)
		}
	}
}

// TestMetricsForAdmins checks that the store-wide counts of /metrics are
// not shown to a token limited to some spaces.
func TestMetricsForAdmins(t *testing.T) {
	e := newEnv(t, "sqlite")
	writer := e.token(ScopeWrite, []string{e.defaultSpace()})
	if code, got := e.do(writer, "GET", "/metrics", ""); code != 403 || strings.Contains(got, "trellis_store_objects") {
		t.Errorf("network.write GET /metrics = %d %s, want 403", code, got)
	}
	if code, got := e.do(e.admin, "GET", "/metrics", ""); code != 200 || !strings.Contains(got, `trellis_store_objects{kind="apps"}`) {
		t.Errorf("network.admin GET /metrics = %d, want 200 with the store counts", code)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(containing string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), containing) {
			out = append(out, sc.Text())
		}
	}
	return out
}

// TestAuthFailuresLogged checks that refused tokens are logged with who
// sent them, never with the token, and at most logBurst lines at a time
// however many are sent.
func TestAuthFailuresLogged(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	st := storetest.Open(t, "sqlite")
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	s := NewServer(st, ca, pool, InstanceIdentity{}, log)
	value, _ := NewToken() // a well-formed token the store does not know
	for i := range 3 * logBurst {
		r := httptest.NewRequest("GET", "/v3/apps", nil)
		r.RemoteAddr = fmt.Sprintf("192.0.2.7:%d", 40000+i)
		r.Header.Set("Authorization", "Bearer "+value)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != 401 {
			t.Fatalf("GET /v3/apps with an unknown token = %d, want 401", w.Code)
		}
	}
	got := logs.lines("authentication failed")
	if len(got) == 0 || len(got) > logBurst {
		t.Fatalf("%d lines logged for %d refused tokens, want 1 to %d:\n%s", len(got), 3*logBurst, logBurst, strings.Join(got, "\n"))
	}
	for _, l := range got {
		if !strings.Contains(l, "remote=192.0.2.7:") || !strings.Contains(l, "path=/v3/apps") {
			t.Errorf("log line %q lacks the remote address or the path", l)
		}
	}
	if all := logs.lines(""); strings.Contains(strings.Join(all, "\n"), value[len(tokenPrefix):len(tokenPrefix)+8]) {
		t.Errorf("the log holds the token:\n%s", strings.Join(all, "\n"))
	}
}

// TestPlaintextConnectionsLogBounded checks that a scanner's plaintext
// connections to the API port make a bounded number of log lines (each is
// a TLS handshake error), not one each.
func TestPlaintextConnectionsLogBounded(t *testing.T) {
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{StateDir: t.TempDir(), Listen: "127.0.0.1:0", Log: slog.New(slog.NewTextHandler(&logs, nil)),
			Ready: func(url string) { ready <- url }})
	}()
	var url string
	select {
	case url = <-ready:
	case err := <-done:
		t.Fatalf("Run = %v", err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	addr := strings.TrimPrefix(url, "https://")
	const conns = 200
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "GET / HTTP/1.0\r\n\r\n")
		io.Copy(io.Discard, c) // the server answers 400 and closes
		c.Close()
	}
	// The server logs each handshake error before it closes: all are in.
	deadline := time.Now().Add(5 * time.Second)
	var got []string
	for {
		got = logs.lines("TLS handshake error")
		if len(got) >= logBurst || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(got) == 0 || len(got) > logBurst {
		t.Errorf("%d plaintext connections logged %d handshake errors, want 1 to %d", conns, len(got), logBurst)
	}
	if !strings.Contains(strings.Join(got, "\n"), "level=WARN") {
		t.Errorf("handshake errors not logged as warnings:\n%s", strings.Join(got, "\n"))
	}
}

// TestLogLimiterSummary checks, with a short window, that suppressed lines
// are counted in one summary line and that the next window passes lines.
func TestLogLimiterSummary(t *testing.T) {
	var logs syncBuffer
	l := newLogLimiter(slog.New(slog.NewTextHandler(&logs, nil)), slog.LevelWarn, "test lines")
	l.burst, l.window = 2, 50*time.Millisecond
	for i := range 7 {
		l.Log("line", "i", i)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(logs.lines("suppressed")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := logs.lines("msg=line"); len(got) != 2 {
		t.Errorf("%d lines passed, want 2", len(got))
	}
	got := logs.lines("suppressed")
	if len(got) != 1 || !strings.Contains(got[0], "what=\"test lines\" count=5") {
		t.Errorf("summary = %q, want one line counting 5 test lines", got)
	}
	// A new window passes lines again.
	l.Log("line", "i", 7)
	if got := logs.lines("msg=line"); len(got) != 3 {
		t.Errorf("%d lines passed after the window, want 3", len(got))
	}
}
