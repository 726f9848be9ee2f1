package proxy_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/proxy"
)

const backend = "backend.apps.internal"

// TestForward: TLS on 61443 of each instance reaches that instance's app,
// with TLS 1.2 and 1.3, and the certificate verifies against the CA under
// the app's internal route name.
func TestForward(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{})
	for _, tg := range top.insts {
		set(t, s, tg, c.issue(t, leaf{instance: "inst-" + tg.name, app: "app-backend", dns: []string{backend}, ip: tg.ip}))
		if !s.Serving("inst-" + tg.name) {
			t.Errorf("Serving(%q) = false after Set", "inst-"+tg.name)
		}
	}
	for _, tg := range top.insts {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			cfg := clientConfig(c, backend)
			cfg.MinVersion, cfg.MaxVersion = v, v
			tc, err := top.dialTLS(t, tg, cfg)
			if err != nil {
				t.Fatalf("handshake with %s (TLS %x) = %v", tg.name, v, err)
			}
			cs := tc.ConnectionState()
			if cs.Version != v || cs.PeerCertificates[0].Subject.CommonName != "inst-"+tg.name {
				t.Errorf("%s: version %x, peer %s; want %x, inst-%s", tg.name, cs.Version, cs.PeerCertificates[0].Subject, v, tg.name)
			}
			if got, err := get(tc, "/"); err != nil || got != tg.name {
				t.Errorf("GET / through %s = %q, %v; want %q", tg.tlsAddr(), got, err, tg.name)
			}
			tc.Close()
		}
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=ok"); got != 4 {
		t.Errorf("handshakes ok = %v, want 4", got)
	}
	if got := metric(t, reg, "trellis_proxy_instances"); got != 2 {
		t.Errorf("instances = %v, want 2", got)
	}
	waitFor(t, "bytes counted", func() bool {
		return metric(t, reg, "trellis_proxy_bytes_total", "instance=inst-a", "direction=from_app") > 0 &&
			metric(t, reg, "trellis_proxy_connections_active", "instance=inst-a") == 0
	})
}

// TestOnlyModernTLS: TLS 1.1, and TLS 1.2 without ECDHE or AEAD, are
// refused with an alert.
func TestOnlyModernTLS(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	for _, tc := range []struct {
		name   string
		cfg    func(*tls.Config)
		remote string
	}{
		{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }, "protocol version"},
		{"CBC", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
		}, "handshake failure"},
	} {
		cfg := clientConfig(c, backend)
		tc.cfg(cfg)
		_, err := top.dialTLS(t, top.insts[0], cfg)
		if !isRemoteAlert(err, tc.remote) {
			t.Errorf("%s: handshake = %v, want the alert %q", tc.name, err, tc.remote)
		}
	}
	waitFor(t, "refusals counted", func() bool { return metric(t, reg, "trellis_proxy_handshakes_total", "result=failed") == 2 })
}

// TestPlaintextGetsAlert: an HTTP request to 61443 is answered with a TLS
// unexpected_message alert and a close, not left hanging.
func TestPlaintextGetsAlert(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, refused := newServer(t, proxy.Config{})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	conn := dial(t, top.client, top.insts[0].tlsAddr())
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: backend.apps.internal\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	want := []byte{21, 3, 1, 0, 2, 2, 10} // alert record: fatal unexpected_message
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("answer to plaintext = %x, %v; want %x then EOF", got, err, want)
	}
	if r := nextRefusal(t, refused); r.Instance != "inst-a" || !strings.Contains(r.Reason, "not a TLS handshake") ||
		r.Peer.Addr() != netip.MustParseAddr("198.51.100.11") {
		t.Errorf("refusal = %+v, want inst-a, not TLS, from 198.51.100.11", r)
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=not_tls"); got != 1 {
		t.Errorf("handshakes not_tls = %v, want 1", got)
	}
}

// recorder keeps what is read through it.
type recorder struct {
	net.Conn
	got bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.got.Write(p[:n])
	return n, err
}

// TestServerName: no SNI and any of the certificate's DNS names (in any
// case) are served; another name gets an unrecognized_name alert and a
// close, checked on the raw bytes received.
func TestServerName(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, refused := newServer(t, proxy.Config{})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	for _, tc := range []struct {
		sni string
		ok  bool
	}{
		{"", true},
		{backend, true},
		{"Backend.Apps.Internal", true},
		{"inst-a", true},
		{"frontend.apps.internal", false},
		{"apps.internal", false},
	} {
		raw := &recorder{Conn: dial(t, top.client, top.insts[0].tlsAddr())}
		raw.SetDeadline(time.Now().Add(30 * time.Second))
		cfg := &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS13,
			VerifyConnection: func(cs tls.ConnectionState) error {
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: c.pool, DNSName: backend})
				return err
			}}
		tconn := tls.Client(raw, cfg)
		err := tconn.Handshake()
		if tc.ok {
			if err != nil {
				t.Errorf("SNI %q: handshake = %v, want served", tc.sni, err)
			} else if got, err := get(tconn, "/"); err != nil || got != "a" {
				t.Errorf("SNI %q: GET / = %q, %v; want %q", tc.sni, got, err, "a")
			}
			continue
		}
		if !isRemoteAlert(err, "unrecognized name") {
			t.Errorf("SNI %q: handshake = %v, want an unrecognized_name alert", tc.sni, err)
		}
		rest, err := io.ReadAll(raw.Conn)
		wantAlert := []byte{21, 3, 3, 0, 2, 2, 112} // plaintext alert record: fatal unrecognized_name
		if got := raw.got.Bytes(); !bytes.HasSuffix(got, wantAlert) || len(rest) != 0 || err != nil {
			t.Errorf("SNI %q: received %x then %x, %v; want the alert %x then EOF", tc.sni, got, rest, err, wantAlert)
		}
		if r := nextRefusal(t, refused); !strings.Contains(r.Reason, tc.sni) {
			t.Errorf("SNI %q: refusal %+v, want the name in the reason", tc.sni, r)
		}
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=unknown_name"); got != 2 {
		t.Errorf("handshakes unknown_name = %v, want 2", got)
	}
}

// TestRotation: a new certificate serves new handshakes while a connection
// made with the old one keeps working.
func TestRotation(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, _, _ := newServer(t, proxy.Config{})
	tg := top.insts[0]
	first := c.issue(t, leaf{instance: "inst-a", dns: []string{backend}})
	set(t, s, tg, first)
	old, err := top.dialTLS(t, tg, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(old, "/"); err != nil || got != "a" {
		t.Fatalf("GET / = %q, %v", got, err)
	}
	second := c.issue(t, leaf{instance: "inst-a", dns: []string{backend}})
	set(t, s, tg, second)
	if got, err := get(old, "/"); err != nil || got != "a" {
		t.Errorf("GET / on the connection made before the rotation = %q, %v; want %q", got, err, "a")
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Errorf("old connection's serial = %x, want %x", got, first.Leaf.SerialNumber)
	}
	fresh, err := top.dialTLS(t, tg, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(second.Leaf.SerialNumber) != 0 {
		t.Errorf("new handshake's serial = %x, want the rotated %x", got, second.Leaf.SerialNumber)
	}
	// A nil certificate keeps the current one.
	set(t, s, tg, nil)
	again, err := top.dialTLS(t, tg, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got := again.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(second.Leaf.SerialNumber) != 0 {
		t.Errorf("after Set(nil), serial = %x, want %x", got, second.Leaf.SerialNumber)
	}
}

// TestInvalidCertificateNeverServed: an expired or not-yet-valid
// certificate, or none, is refused with an internal_error alert from the
// server (not shown for the client to reject).
func TestInvalidCertificateNeverServed(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, refused := newServer(t, proxy.Config{})
	tg := top.insts[0]
	now := time.Now()
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		reason string
	}{
		{"none", nil, "no certificate"},
		{"expired", c.issue(t, leaf{instance: "inst-a", dns: []string{backend}, notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour)}), "expired at"},
		{"not yet valid", c.issue(t, leaf{instance: "inst-a", dns: []string{backend}, notBefore: now.Add(time.Hour), notAfter: now.Add(2 * time.Hour)}), "not valid before"},
	} {
		set(t, s, tg, tc.cert)
		_, err := top.dialTLS(t, tg, clientConfig(c, backend))
		if !isRemoteAlert(err, "internal error") {
			t.Errorf("%s: handshake = %v, want an internal_error alert from the server", tc.name, err)
		}
		if r := nextRefusal(t, refused); !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s: refusal %+v, want a reason with %q", tc.name, r, tc.reason)
		}
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=no_certificate"); got != 3 {
		t.Errorf("handshakes no_certificate = %v, want 3", got)
	}
	set(t, s, tg, c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	if _, err := top.dialTLS(t, tg, clientConfig(c, backend)); err != nil {
		t.Errorf("with a valid certificate again, handshake = %v", err)
	}
}

// TestClientCertificates: with RequireClientCert, only a client whose
// certificate verifies and is authorized gets through; the others get an
// alert and OnRefused hears who and why.
func TestClientCertificates(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	other := newCA(t, "someone else's CA")
	s, reg, refused := newServer(t, proxy.Config{})
	tg := top.insts[0]
	allow := func(peer *x509.Certificate) error {
		app := ""
		for _, ou := range peer.Subject.OrganizationalUnit {
			if a, ok := strings.CutPrefix(ou, "app:"); ok {
				app = a
			}
		}
		if app == "app-frontend" {
			return nil
		}
		return fmt.Errorf("client certificate of app %s is not allowed by a policy to reach this app on tcp/61443", app)
	}
	set(t, s, tg, c.issue(t, leaf{instance: "inst-a", app: "app-backend", dns: []string{backend}}), func(i *proxy.Instance) {
		i.RequireClientCert, i.ClientCAs, i.Authorize = true, c.pool, allow
	})
	frontend := c.issue(t, leaf{instance: "inst-f", app: "app-frontend"})
	stranger := c.issue(t, leaf{instance: "inst-x", app: "app-stranger"})
	forged := other.issue(t, leaf{instance: "inst-y", app: "app-frontend"})
	for _, tc := range []struct {
		name    string
		cert    *tls.Certificate
		version uint16
		peerApp string
		reason  string // "" when allowed
	}{
		{"allowed app", frontend, tls.VersionTLS13, "", ""},
		{"allowed app, TLS 1.2", frontend, tls.VersionTLS12, "", ""},
		{"other app", stranger, tls.VersionTLS13, "app-stranger", "client certificate of app app-stranger is not allowed by a policy to reach this app on tcp/61443"},
		{"other app, TLS 1.2", stranger, tls.VersionTLS12, "app-stranger", "client certificate of app app-stranger is not allowed"},
		{"no certificate", nil, tls.VersionTLS13, "", "no client certificate"},
		{"no certificate, TLS 1.2", nil, tls.VersionTLS12, "", "no client certificate"},
		{"another CA", forged, tls.VersionTLS13, "", "client certificate not trusted: x509: certificate signed by unknown authority"},
	} {
		cfg := clientConfig(c, backend)
		cfg.MinVersion, cfg.MaxVersion = tc.version, tc.version
		if tc.cert != nil {
			// Sent whatever CAs the server names (a Go client would not
			// send one from another CA on its own).
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.cert, nil }
		}
		tconn, err := top.dialTLS(t, tg, cfg)
		var body string
		if err == nil {
			// TLS 1.3: the client's handshake ends before the server
			// checked its certificate; the verdict comes with the next read.
			body, err = get(tconn, "/")
		}
		if tc.reason == "" {
			if err != nil || body != "a" {
				t.Errorf("%s: GET / = %q, %v; want %q", tc.name, body, err, "a")
			}
			continue
		}
		alert := "bad certificate"
		if tc.cert == forged {
			alert = "unknown certificate authority"
		}
		if !isRemoteAlert(err, alert) {
			t.Errorf("%s: GET / = %q, %v; want the alert %q", tc.name, body, err, alert)
		}
		r := nextRefusal(t, refused)
		if r.Instance != "inst-a" || r.PeerApp != tc.peerApp || !strings.HasPrefix(r.Reason, tc.reason) ||
			r.Peer.Addr() != netip.MustParseAddr("198.51.100.11") {
			t.Errorf("%s: refusal = %+v, want peer app %q, reason %q, from 198.51.100.11", tc.name, r, tc.peerApp, tc.reason)
		}
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=client_refused"); got != 5 {
		t.Errorf("handshakes client_refused = %v, want 5", got)
	}
}

// TestSetRechecksOpenConnections: a Set that stops authorizing a client
// closes its open connection and reports it.
func TestSetRechecksOpenConnections(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, refused := newServer(t, proxy.Config{})
	tg := top.insts[0]
	cert := c.issue(t, leaf{instance: "inst-a", app: "app-backend", dns: []string{backend}})
	yes := func(*x509.Certificate) error { return nil }
	no := func(*x509.Certificate) error { return errors.New("the policy is gone") }
	mtls := func(auth func(*x509.Certificate) error) func(*proxy.Instance) {
		return func(i *proxy.Instance) { i.RequireClientCert, i.ClientCAs, i.Authorize = true, c.pool, auth }
	}
	set(t, s, tg, cert)
	plain, err := top.dialTLS(t, tg, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(plain, "/"); err != nil || got != "a" {
		t.Fatalf("GET / = %q, %v", got, err)
	}

	set(t, s, tg, cert, mtls(yes)) // client certificates required now
	if r := nextRefusal(t, refused); r.Reason != "open connection closed: no client certificate" {
		t.Errorf("refusal = %+v, want the connection without a client certificate closed", r)
	}
	if _, err := get(plain, "/"); err == nil {
		t.Error("GET / on a connection without a client certificate worked after Set required one")
	}
	cfg := clientConfig(c, backend)
	cfg.Certificates = []tls.Certificate{*c.issue(t, leaf{instance: "inst-f", app: "app-frontend"})}
	withCert, err := top.dialTLS(t, tg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(withCert, "/"); err != nil || got != "a" {
		t.Fatalf("GET / with an authorized client certificate = %q, %v; want %q", got, err, "a")
	}
	set(t, s, tg, cert, mtls(yes)) // a Set that changes nothing keeps it
	if got, err := get(withCert, "/"); err != nil || got != "a" {
		t.Errorf("GET / after a Set with the same settings = %q, %v; want %q", got, err, "a")
	}

	set(t, s, tg, cert, mtls(no))
	if r := nextRefusal(t, refused); r.Reason != "open connection closed: the policy is gone" || r.PeerApp != "app-frontend" {
		t.Errorf("refusal = %+v, want app-frontend's connection closed", r)
	}
	if _, err := get(withCert, "/"); err == nil {
		t.Error("GET / worked after Set stopped authorizing the client")
	}
	if got := metric(t, reg, "trellis_proxy_connections_total", "result=refused_by_set"); got != 2 {
		t.Errorf("connections refused_by_set = %v, want 2", got)
	}
}

// TestAppCannotBindTLSPort: nothing in the instance's namespace can bind
// 61443, on any address, even with SO_REUSEADDR and SO_REUSEPORT.
func TestAppCannotBindTLSPort(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, _, _ := newServer(t, proxy.Config{})
	tg := top.insts[0]
	set(t, s, tg, c.issue(t, leaf{instance: "inst-a"}))
	for _, tc := range []struct {
		network, addr string
	}{
		{"tcp4", "0.0.0.0"},
		{"tcp4", tg.ip.String()},
		{"tcp4", "127.0.0.1"},
		{"tcp", "::"}, // dual stack: what net.Listen("tcp", ":61443") asks for
	} {
		addr := net.JoinHostPort(tc.addr, strconv.Itoa(proxy.Port))
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
			})
			return serr
		}}
		err := netns.Do(tg.netns, func() error {
			ln, err := lc.Listen(t.Context(), tc.network, addr)
			if err == nil {
				ln.Close()
			}
			return err
		})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("listen %s %s in the instance's namespace = %v, want EADDRINUSE", tc.network, addr, err)
		}
	}
}

// TestRemove: Remove closes the instance's connections and frees 61443.
func TestRemove(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{})
	a, b := top.insts[0], top.insts[1]
	set(t, s, a, c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	set(t, s, b, c.issue(t, leaf{instance: "inst-b", dns: []string{backend}}))
	conns := map[string]*tls.Conn{}
	for _, tg := range top.insts {
		tc, err := top.dialTLS(t, tg, clientConfig(c, backend))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := get(tc, "/"); err != nil || got != tg.name {
			t.Fatalf("GET / = %q, %v", got, err)
		}
		conns[tg.name] = tc
	}
	if _, ok := lookup(t, reg, "trellis_proxy_connections_active", "instance=inst-a"); !ok {
		t.Error("no trellis_proxy_connections_active series for inst-a while it has a connection")
	}

	s.Remove("inst-a")
	if s.Serving("inst-a") {
		t.Error(`Serving("inst-a") = true after Remove`)
	}
	if n, err := conns["a"].Read(make([]byte, 1)); err == nil {
		t.Errorf("read on inst-a's connection after Remove = %d bytes, want an error", n)
	}
	err := netns.Do(a.netns, func() error {
		ln, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(proxy.Port))
		if err == nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("listen on 61443 in inst-a's namespace after Remove = %v, want it free", err)
	}
	for _, name := range []string{"trellis_proxy_connections_active", "trellis_proxy_bytes_total"} {
		if _, ok := lookup(t, reg, name, "instance=inst-a"); ok {
			t.Errorf("%s{instance=inst-a} still exists after Remove", name)
		}
	}
	if got := metric(t, reg, "trellis_proxy_instances"); got != 1 {
		t.Errorf("instances = %v, want 1", got)
	}
	// The other instance is untouched.
	if got, err := get(conns["b"], "/"); err != nil || got != "b" {
		t.Errorf("GET / on inst-b's connection after removing inst-a = %q, %v", got, err)
	}
	s.Remove("inst-a") // again: nothing
}

// TestSetMovesNamespace: Set of a served ID with another namespace and
// address serves it there and frees the old namespace's port.
func TestSetMovesNamespace(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{})
	a, b := top.insts[0], top.insts[1]
	cert := c.issue(t, leaf{instance: "inst-x", dns: []string{backend}})
	inst := proxy.Instance{ID: "inst-x", NetNS: a.netns, IP: a.ip}
	if err := s.Set(inst, cert); err != nil {
		t.Fatal(err)
	}
	old, err := top.dialTLS(t, a, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	inst.NetNS, inst.IP = b.netns, b.ip
	if err := s.Set(inst, cert); err != nil {
		t.Fatalf("Set(moved) = %v", err)
	}
	if _, err := old.Read(make([]byte, 1)); err == nil {
		t.Error("the connection in the old namespace survived the move")
	}
	tc, err := top.dialTLS(t, b, clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(tc, "/"); err != nil || got != "b" {
		t.Errorf("GET / after the move = %q, %v; want %q", got, err, "b")
	}
	if err := netns.Do(a.netns, func() error {
		ln, err := net.Listen("tcp4", ":"+strconv.Itoa(proxy.Port))
		if err == nil {
			ln.Close()
		}
		return err
	}); err != nil {
		t.Errorf("listen on 61443 in the old namespace = %v, want it free", err)
	}
	if got := metric(t, reg, "trellis_proxy_instances"); got != 1 {
		t.Errorf("instances = %v, want 1", got)
	}
	// Two IDs cannot share a namespace.
	if err := s.Set(proxy.Instance{ID: "inst-y", NetNS: b.netns, IP: b.ip}, cert); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("Set of a second ID in the same namespace = %v, want EADDRINUSE", err)
	}
}

// TestFloodDoesNotStarveOthers: idle connections beyond the per-instance
// limit are closed at once, and another instance keeps handshaking; the
// cell-wide limit holds too.
func TestFloodDoesNotStarveOthers(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, refused := newServer(t, proxy.Config{MaxHandshakesPerInstance: 4, MaxHandshakes: 6, HandshakeTimeout: time.Hour})
	a, b := top.insts[0], top.insts[1]
	set(t, s, a, c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	set(t, s, b, c.issue(t, leaf{instance: "inst-b", dns: []string{backend}}))
	inProgress := func(n float64) func() bool {
		return func() bool { return metric(t, reg, "trellis_proxy_handshakes_in_progress") == n }
	}

	var idle []*net.TCPConn
	for range 4 {
		idle = append(idle, dial(t, top.client, a.tlsAddr()))
	}
	waitFor(t, "4 handshakes in progress", inProgress(4))
	for range 3 {
		extra := dial(t, top.client, a.tlsAddr())
		extra.SetDeadline(time.Now().Add(30 * time.Second))
		if n, err := extra.Read(make([]byte, 1)); err == nil {
			t.Errorf("read on a connection beyond the instance's limit = %d bytes, want it closed", n)
		}
	}
	if got := metric(t, reg, "trellis_proxy_handshakes_total", "result=busy"); got != 3 {
		t.Errorf("handshakes busy = %v, want 3", got)
	}
	if r := nextRefusal(t, refused); r.Instance != "inst-a" || !strings.Contains(r.Reason, "for this instance (limit 4)") {
		t.Errorf("refusal = %+v, want inst-a over its limit", r)
	}

	tc, err := top.dialTLS(t, b, clientConfig(c, backend))
	if err != nil {
		t.Fatalf("handshake with inst-b during the flood on inst-a = %v", err)
	}
	if got, err := get(tc, "/"); err != nil || got != "b" {
		t.Errorf("GET / on inst-b during the flood = %q, %v", got, err)
	}

	// The cell-wide limit: 4 + 2 idle, the next one is refused.
	for range 2 {
		idle = append(idle, dial(t, top.client, b.tlsAddr()))
	}
	waitFor(t, "6 handshakes in progress", inProgress(6))
	extra := dial(t, top.client, b.tlsAddr())
	extra.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Error("a connection beyond the cell's limit was not closed")
	}
	for len(refused) > 0 {
		<-refused
	}
	// Once the flood is gone, inst-a handshakes again.
	for _, c := range idle {
		c.Close()
	}
	waitFor(t, "no handshake in progress", inProgress(0))
	if _, err := top.dialTLS(t, a, clientConfig(c, backend)); err != nil {
		t.Errorf("handshake with inst-a after the flood = %v", err)
	}
}

// TestHandshakeTimeout: a client that says nothing is closed after the
// handshake timeout.
func TestHandshakeTimeout(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{HandshakeTimeout: 50 * time.Millisecond})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a"}))
	conn := dial(t, top.client, top.insts[0].tlsAddr())
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on a silent connection = %d, %v; want EOF", n, err)
	}
	waitFor(t, "the timeout counted", func() bool {
		return metric(t, reg, "trellis_proxy_handshakes_total", "result=timeout") == 1
	})
}

// TestAppUnreachable: with nothing listening on the app port, the client
// gets a clean TLS close (close_notify), and it is counted.
func TestAppUnreachable(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}), func(i *proxy.Instance) { i.AppPort = 8999 })
	tc, err := top.dialTLS(t, top.insts[0], clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := tc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read with the app down = %d, %v; want EOF (close_notify)", n, err)
	}
	waitFor(t, "app_unreachable counted", func() bool {
		return metric(t, reg, "trellis_proxy_connections_total", "result=app_unreachable") == 1
	})
}

// TestHalfClose: a client that sends its request and shuts down its side
// gets the whole answer; the app sees EOF and the client sees close_notify.
func TestHalfClose(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, _, _ := newServer(t, proxy.Config{})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}), func(i *proxy.Instance) { i.AppPort = echoPort })
	tc, err := top.dialTLS(t, top.insts[0], clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	if _, err := tc.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(tc)
	if err != nil || !bytes.Equal(got, msg) {
		t.Errorf("echo after half-close = %d bytes, %v; want the %d bytes sent, then EOF", len(got), err, len(msg))
	}
}

// TestIdleTimeout: a connection that carries nothing for IdleTimeout is
// closed.
func TestIdleTimeout(t *testing.T) {
	top := newTopology(t)
	c := newCA(t, "instance CA")
	s, reg, _ := newServer(t, proxy.Config{IdleTimeout: 100 * time.Millisecond})
	set(t, s, top.insts[0], c.issue(t, leaf{instance: "inst-a", dns: []string{backend}}))
	tc, err := top.dialTLS(t, top.insts[0], clientConfig(c, backend))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(tc, "/"); err != nil || got != "a" {
		t.Fatalf("GET / = %q, %v", got, err)
	}
	if _, err := tc.Read(make([]byte, 1)); err == nil {
		t.Error("an idle connection was not closed")
	}
	if got := metric(t, reg, "trellis_proxy_connections_total", "result=idle"); got != 1 {
		t.Errorf("connections idle = %v, want 1", got)
	}
}

// TestSetRefusesBadInput: every invalid field is refused with an error that
// names it, before anything is opened.
func TestSetRefusesBadInput(t *testing.T) {
	c := newCA(t, "instance CA")
	cert := c.issue(t, leaf{instance: "inst-a"})
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mismatched := *cert
	mismatched.PrivateKey = otherKey
	noChain := *cert
	noChain.Certificate = nil
	clientOnly := c.issue(t, leaf{instance: "inst-a"})
	clientOnly.Leaf.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	good := proxy.Instance{ID: "inst-a", NetNS: "/run/netns/" + dataplanetest.Prefix + "missing", IP: netip.MustParseAddr("10.255.1.2")}
	s := proxy.New(proxy.Config{})
	defer s.Close()
	for _, tc := range []struct {
		name string
		mod  func(*proxy.Instance)
		cert *tls.Certificate
		want string
	}{
		{"no ID", func(i *proxy.Instance) { i.ID = "" }, cert, "ID is empty"},
		{"ID with a space", func(i *proxy.Instance) { i.ID = "a b" }, cert, "ID has a space"},
		{"no netns", func(i *proxy.Instance) { i.NetNS = "" }, cert, "NetNS is empty"},
		{"relative netns", func(i *proxy.Instance) { i.NetNS = "netns/x" }, cert, "not an absolute path"},
		{"missing netns", func(i *proxy.Instance) {}, cert, "no such file"},
		{"not a namespace", func(i *proxy.Instance) { i.NetNS = "/proc/self/status" }, cert, "not a namespace file"},
		{"not a network namespace", func(i *proxy.Instance) { i.NetNS = "/proc/self/ns/mnt" }, cert, "not a network namespace"},
		{"the agent's own namespace", func(i *proxy.Instance) { i.NetNS = "/proc/thread-self/ns/net" }, cert, "the agent's own namespace"},
		{"no IP", func(i *proxy.Instance) { i.IP = netip.Addr{} }, cert, "IP is missing"},
		{"IPv6", func(i *proxy.Instance) { i.IP = netip.MustParseAddr("fd00::1") }, cert, "not an IPv4"},
		{"unspecified IP", func(i *proxy.Instance) { i.IP = netip.IPv4Unspecified() }, cert, "not an IPv4"},
		{"port too big", func(i *proxy.Instance) { i.AppPort = 70000 }, cert, "AppPort 70000 is out of range"},
		{"port 61443", func(i *proxy.Instance) { i.AppPort = proxy.Port }, cert, "the TLS port itself"},
		{"mTLS without CAs", func(i *proxy.Instance) {
			i.RequireClientCert, i.Authorize = true, func(*x509.Certificate) error { return nil }
		}, cert, "without ClientCAs"},
		{"mTLS without Authorize", func(i *proxy.Instance) { i.RequireClientCert, i.ClientCAs = true, c.pool }, cert, "without Authorize"},
		{"key does not match", func(i *proxy.Instance) {}, &mismatched, "private key does not match"},
		{"no chain", func(i *proxy.Instance) {}, &noChain, "no certificate in the chain"},
		{"client-only certificate", func(i *proxy.Instance) {}, clientOnly, "not for server authentication"},
	} {
		inst := good
		tc.mod(&inst)
		err := s.Set(inst, tc.cert)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Set(%+v) = %v, want an error with %q", tc.name, inst, err, tc.want)
		}
		if s.Serving(inst.ID) {
			t.Errorf("%s: Serving(%q) = true after a failed Set", tc.name, inst.ID)
		}
	}
	s.Close()
	dataplanetest.RequireRoot(t)
	ns := dataplanetest.Namespace(t, "closed")
	if err := s.Set(proxy.Instance{ID: "inst-a", NetNS: ns, IP: good.IP}, cert); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Set after Close = %v, want net.ErrClosed", err)
	}
}
