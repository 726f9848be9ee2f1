package launcher

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/capture"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// tlsClient is an HTTPS client whose connections are opened inside the
// namespace ns to ip (the URL's host is what the certificate must name),
// trusting the bundle at bundlePath (read again for every connection when
// reload, else once: a client that never rereads its trust store),
// optionally presenting cert.
func tlsClient(t *testing.T, ns, ip, bundlePath string, reload bool, cert *tls.Certificate) *http.Client {
	t.Helper()
	load := func() *x509.CertPool {
		b, err := os.ReadFile(bundlePath)
		if err != nil {
			t.Errorf("read the CA bundle: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		return pool
	}
	fixed := load()
	cfg := func() *tls.Config {
		c := &tls.Config{RootCAs: fixed}
		if reload {
			c.RootCAs = load()
		}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c
	}
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, _ := net.SplitHostPort(addr)
			raw, err := dialErr(ns, network, net.JoinHostPort(ip, port))
			if err != nil {
				return nil, err
			}
			c := cfg()
			c.ServerName = host
			tc := tls.Client(raw, c)
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return tc, nil
		},
		DisableKeepAlives: true,
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: tr}
}

// fetch GETs url with c and returns the status and body, or the error.
func fetch(c *http.Client, u string) (int, string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// credentials reads an instance's certificate chain and key as its cell
// keeps them.
func (fd *foundation) credentials(in instance) (*tls.Certificate, []*x509.Certificate) {
	fd.t.Helper()
	ci := slices.IndexFunc(fd.f.Cells, func(c Cell) bool { return c.Name == in.CellName })
	dir := filepath.Join(fd.f.Cells[ci].StateDir, "credentials", in.GUID)
	var cert tls.Certificate
	waitFor(fd.t, "the certificate of instance "+in.GUID, func() bool {
		var err error
		cert, err = tls.LoadX509KeyPair(filepath.Join(dir, "instance.crt"), filepath.Join(dir, "instance.key"))
		return err == nil
	})
	var chain []*x509.Certificate
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			fd.t.Fatal(err)
		}
		chain = append(chain, c)
	}
	return &cert, chain
}

// bundle is the path of the CA bundle the instances of cell i trust.
func (fd *foundation) bundle(i int) string {
	return filepath.Join(fd.f.Cells[i].StateDir, "system-certs", "trusted-ca.crt")
}

// appGUID is app's GUID.
func (fd *foundation) appGUID(app string) string {
	fd.t.Helper()
	return strings.TrimSpace(fd.cli(0, "app", app, "--guid"))
}

// TestEncryptedC2C walks issue 6 end to end on a real two-cell foundation:
// 61443 is subject to policy, serves the instance certificate (checked
// field by field), verifies for curl and Go inside containers, carries no
// plaintext on the underlay, cannot be bound by an app, and with
// --require-client-cert admits only apps that a policy allows — checked in
// the certificate, even with enforcement off. The manual option (the app
// terminating mutual TLS itself) admits only the app it names.
func TestEncryptedC2C(t *testing.T) { encryptedC2C(t, api.EncryptionOff) }

// TestEncryptedC2CWireGuard is TestEncryptedC2C on a foundation that
// encrypts between cells: 61443 and mutual TLS work unchanged above
// WireGuard, and the underlay carries not even the marker sent to 8080.
func TestEncryptedC2CWireGuard(t *testing.T) { encryptedC2C(t, api.EncryptionWireGuard) }

func encryptedC2C(t *testing.T, encryption string) {
	fd := upFoundationWith(t, Options{Cells: 2, Encryption: encryption})
	fd.cli(0, "create-app", "frontend")
	feGUID := fd.appGUID("frontend")
	fd.cli(0, "push", "backend", "--cell", "cell2", "--", trellisBin, "sample-app", "--tls-port", "9443", "--require-app", feGUID)
	fd.cli(0, "push", "frontend", "--cell", "cell1")
	fd.cli(0, "push", "other", "--cell", "cell1")
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	be, fe, other := fd.instances("backend")[0], fd.instances("frontend")[0], fd.instances("other")[0]
	https := "https://backend.apps.internal:61443/"

	// The certificate, as the cell keeps it and as the app sees it.
	_, chain := fd.credentials(be)
	waitFor(t, "backend's certificate to name its route", func() bool {
		_, chain = fd.credentials(be)
		return slices.Contains(chain[0].DNSNames, "backend.apps.internal")
	})
	leaf := chain[0]
	beApp := fd.appGUID("backend")
	if leaf.Subject.CommonName != be.GUID {
		t.Errorf("certificate CN = %q, want the instance GUID %s", leaf.Subject.CommonName, be.GUID)
	}
	var ou []string
	for _, u := range leaf.Subject.OrganizationalUnit {
		k, _, _ := strings.Cut(u, ":")
		ou = append(ou, k)
	}
	slices.Sort(ou)
	if !slices.Equal(ou, []string{"app", "organization", "space"}) || !slices.Contains(leaf.Subject.OrganizationalUnit, "app:"+beApp) {
		t.Errorf("certificate OU = %v, want organization:, space: and app:%s", leaf.Subject.OrganizationalUnit, beApp)
	}
	if !slices.Contains(leaf.DNSNames, be.GUID) || !slices.Contains(leaf.DNSNames, "backend.apps.internal") {
		t.Errorf("certificate DNS SANs = %v, want the instance GUID and backend.apps.internal", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != be.IP {
		t.Errorf("certificate IP SANs = %v, want [%s]", leaf.IPAddresses, be.IP)
	}
	if len(leaf.URIs) != 1 || !strings.HasPrefix(leaf.URIs[0].String(), "spiffe://") || !strings.HasSuffix(leaf.URIs[0].String(), "/app/"+beApp+"/instance/"+be.GUID) {
		t.Errorf("certificate URI SANs = %v, want spiffe://…/app/%s/instance/%s", leaf.URIs, beApp, be.GUID)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("certificate EKU = %v, want server and client auth", leaf.ExtKeyUsage)
	}
	if len(chain) < 2 || chain[1].Subject.String() != leaf.Issuer.String() || !chain[1].IsCA {
		t.Errorf("certificate file holds %d certificates, want the leaf then its intermediate", len(chain))
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("certificate validity = %s, want 24h", d)
	}
	inside := fd.cli(0, "exec", "backend", "--", "sh", "-c", `cat "$CF_INSTANCE_CERT"; ls -l "$CF_INSTANCE_KEY"; echo "SSL_CERT_FILE=$SSL_CERT_FILE CF_SYSTEM_CERT_PATH=$CF_SYSTEM_CERT_PATH"; ls "$CF_SYSTEM_CERT_PATH"`)
	if !strings.Contains(inside, "BEGIN CERTIFICATE") || !strings.Contains(inside, "/etc/cf-instance-credentials/instance.key") ||
		!strings.Contains(inside, "SSL_CERT_FILE=/etc/cf-system-certificates/trusted-ca.crt") || !strings.Contains(inside, "trusted-ca.crt") {
		t.Errorf("inside the instance:\n%s\nwant the certificate at $CF_INSTANCE_CERT, the key, and the bundle", inside)
	}

	// An app may not bind 61443: the platform holds it in every instance.
	if out := fd.cli(1, "exec", "backend", "--", "busybox", "nc", "-l", "-p", "61443"); !strings.Contains(strings.ToLower(out), "address already in use") {
		t.Errorf("binding 61443 inside the instance: %s, want address already in use", out)
	}

	// Without a policy, 61443 is refused like any other port.
	if out := fd.cli(7, "exec", "frontend", "--", "curl", "-sS", "-m", "3", https); !strings.Contains(out, "Failed to connect") {
		t.Errorf("curl 61443 without a policy: %s", out)
	}
	fd.cli(0, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "61443")
	waitFor(t, "the 61443 policy", func() bool {
		c, err := dialErr(fe.netns, "tcp", be.IP+":61443")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	// curl verifies against the platform CA it finds through the
	// environment (no -k), and the sample app's Go client does too.
	if out := fd.cli(0, "exec", "frontend", "--", "curl", "-sS", "-m", "5", https); !strings.Contains(out, `"app":"backend"`) {
		t.Errorf("curl %s from frontend = %s, want backend's answer", https, out)
	}
	if code, body := get(t, fe.netns, fe.IP+":8080", "/proxytls/backend.apps.internal:61443/"); code != 200 || !strings.Contains(body, `"app":"backend"`) {
		t.Errorf("frontend /proxytls/ to 61443 = %d %s", code, body)
	}
	// openssl finds the bundle through SSL_CERT_FILE too.
	if out := fd.cli(0, "exec", "frontend", "--", "sh", "-c",
		"openssl s_client -connect backend.apps.internal:61443 -servername backend.apps.internal -verify_return_error -brief </dev/null 2>&1"); !strings.Contains(out, "Verification: OK") {
		t.Errorf("openssl s_client to 61443 from frontend:\n%s\nwant Verification: OK", out)
	}
	// A client speaking plaintext to 61443 gets a TLS alert, not a hang.
	c := dial(t, fe.netns, "tcp", be.IP+":61443")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
	b, _ := io.ReadAll(c)
	c.Close()
	if len(b) == 0 || b[0] != 0x15 {
		t.Errorf("plaintext to 61443 answered %x, want a TLS alert record", b)
	}

	// The encryption: a marker sent through 61443 never appears on the
	// underlay, while the same marker sent to 8080 does.
	fd.cli(0, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "8080")
	waitFor(t, "the 8080 policy", func() bool {
		c, err := dialErr(fe.netns, "tcp", be.IP+":8080")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	client := tlsClient(t, fe.netns, be.IP, fd.bundle(0), false, nil)
	for _, tc := range []struct {
		port  int
		plain bool
	}{{61443, false}, {8080, true}} {
		marker := fmt.Sprintf("marker-%d-%d", tc.port, time.Now().UnixNano())
		cp, err := capture.Start(netns.Path(fd.f.Cells[0].NetNS), "eth0")
		if err != nil {
			t.Fatal(err)
		}
		var code int
		if tc.plain {
			code, _ = get(t, fe.netns, be.IP+":8080", "/?q="+marker)
		} else {
			code, _, err = fetch(client, https+"?q="+url.QueryEscape(marker))
		}
		frames, cerr := cp.Stop()
		if err != nil || cerr != nil || code != 200 {
			t.Fatalf("request to %d: %d, %v, capture %v", tc.port, code, err, cerr)
		}
		_, at := capture.Find(frames, []byte(marker))
		want := tc.plain && encryption != api.EncryptionWireGuard
		if seen := at >= 0; seen != want {
			t.Errorf("marker sent to port %d seen on the underlay (encryption %s): %v, want %v (%d frames)", tc.port, encryption, seen, want, len(frames))
		}
	}

	// --require-client-cert: with enforcement off (every address can reach
	// every other), only apps a policy allows to reach backend on 61443
	// get through — identity checked in the certificate.
	fd.cli(0, "set-tls", "backend", "--require-client-cert")
	fd.cli(0, "enforcement", "off")
	feCert, _ := fd.credentials(fe)
	otherCert, _ := fd.credentials(other)
	cases := []struct {
		name string
		ns   string
		cert *tls.Certificate
		ok   bool
	}{
		{"frontend (allowed by a policy)", fe.netns, feCert, true},
		{"other (no policy)", other.netns, otherCert, false},
		{"no client certificate", fe.netns, nil, false},
	}
	// Enforcement off reaches the cells through their watch, like any
	// change: until cell2 has it, other's connection is refused by the
	// network, not by the certificate check this part is about.
	waitFor(t, "enforcement off on backend's cell (other reaches 8080 with no policy)", func() bool {
		c, err := dialErr(other.netns, "tcp", be.IP+":8080")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	waitFor(t, "61443 to require client certificates", func() bool {
		_, _, err := fetch(tlsClient(t, fe.netns, be.IP, fd.bundle(0), true, nil), https)
		return err != nil
	})
	for _, tc := range cases {
		cl := tlsClient(t, tc.ns, be.IP, fd.bundle(0), true, tc.cert)
		code, body, err := fetch(cl, https)
		if ok := err == nil && code == 200; ok != tc.ok {
			t.Errorf("%s → 61443 with --require-client-cert: %d %q %v, want allowed=%v", tc.name, code, body, err, tc.ok)
		}
	}
	var flows string
	waitFor(t, "the refused handshake in the flow log", func() bool {
		flows = fd.cli(0, "flows", "--denied", "--app", "backend")
		if !strings.Contains(flows, "tls: client certificate of app other is not allowed by a policy to reach backend on tcp/61443") {
			t.Logf("flows --denied --app backend:\n%s", flows)
			return false
		}
		return true
	})
	fd.cli(0, "set-tls", "backend", "--no-require-client-cert")

	// The manual option: backend terminates mutual TLS itself on 9443 and
	// admits only frontend.
	for _, tc := range []struct {
		ns, ip, app string
		ok          bool
	}{{fe.netns, fe.IP, "frontend", true}, {other.netns, other.IP, "other", false}} {
		code, body := get(t, tc.ns, tc.ip+":8080", "/proxytls/backend.apps.internal:9443/")
		if ok := code == 200 && strings.Contains(body, `"app":"backend"`); ok != tc.ok {
			t.Errorf("%s /proxytls/ to backend's own mTLS port 9443 = %d %s, want allowed=%v", tc.app, code, body, tc.ok)
		}
	}
	fd.cli(0, "enforcement", "on")
}

// TestCertificateRotationUnderLoad loops HTTPS requests through 61443
// while backend's certificate is renewed for a route change, the instance
// CA rotates (cross-signed), and the certificate (valid one minute) is
// renewed on schedule: not one request fails — neither for a client that
// rereads the bundle nor for one that loaded it once before the rotation,
// nor on a connection kept open across all of it.
func TestCertificateRotationUnderLoad(t *testing.T) {
	requireRoot(t)
	fd := upFoundationWith(t, Options{Cells: 2, InstanceCertValidity: time.Minute})
	fd.cli(0, "push", "backend", "--cell", "cell2")
	fd.cli(0, "push", "frontend", "--cell", "cell1")
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	fd.cli(0, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "61443")
	be, fe := fd.instances("backend")[0], fd.instances("frontend")[0]
	https := "https://backend.apps.internal:61443/"

	fresh := tlsClient(t, fe.netns, be.IP, fd.bundle(0), true, nil)
	stale := tlsClient(t, fe.netns, be.IP, fd.bundle(0), false, nil)
	waitFor(t, "61443 to serve backend", func() bool {
		_, _, err := fetch(fresh, https)
		return err == nil
	})
	// One connection kept open across every rotation.
	keep := tlsClient(t, fe.netns, be.IP, fd.bundle(0), false, nil)
	keep.Transport.(*http.Transport).DisableKeepAlives = false

	var requests, failures atomic.Int64
	var mu sync.Mutex
	serials := map[string]bool{}
	issuers := map[string]bool{}
	var firstErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range []*http.Client{fresh, stale, keep} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(https)
				requests.Add(1)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					} else if resp.TLS != nil {
						leaf := resp.TLS.PeerCertificates[0]
						mu.Lock()
						serials[leaf.SerialNumber.String()] = true
						issuers[leaf.Issuer.String()] = true
						mu.Unlock()
					}
				}
				if err != nil {
					failures.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("at %s: %w", time.Now().UTC().Format("15:04:05.000"), err)
					}
					mu.Unlock()
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(serials)
	}
	waitFor(t, "the first certificate to be seen", func() bool { return count() >= 1 })
	// Rotation 1: a route change renews the certificate at once.
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "api")
	waitFor(t, "a certificate renewed for the new route", func() bool { return count() >= 2 })
	// The CA rotates: a new root and intermediate, cross-signed by the old.
	fd.cli(0, "rotate-instance-ca")
	waitFor(t, "a certificate from the new intermediate", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(issuers) >= 2
	})
	// Rotation 2: on schedule, at 7/8 of the one-minute validity.
	n := count()
	deadline := time.Now().Add(90 * time.Second)
	for count() <= n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if count() <= n {
		t.Errorf("no scheduled renewal within 90 s of a one-minute certificate")
	}
	if f := failures.Load(); f != 0 {
		t.Errorf("%d of %d requests failed across the rotations; first: %v", f, requests.Load(), firstErr)
		t.Logf("denied flows:\n%s", fd.cli(0, "flows", "--denied"))
		for _, c := range fd.f.Cells {
			b, _ := os.ReadFile(c.Agent.Log)
			t.Logf("log of the agent of %s:\n%s", c.Name, b)
		}
	}
	t.Logf("%d requests, %d certificates, %d issuers, 0 failures", requests.Load(), count(), len(issuers))
}
