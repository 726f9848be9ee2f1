package sampleapp_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/trellis-c2c/trellis/internal/sampleapp"
)

// GUIDs of the apps in these tests.
const (
	frontendGUID = "0f7a3c52-1d2e-4b6a-9c1e-00000000f0f0"
	backendGUID  = "0f7a3c52-1d2e-4b6a-9c1e-00000000baba"
	otherGUID    = "0f7a3c52-1d2e-4b6a-9c1e-00000000dead"
	spaceGUID    = "5aace000-0000-4000-8000-000000000001"
	orgGUID      = "0c6000a0-0000-4000-8000-000000000001"
)

// testCA is a throwaway instance CA: a root, and an intermediate that
// signs instance certificates, as the controller runs it.
type testCA struct {
	rootPEM  []byte
	inter    *x509.Certificate
	interPEM []byte
	interKey crypto.Signer
	pool     *x509.CertPool // the root
}

func randomSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	now := time.Now()
	rootKey := ecKey(t)
	rootTmpl := &x509.Certificate{
		SerialNumber: randomSerial(t), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	interKey := ecKey(t)
	interTmpl := &x509.Certificate{
		SerialNumber: randomSerial(t), Subject: pkix.Name{CommonName: name + " intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := x509.ParseCertificate(interDER)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &testCA{
		rootPEM: pemBlock("CERTIFICATE", rootDER), inter: inter, interPEM: pemBlock("CERTIFICATE", interDER),
		interKey: interKey, pool: pool,
	}
}

// leaf describes an instance certificate to issue.
type leaf struct {
	app      string
	instance string // default: "instance-of-" + app
	key      string // "ec" (default: EC PRIVATE KEY), "pkcs8" or "rsa" (RSA PRIVATE KEY)
	noIP     bool   // no IP SAN 127.0.0.1 and no DNS SAN localhost
}

// issue signs an instance certificate like the platform's and returns the
// chain (leaf, then intermediate), the key, PEM, and the serial.
func (ca *testCA) issue(t *testing.T, l leaf) (certPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	if l.instance == "" {
		l.instance = "instance-of-" + l.app
	}
	var key crypto.Signer
	switch l.key {
	case "", "ec":
		k := ecKey(t)
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		key, keyPEM = k, pemBlock("EC PRIVATE KEY", der)
	case "pkcs8":
		k := ecKey(t)
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		key, keyPEM = k, pemBlock("PRIVATE KEY", der)
	case "rsa":
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key, keyPEM = k, pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
	default:
		t.Fatalf("unknown key type %q", l.key)
	}
	now := time.Now()
	spiffe, err := url.Parse(fmt.Sprintf("spiffe://trellis.test/org/%s/space/%s/app/%s/instance/%s", orgGUID, spaceGUID, l.app, l.instance))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject: pkix.Name{CommonName: l.instance,
			OrganizationalUnit: []string{"organization:" + orgGUID, "space:" + spaceGUID, "app:" + l.app}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		DNSNames:    []string{l.instance},
		URIs:        []*url.URL{spiffe},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if !l.noIP {
		tmpl.DNSNames = append(tmpl.DNSNames, "localhost")
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, key.Public(), ca.interKey)
	if err != nil {
		t.Fatal(err)
	}
	return append(pemBlock("CERTIFICATE", der), ca.interPEM...), keyPEM, tmpl.SerialNumber
}

// keyPair issues a certificate for l, for a test's own client or server.
func (ca *testCA) keyPair(t *testing.T, l leaf) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, _ := ca.issue(t, l)
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeAtomic replaces path with data as the platform does: a new file,
// renamed over the old.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// rotate issues a new certificate for l and replaces the instance's files
// with it, the key first; it returns the new serial.
func rotate(t *testing.T, id sampleapp.Identity, ca *testCA, l leaf) *big.Int {
	t.Helper()
	certPEM, keyPEM, serial := ca.issue(t, l)
	writeAtomic(t, id.KeyFile, keyPEM)
	writeAtomic(t, id.CertFile, certPEM)
	return serial
}

// credentials lays out an instance's identity files as the platform does,
// the CA bundle holding ca's root, and returns where they are.
func credentials(t *testing.T, ca *testCA, l leaf) (sampleapp.Identity, *big.Int) {
	t.Helper()
	dir := t.TempDir()
	id := sampleapp.Identity{
		CertFile: filepath.Join(dir, "instance.crt"),
		KeyFile:  filepath.Join(dir, "instance.key"),
		CAFile:   filepath.Join(dir, "trusted-ca.crt"),
	}
	writeAtomic(t, id.CAFile, ca.rootPEM)
	return id, rotate(t, id, ca, l)
}

// client returns an HTTPS client that trusts roots, presents cert (none
// when nil) and opens a new connection for every request.
func client(roots *x509.CertPool, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Presented whatever CAs the server asks for, as a misconfigured
		// or hostile client would.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
}

// fetch GETs url with c and returns the status, the body and the serial of
// the server's certificate.
func fetch(c *http.Client, url string) (code int, body string, serial *big.Int, err error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		serial = resp.TLS.PeerCertificates[0].SerialNumber
	}
	return resp.StatusCode, string(b), serial, err
}

// eventually polls cond until it holds, failing the test after a long
// while (a hang guard, not a timing assertion).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: never happened", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestParseAppGUIDs(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: frontendGUID, want: []string{frontendGUID}},
		{in: frontendGUID + ", " + strings.ToUpper(otherGUID), want: []string{frontendGUID, otherGUID}},
		{in: "frontend", wantErr: `"frontend" is not an app GUID`},
		{in: frontendGUID + ",", wantErr: "empty app GUID"},
		{in: "", wantErr: "empty app GUID"},
	}
	for _, tt := range tests {
		got, err := sampleapp.ParseAppGUIDs(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseAppGUIDs(%q) = %v, %v, want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !cmp.Equal(got, tt.want) {
			t.Errorf("ParseAppGUIDs(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestListenTLSErrors(t *testing.T) {
	ca := newCA(t, "platform")
	good, _ := credentials(t, ca, leaf{app: backendGUID})
	otherKey, _ := credentials(t, ca, leaf{app: backendGUID})
	emptyDir, notPEM := t.TempDir(), filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	with := func(f func(*sampleapp.Identity)) sampleapp.Identity {
		id := good
		f(&id)
		return id
	}
	tests := []struct {
		name    string
		id      sampleapp.Identity
		tls     sampleapp.TLSOptions
		port    int
		wantErr string
	}{
		{"no cert and key", with(func(id *sampleapp.Identity) { id.CertFile, id.KeyFile = "", "" }), sampleapp.TLSOptions{},
			0, "CF_INSTANCE_CERT and CF_INSTANCE_KEY are not set"},
		{"no cert", with(func(id *sampleapp.Identity) { id.CertFile = "" }), sampleapp.TLSOptions{},
			0, "serve tls: CF_INSTANCE_CERT is not set"},
		{"no key", with(func(id *sampleapp.Identity) { id.KeyFile = "" }), sampleapp.TLSOptions{},
			0, "serve tls: CF_INSTANCE_KEY is not set"},
		{"no CA", with(func(id *sampleapp.Identity) { id.CAFile = "" }), sampleapp.TLSOptions{},
			0, "neither SSL_CERT_FILE nor CF_SYSTEM_CERT_PATH is set"},
		{"cert file missing", with(func(id *sampleapp.Identity) { id.CertFile = "/nonexistent/instance.crt" }), sampleapp.TLSOptions{},
			0, "serve tls: CF_INSTANCE_CERT: stat /nonexistent/instance.crt: no such file or directory"},
		{"key of another cert", with(func(id *sampleapp.Identity) { id.KeyFile = otherKey.KeyFile }), sampleapp.TLSOptions{},
			0, "private key does not match public key"},
		{"empty CA dir", with(func(id *sampleapp.Identity) { id.CAFile, id.CADir = "", emptyDir }), sampleapp.TLSOptions{},
			0, "has no *.crt or *.pem file"},
		{"CA not PEM", with(func(id *sampleapp.Identity) { id.CAFile = notPEM }), sampleapp.TLSOptions{},
			0, "holds no certificate"},
		{"reserved port", good, sampleapp.TLSOptions{Port: 61443}, 0, "tls port 61443 is reserved"},
		{"plaintext port", good, sampleapp.TLSOptions{Port: 18080}, 18080, "tls port 18080 is the plaintext port too"},
		{"app name for a GUID", good, sampleapp.TLSOptions{RequireApps: []string{"frontend"}}, 0, `"frontend" is not an app GUID`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sampleapp.Listen(sampleapp.Config{Host: "127.0.0.1", Port: tt.port, Identity: tt.id, TLS: &tt.tls,
				Logger: slog.New(slog.DiscardHandler)})
			if err == nil {
				t.Fatalf("Listen(%+v, %+v) = %v, want error %q", tt.id, tt.tls, s, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Listen(%+v, %+v) = %v, want error %q", tt.id, tt.tls, err, tt.wantErr)
			}
		})
	}
}

// identityBody decodes a GET / answer.
type identityBody struct {
	App  string          `json:"app"`
	Peer *sampleapp.Peer `json:"peer"`
}

func decodeIdentity(t *testing.T, body string) identityBody {
	t.Helper()
	var got identityBody
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET / body %q: %v", body, err)
	}
	return got
}

func TestMutualTLS(t *testing.T) {
	platform, foreign := newCA(t, "platform"), newCA(t, "foreign")
	id, serverSerial := credentials(t, platform, leaf{app: backendGUID})
	frontend := platform.keyPair(t, leaf{app: frontendGUID, instance: "frontend-0"})
	other := platform.keyPair(t, leaf{app: otherGUID})
	impostor := foreign.keyPair(t, leaf{app: frontendGUID})

	tests := []struct {
		name        string
		require     []string
		cert        *tls.Certificate
		wantCode    int
		wantPeerApp string
		wantBody    string // a substring
		wantErr     string // a substring of the client's error
	}{
		{name: "required app", require: []string{frontendGUID}, cert: &frontend, wantCode: 200, wantPeerApp: frontendGUID},
		{name: "one of the required apps", require: []string{otherGUID, frontendGUID}, cert: &frontend, wantCode: 200, wantPeerApp: frontendGUID},
		{name: "another app", require: []string{frontendGUID}, cert: &other, wantCode: 403,
			wantBody: "forbidden: app " + otherGUID + " (instance instance-of-" + otherGUID + ") is not allowed here; this instance accepts only app " + frontendGUID},
		{name: "no certificate", require: []string{frontendGUID}, wantErr: "remote error: tls: certificate required"},
		{name: "certificate of another CA", require: []string{frontendGUID}, cert: &impostor, wantErr: "remote error: tls: unknown certificate authority"},
		{name: "any app", cert: &other, wantCode: 200, wantPeerApp: otherGUID},
		{name: "any app but no certificate", wantErr: "remote error: tls: certificate required"},
		{name: "any app but another CA", cert: &impostor, wantErr: "remote error: tls: unknown certificate authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := startApp(t, sampleapp.Config{AppName: "backend", Identity: id, TLS: &sampleapp.TLSOptions{RequireApps: tt.require}})
			code, body, serial, err := fetch(client(platform.pool, tt.cert), "https://"+app.tlsAddr+"/")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("GET / over TLS = %d %q, %v, want error %q", code, body, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("GET / over TLS: %v", err)
			}
			if serial.Cmp(serverSerial) != 0 {
				t.Errorf("server certificate serial = %x, want %x (the instance certificate)", serial, serverSerial)
			}
			if code != tt.wantCode {
				t.Fatalf("GET / over TLS = %d %q, want %d", code, body, tt.wantCode)
			}
			if tt.wantBody != "" && !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET / over TLS = %d %q, want %q", code, body, tt.wantBody)
			}
			if tt.wantPeerApp != "" {
				got := decodeIdentity(t, body)
				if got.Peer == nil || got.Peer.AppGUID != tt.wantPeerApp {
					t.Errorf("GET / over TLS peer = %+v, want app %s", got.Peer, tt.wantPeerApp)
				}
			}
			if code == 403 {
				eventually(t, "a log line for the refused app", func() bool {
					return strings.Contains(app.log.String(), "status=403") && strings.Contains(app.log.String(), "peer_app="+otherGUID)
				})
			}
		})
	}
}

func TestPeerOf(t *testing.T) {
	ca := newCA(t, "platform")
	pair := ca.keyPair(t, leaf{app: frontendGUID, instance: "frontend-0"})
	got := sampleapp.PeerOf(pair.Leaf)
	want := sampleapp.Peer{
		AppGUID: frontendGUID, SpaceGUID: spaceGUID, OrgGUID: orgGUID, InstanceGUID: "frontend-0",
		SPIFFEID: "spiffe://trellis.test/org/" + orgGUID + "/space/" + spaceGUID + "/app/" + frontendGUID + "/instance/frontend-0",
		Serial:   pair.Leaf.SerialNumber.Text(16),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PeerOf(%v) mismatch (-want +got):\n%s", pair.Leaf.Subject, diff)
	}
}

func TestInstanceKeyFormats(t *testing.T) {
	ca := newCA(t, "platform")
	frontend := ca.keyPair(t, leaf{app: frontendGUID})
	for _, key := range []string{"ec", "pkcs8", "rsa"} {
		t.Run(key, func(t *testing.T) {
			id, want := credentials(t, ca, leaf{app: backendGUID, key: key})
			app := startApp(t, sampleapp.Config{Identity: id, TLS: &sampleapp.TLSOptions{}})
			code, body, serial, err := fetch(client(ca.pool, &frontend), "https://"+app.tlsAddr+"/")
			if err != nil || code != 200 || serial.Cmp(want) != 0 {
				t.Errorf("GET / over TLS with a %s key = %d %q serial %x, %v, want 200 serial %x", key, code, body, serial, err, want)
			}
		})
	}
}

// upstream serves HTTPS on loopback with cert and, when clientCAs is set,
// demands a client certificate it verifies; it answers with what it saw.
func upstream(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool) string {
	t.Helper()
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprintf(w, "upstream saw %s", r.URL.RequestURI())
		if len(r.TLS.PeerCertificates) > 0 {
			p := sampleapp.PeerOf(r.TLS.PeerCertificates[0])
			fmt.Fprintf(w, " from app %s serial %s", p.AppGUID, p.Serial)
		}
	}))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		s.TLS.ClientAuth, s.TLS.ClientCAs = tls.RequireAndVerifyClientCert, clientCAs
	}
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "https://")
}

func TestProxyTLS(t *testing.T) {
	platform, foreign := newCA(t, "platform"), newCA(t, "foreign")
	id, frontendSerial := credentials(t, platform, leaf{app: frontendGUID})
	frontend := startApp(t, sampleapp.Config{AppName: "frontend", Identity: id, ProxyTimeout: 10 * time.Second})

	backend := platform.keyPair(t, leaf{app: backendGUID})
	backendID, _ := credentials(t, platform, leaf{app: backendGUID})
	allowsFrontend := startApp(t, sampleapp.Config{AppName: "backend", Identity: backendID,
		TLS: &sampleapp.TLSOptions{RequireApps: []string{frontendGUID}}})
	allowsOther := startApp(t, sampleapp.Config{AppName: "backend", Identity: backendID,
		TLS: &sampleapp.TLSOptions{RequireApps: []string{otherGUID}}})
	plain := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plain.Close)

	tests := []struct {
		name     string
		path     string
		wantCode int
		wantBody string // a substring
	}{
		{"verified, certificate presented", "/proxytls/" + upstream(t, backend, platform.pool) + "/some/path?q=1",
			http.StatusTeapot, fmt.Sprintf("upstream saw /some/path?q=1 from app %s serial %x", frontendGUID, frontendSerial)},
		{"sample app that requires this app", "/proxytls/" + allowsFrontend.tlsAddr + "/",
			http.StatusOK, `"peer":{"app_guid":"` + frontendGUID + `"`},
		{"sample app that requires another app", "/proxytls/" + allowsOther.tlsAddr + "/",
			http.StatusForbidden, "forbidden: app " + frontendGUID},
		{"server of another CA", "/proxytls/" + upstream(t, foreign.keyPair(t, leaf{app: backendGUID}), nil) + "/",
			http.StatusBadGateway, "tls: certificate signed by unknown authority: "},
		{"server refuses the certificate", "/proxytls/" + upstream(t, backend, foreign.pool) + "/",
			http.StatusBadGateway, "remote error: tls: unknown certificate authority"},
		{"server name mismatch", "/proxytls/" + upstream(t, platform.keyPair(t, leaf{app: backendGUID, noIP: true}), nil) + "/",
			http.StatusBadGateway, "tls: certificate name mismatch: "},
		{"plaintext server", "/proxytls/" + strings.TrimPrefix(plain.URL, "http://") + "/",
			http.StatusBadGateway, "tls: server does not speak TLS"},
		{"refused", "/proxytls/" + closedPort(t, "tcp") + "/", http.StatusBadGateway, "connection refused"},
		{"no port", "/proxytls/localhost/", http.StatusBadRequest, "HOST:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(t, frontend.base+tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s = %d %q, want %d with %q", tt.path, code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestProxyTLSWithoutIdentity(t *testing.T) {
	ca := newCA(t, "platform")
	server := upstream(t, ca.keyPair(t, leaf{app: backendGUID}), ca.pool)
	id, _ := credentials(t, ca, leaf{app: frontendGUID})

	tests := []struct {
		name     string
		id       sampleapp.Identity
		wantCode int
		wantBody string
	}{
		{"no CA bundle", sampleapp.Identity{CertFile: id.CertFile, KeyFile: id.KeyFile},
			http.StatusInternalServerError, "cannot verify the server: no CA bundle to verify peers: neither SSL_CERT_FILE nor CF_SYSTEM_CERT_PATH is set"},
		{"no instance certificate", sampleapp.Identity{CAFile: id.CAFile},
			http.StatusBadGateway, "remote error: tls: certificate required"},
		{"no instance certificate, said why", sampleapp.Identity{CAFile: id.CAFile},
			http.StatusBadGateway, "(no client certificate presented: CF_INSTANCE_CERT and CF_INSTANCE_KEY are not both set)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app := startApp(t, sampleapp.Config{Identity: tt.id, ProxyTimeout: 10 * time.Second})
			code, body := get(t, app.base+"/proxytls/"+server+"/")
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET /proxytls/ = %d %q, want %d with %q", code, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

// TestRotation replaces the credential files, as the platform does when it
// renews them, and checks that the next handshake uses the new ones, with
// no restart.
func TestRotation(t *testing.T) {
	ca := newCA(t, "platform")
	frontend := ca.keyPair(t, leaf{app: frontendGUID})
	backend := leaf{app: backendGUID}
	id, serial := credentials(t, ca, backend)
	app := startApp(t, sampleapp.Config{Identity: id, TLS: &sampleapp.TLSOptions{}, ProxyTimeout: 10 * time.Second})
	c := client(ca.pool, &frontend)

	served := func() *big.Int {
		t.Helper()
		code, body, got, err := fetch(c, "https://"+app.tlsAddr+"/")
		if err != nil || code != 200 {
			t.Fatalf("GET / over TLS = %d %q, %v, want 200", code, body, err)
		}
		return got
	}
	if got := served(); got.Cmp(serial) != 0 {
		t.Fatalf("served serial = %x, want %x", got, serial)
	}
	for i := range 2 {
		serial = rotate(t, id, ca, backend)
		if got := served(); got.Cmp(serial) != 0 {
			t.Errorf("after rotation %d: served serial = %x, want the new %x", i+1, got, serial)
		}
	}

	// Caught between a new key and its certificate: the valid pair loaded
	// before is served, and the new one as soon as it is whole.
	certPEM, keyPEM, next := ca.issue(t, backend)
	writeAtomic(t, id.KeyFile, keyPEM)
	if got := served(); got.Cmp(serial) != 0 {
		t.Errorf("with a new key and the old certificate: served serial = %x, want the old %x", got, serial)
	}
	writeAtomic(t, id.CertFile, certPEM)
	if got := served(); got.Cmp(next) != 0 {
		t.Errorf("after the certificate followed: served serial = %x, want the new %x", got, next)
	}

	// The client side: /proxytls/ presents the new certificate.
	server := upstream(t, ca.keyPair(t, leaf{app: otherGUID}), ca.pool)
	presented := func() string {
		t.Helper()
		code, body := get(t, app.base+"/proxytls/"+server+"/")
		if code != http.StatusTeapot {
			t.Fatalf("GET /proxytls/ = %d %q, want 418", code, body)
		}
		return body
	}
	serial = rotate(t, id, ca, backend)
	if got, want := presented(), fmt.Sprintf("serial %x", serial); !strings.Contains(got, want) {
		t.Errorf("after rotation: /proxytls/ = %q, want the upstream to see %q", got, want)
	}
}

// TestCARotation adds a root to the CA directory and checks that the next
// handshake trusts it.
func TestCARotation(t *testing.T) {
	old, next := newCA(t, "old"), newCA(t, "new")
	id, _ := credentials(t, old, leaf{app: backendGUID})
	dir := t.TempDir()
	writeAtomic(t, filepath.Join(dir, "trusted-ca.crt"), old.rootPEM)
	id.CAFile, id.CADir = "", dir
	app := startApp(t, sampleapp.Config{Identity: id, TLS: &sampleapp.TLSOptions{}})

	frontend := next.keyPair(t, leaf{app: frontendGUID})
	c := client(old.pool, &frontend)
	if code, body, _, err := fetch(c, "https://"+app.tlsAddr+"/"); err == nil || !strings.Contains(err.Error(), "unknown certificate authority") {
		t.Fatalf("GET / with a certificate of a CA not yet trusted = %d %q, %v, want unknown certificate authority", code, body, err)
	}
	writeAtomic(t, filepath.Join(dir, "new-ca.pem"), next.rootPEM)
	if code, body, _, err := fetch(c, "https://"+app.tlsAddr+"/"); err != nil || code != 200 {
		t.Errorf("GET / with a certificate of the added CA = %d %q, %v, want 200", code, body, err)
	}
}
