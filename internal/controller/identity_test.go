package controller

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
)

// cellCall sends a request as a cell and returns the status and body.
func (e *env) cellCall(c *http.Client, method, path, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// register attaches an instance of app on the cell of c.
func (e *env) register(c *http.Client, guid, app string, index int, ip string) {
	e.t.Helper()
	if code, got := e.cellCall(c, "PUT", "/trellis/v1/cell/instances/"+guid, fmt.Sprintf(`{"app_guid":%q,"index":%d,"ip":%q}`, app, index, ip)); code != 204 {
		e.t.Fatalf("register %s = %d %s", guid, code, got)
	}
}

// mapRoute maps host.domain to app, creating the route in the app's space.
func (e *env) mapRoute(app, host, domain string) {
	e.t.Helper()
	var a api.App
	e.must(e.admin, "GET", "/v3/apps/"+app, "", 200, &a)
	rt := e.createRoute(e.admin, a.Relationships.Space.Data.GUID, host, domain)
	e.must(e.admin, "POST", "/v3/routes/"+rt.GUID+"/destinations", fmt.Sprintf(`{"destinations":[{"app":{"guid":%q}}]}`, app), 200, nil)
}

func certRequest(csr []byte) string {
	b, _ := json.Marshal(api.InstanceCertificateRequest{CSR: string(csr)})
	return string(b)
}

func newCSR(t *testing.T, alg, guid string) []byte {
	t.Helper()
	_, csr, err := identity.NewInstanceKeyAndCSR(alg, guid)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func parsePEMChain(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := []byte(s); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// verifyChain verifies a chain (leaf first) against PEM roots.
func verifyChain(chain []*x509.Certificate, rootsPEM ...string) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range rootsPEM {
		roots.AppendCertsFromPEM([]byte(r))
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func TestSignInstanceCertificate(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		space := e.defaultSpace()
		var orgs api.List[api.Organization]
		e.must(e.admin, "GET", "/v3/organizations?names=default", "", 200, &orgs)
		org := orgs.Resources[0].GUID
		be := e.createApp(space, "backend")
		e.mapRoute(be, "backend", "apps.internal")
		e.must(e.admin, "POST", "/v3/domains", `{"name":"svc.internal","internal":true}`, 201, nil)
		e.mapRoute(be, "api", "svc.internal")
		e.register(c1, "be000000-0000-4000-8000-000000000000", be, 0, "10.255.1.5")

		path := "/trellis/v1/cell/instances/be000000-0000-4000-8000-000000000000/certificate"
		start := time.Now()
		code, body := e.cellCall(c1, "POST", path, certRequest(newCSR(t, identity.KeyECDSAP256, "be000000-0000-4000-8000-000000000000")))
		if code != 201 {
			t.Fatalf("POST %s = %d %s, want 201", path, code, body)
		}
		var ic api.InstanceCertificate
		if err := json.Unmarshal([]byte(body), &ic); err != nil {
			t.Fatal(err)
		}
		chain := parsePEMChain(t, ic.Certificate)
		if len(chain) != 2 {
			t.Fatalf("certificate holds %d certificates, want the leaf and the intermediate", len(chain))
		}
		leaf := chain[0]
		if leaf.Subject.CommonName != "be000000-0000-4000-8000-000000000000" {
			t.Errorf("CN = %q, want be000000-0000-4000-8000-000000000000", leaf.Subject.CommonName)
		}
		wantOU := []string{"organization:" + org, "space:" + space, "app:" + be}
		if got := slices.Sorted(slices.Values(leaf.Subject.OrganizationalUnit)); !slices.Equal(got, slices.Sorted(slices.Values(wantOU))) {
			t.Errorf("OU = %v, want %v", leaf.Subject.OrganizationalUnit, wantOU)
		}
		if diff := cmp.Diff([]string{"be000000-0000-4000-8000-000000000000", "api.svc.internal", "backend.apps.internal"}, leaf.DNSNames); diff != "" {
			t.Errorf("DNS SANs (-want +got):\n%s", diff)
		}
		if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.255.1.5")) {
			t.Errorf("IP SANs = %v, want 10.255.1.5", leaf.IPAddresses)
		}
		wantURI := fmt.Sprintf("spiffe://trellis.internal/org/%s/space/%s/app/%s/instance/be000000-0000-4000-8000-000000000000", org, space, be)
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantURI {
			t.Errorf("URIs = %v, want %s", leaf.URIs, wantURI)
		}
		if leaf.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
			t.Errorf("KeyUsage %b, ExtKeyUsage %v", leaf.KeyUsage, leaf.ExtKeyUsage)
		}
		if !ic.NotBefore.Equal(leaf.NotBefore) || !ic.NotAfter.Equal(leaf.NotAfter) {
			t.Errorf("not_before/not_after %v/%v, certificate says %v/%v", ic.NotBefore, ic.NotAfter, leaf.NotBefore, leaf.NotAfter)
		}
		if d := leaf.NotAfter.Sub(start); d < DefaultInstanceCertValidity-time.Minute || d > DefaultInstanceCertValidity+time.Minute {
			t.Errorf("valid for %v from now, want %v", d, DefaultInstanceCertValidity)
		}
		if ic.CA.Generation < 1 || ic.CA.TrustDomain != "trellis.internal" || ic.CA.ValiditySeconds != 86400 || ic.CA.Rotating || ic.CA.IntermediateName != chain[1].Subject.CommonName {
			t.Errorf("ca = %+v", ic.CA)
		}
		if err := verifyChain(chain, ic.CA.Bundle); err != nil {
			t.Errorf("the certificate does not verify with the CA's bundle: %v", err)
		}
		id, err := identity.ParsePeer(leaf)
		if err != nil || id.App != be || id.Instance != "be000000-0000-4000-8000-000000000000" || id.Space != space || id.Org != org {
			t.Errorf("ParsePeer = %+v, %v", id, err)
		}
		// RSA 3072 keys are signed too, with key encipherment.
		code, body = e.cellCall(c1, "POST", path, certRequest(newCSR(t, identity.KeyRSA3072, "be000000-0000-4000-8000-000000000000")))
		if code != 201 {
			t.Fatalf("POST %s (RSA 3072) = %d %s", path, code, body)
		}
		json.Unmarshal([]byte(body), &ic)
		if leaf := parsePEMChain(t, ic.Certificate)[0]; leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
			t.Errorf("RSA leaf KeyUsage = %b", leaf.KeyUsage)
		}

		// Refused, with the reason.
		weak, _ := rsa.GenerateKey(rand.Reader, 1024)
		weakDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
		weakCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: weakDER})
		e.must(e.admin, "POST", "/v3/apps/"+be+"/processes/web/actions/scale", `{"instances":1}`, 200, nil)
		e.must(e.admin, "POST", "/v3/apps/"+be+"/actions/start", "", 200, nil)
		var ins api.List[api.Instance]
		e.must(e.admin, "GET", "/trellis/v1/instances?app_guids="+be, "", 200, &ins)
		var scheduled api.Instance // managed, placed on a cell, not attached yet
		var scheduledClient *http.Client
		for _, in := range ins.Resources {
			if in.Managed {
				scheduled, scheduledClient = in, map[string]*http.Client{"cell1": c1, "cell2": c2}[in.CellName]
			}
		}
		good := certRequest(newCSR(t, "", "x"))
		for _, tt := range []struct {
			name     string
			client   *http.Client
			instance string
			body     string
			code     int
			want     string
		}{
			{"another cell's instance", c2, "be000000-0000-4000-8000-000000000000", good, 403, "instance be000000-0000-4000-8000-000000000000 is not on cell cell2"},
			{"unregistered instance", c1, "nope", good, 404, "instance nope is not registered"},
			{"scheduled, not attached", scheduledClient, scheduled.GUID, good, 409, "has no overlay address"},
			{"garbage CSR", c1, "be000000-0000-4000-8000-000000000000", `{"csr":"garbage"}`, 400, "malformed CSR: not a PEM CERTIFICATE REQUEST"},
			{"RSA 1024", c1, "be000000-0000-4000-8000-000000000000", certRequest(weakCSR), 400, "RSA key of 1024 bits: at least 2048 needed"},
			{"not JSON", c1, "be000000-0000-4000-8000-000000000000", `{"csr":`, 400, "parse error"},
		} {
			code, got := e.cellCall(tt.client, "POST", "/trellis/v1/cell/instances/"+tt.instance+"/certificate", tt.body)
			if code != tt.code || !strings.Contains(got, tt.want) {
				t.Errorf("%s: POST certificate = %d %s, want %d %q", tt.name, code, got, tt.code, tt.want)
			}
		}
		// Only cells may ask.
		code, _ = e.do(e.admin, "POST", path, good)
		if code != 401 {
			t.Errorf("admin token POST certificate = %d, want 401", code)
		}

		_, metrics := e.do(e.admin, "GET", "/metrics", "")
		for _, want := range []string{
			"trellis_instance_certificates_signed_total 2",
			`trellis_instance_certificates_refused_total{reason="foreign_instance"} 1`,
			`trellis_instance_certificates_refused_total{reason="unknown_instance"} 1`,
			`trellis_instance_certificates_refused_total{reason="not_attached"} 1`,
			`trellis_instance_certificates_refused_total{reason="malformed_csr"} 1`,
			`trellis_instance_certificates_refused_total{reason="weak_key"} 1`,
			`trellis_instance_certificates_refused_total{reason="bad_request"} 1`,
		} {
			if !strings.Contains(metrics, want+"\n") {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

func TestInstanceIdentitySettings(t *testing.T) {
	e := newEnvWith(t, "sqlite", InstanceIdentity{Validity: 5 * time.Minute, TrustDomain: "example.test"})
	_, c1 := e.joinCell("cell1", "198.51.100.11")
	app := e.createApp(e.defaultSpace(), "web")
	e.register(c1, "eb000000-0000-4000-8000-000000000000", app, 0, "10.255.1.9")
	code, body := e.cellCall(c1, "POST", "/trellis/v1/cell/instances/eb000000-0000-4000-8000-000000000000/certificate", certRequest(newCSR(t, "", "eb000000-0000-4000-8000-000000000000")))
	if code != 201 {
		t.Fatalf("POST certificate = %d %s", code, body)
	}
	var ic api.InstanceCertificate
	json.Unmarshal([]byte(body), &ic)
	leaf := parsePEMChain(t, ic.Certificate)[0]
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != 5*time.Minute+identity.InstanceClockSkew {
		t.Errorf("NotAfter - NotBefore = %v, want 5m + %v of clock skew", d, identity.InstanceClockSkew)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].Host != "example.test" || ic.CA.TrustDomain != "example.test" || ic.CA.ValiditySeconds != 300 {
		t.Errorf("URIs %v, ca %+v; want trust domain example.test, 300 s", leaf.URIs, ic.CA)
	}

	for _, tt := range []struct {
		id   InstanceIdentity
		want string
	}{
		{InstanceIdentity{Validity: 30 * time.Second}, "invalid instance certificate validity 30s: at least 1m0s"},
		{InstanceIdentity{TrustDomain: "Not_A.Domain"}, "invalid trust domain"},
	} {
		if _, err := tt.id.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v.withDefaults() = %v, want %q", tt.id, err, tt.want)
		}
		err := Run(context.Background(), Config{StateDir: t.TempDir(), InstanceCertValidity: tt.id.Validity, TrustDomain: tt.id.TrustDomain})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Run(%+v) = %v, want %q", tt.id, err, tt.want)
		}
	}
}

func TestCellStateIdentity(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		space := e.defaultSpace()
		be, fe, worker, pinger := e.createApp(space, "backend"), e.createApp(space, "frontend"), e.createApp(space, "worker"), e.createApp(space, "pinger")
		e.mapRoute(be, "backend", "apps.internal")
		e.mapRoute(be, "api", "apps.internal")
		e.register(c1, "be000000-0000-4000-8000-000000000000", be, 0, "10.255.1.2")
		e.register(c1, "be000000-0000-4000-8000-000000000001", be, 1, "10.255.1.3")
		e.register(c2, "fe000000-0000-4000-8000-000000000000", fe, 0, "10.255.2.2")
		e.must(e.admin, "POST", policiesPath, policyBody(
			[5]any{fe, be, "tcp", 61443, 61443},     // a TLS client
			[5]any{worker, be, "tcp", 60000, 62000}, // a range holding 61443
			[5]any{pinger, be, "tcp", 8080, 8080},   // plaintext only
			[5]any{pinger, be, "udp", 61443, 61443}, // not TLS
			[5]any{be, fe, "tcp", 61443, 61443},     // the other way
		), 200, nil)

		var st api.CellState
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		want := []api.LocalApp{{GUID: be, Hosts: []string{"api.apps.internal", "backend.apps.internal"}, TLSClients: slices.Sorted(slices.Values([]string{fe, worker}))}}
		if diff := cmp.Diff(want, st.LocalApps); diff != "" {
			t.Errorf("cell1 local apps (-want +got):\n%s", diff)
		}
		var ca api.InstanceCA
		e.must(e.admin, "GET", "/trellis/v1/instance-ca", "", 200, &ca)
		if diff := cmp.Diff(ca, st.InstanceCA); diff != "" || ca.Generation < 1 || !strings.Contains(ca.Bundle, "BEGIN CERTIFICATE") {
			t.Errorf("cell1 instance CA (-GET instance-ca +state):\n%s", diff)
		}
		cellGet(t, c2, e.srv.URL+"/trellis/v1/cell/state", &st)
		want = []api.LocalApp{{GUID: fe, Hosts: []string{}, TLSClients: []string{be}}}
		if diff := cmp.Diff(want, st.LocalApps); diff != "" {
			t.Errorf("cell2 local apps (-want +got):\n%s", diff)
		}

		// Requiring client certificates is a change cells see at once.
		rev := st.Revision
		e.must(e.admin, "PUT", "/trellis/v1/apps/"+be+"/tls", `{"require_client_cert":true}`, 200, nil)
		cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d", e.srv.URL, rev), &st)
		if st.Revision <= rev || len(st.LocalApps) != 1 || !st.LocalApps[0].RequireClientCert {
			t.Errorf("after set-tls: revision %d (was %d), local apps %+v; want require_client_cert", st.Revision, rev, st.LocalApps)
		}
		// So is a route change (certificates are renewed for it).
		e.mapRoute(be, "be", "apps.internal")
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		if got := st.LocalApps[0].Hosts; !slices.Equal(got, []string{"api.apps.internal", "backend.apps.internal", "be.apps.internal"}) {
			t.Errorf("hosts after map-route = %v", got)
		}
		// A cell with no instance has no local apps (an empty list).
		_, c3 := e.joinCell("cell3", "198.51.100.13")
		code, body := e.cellCall(c3, "GET", "/trellis/v1/cell/state", "")
		if code != 200 || !strings.Contains(body, `"local_apps":[]`) {
			t.Errorf("cell3 state = %d, want local_apps []: %s", code, body)
		}
	})
}

func TestInstanceCARotationAPI(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		space := e.defaultSpace()
		app := e.createApp(space, "backend")
		e.register(c1, "be000000-0000-4000-8000-000000000000", app, 0, "10.255.1.2")
		writer := e.token(ScopeWrite, []string{space})
		sign := func() []*x509.Certificate {
			t.Helper()
			code, body := e.cellCall(c1, "POST", "/trellis/v1/cell/instances/be000000-0000-4000-8000-000000000000/certificate", certRequest(newCSR(t, "", "be000000-0000-4000-8000-000000000000")))
			if code != 201 {
				t.Fatalf("POST certificate = %d %s", code, body)
			}
			var ic api.InstanceCertificate
			json.Unmarshal([]byte(body), &ic)
			return parsePEMChain(t, ic.Certificate)
		}

		// Anyone authenticated reads the CA, cells too.
		var ca0 api.InstanceCA
		e.must(writer, "GET", "/trellis/v1/instance-ca", "", 200, &ca0)
		var fromCell api.InstanceCA
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/instance-ca", &fromCell); code != 200 || fromCell.Generation != ca0.Generation {
			t.Errorf("cell GET instance-ca = %d %+v", code, fromCell)
		}
		e.must("", "GET", "/trellis/v1/instance-ca", "", 401, nil)
		if ca0.Rotating || len(parsePEMChain(t, ca0.Bundle)) != 1 || ca0.RotationStarted != nil {
			t.Fatalf("a new CA = %+v, want one root, not rotating", ca0)
		}
		old := sign()

		const rot = "/trellis/v1/instance-ca/rotation"
		e.must(writer, "POST", rot, `{"action":"begin"}`, 403, nil)
		if code, got := e.do(e.admin, "POST", rot, `{"action":"finish"}`); code != 409 || !strings.Contains(got, "no rotation of the instance CA is under way") {
			t.Errorf("finish without a rotation = %d %s, want 409", code, got)
		}
		if code, got := e.do(e.admin, "POST", rot, `{"action":"spin"}`); code != 400 || !strings.Contains(got, `invalid action \"spin\"`) {
			t.Errorf("action spin = %d %s, want 400", code, got)
		}
		rev, _ := e.store.Revision(context.Background())
		var ca1 api.InstanceCA
		e.must(e.admin, "POST", rot, `{"action":"begin"}`, 200, &ca1)
		roots1 := parsePEMChain(t, ca1.Bundle)
		if !ca1.Rotating || ca1.Generation != ca0.Generation+1 || len(roots1) != 2 || ca1.RotationStarted == nil || ca1.IntermediateName == ca0.IntermediateName {
			t.Fatalf("after begin: %+v, want rotating with two roots at generation %d", ca1, ca0.Generation+1)
		}
		if got, _ := e.store.Revision(context.Background()); got != rev+1 {
			t.Errorf("begin: revision %d → %d, want +1", rev, got)
		}
		if code, got := e.do(e.admin, "POST", rot, `{"action":"begin"}`); code != 409 || !strings.Contains(got, "already under way") {
			t.Errorf("begin while rotating = %d %s, want 409", code, got)
		}
		// Another controller on the same store sees the rotation.
		pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
		other := httptest.NewUnstartedServer(NewServer(e.store, e.ca, pool, InstanceIdentity{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
		other.TLS = e.srv.TLS
		other.StartTLS()
		defer other.Close()
		req, _ := http.NewRequest("GET", other.URL+"/trellis/v1/instance-ca", nil)
		req.Header.Set("Authorization", "Bearer "+e.admin)
		if resp, err := other.Client().Do(req); err != nil {
			t.Error(err)
		} else {
			var seen api.InstanceCA
			json.NewDecoder(resp.Body).Decode(&seen)
			resp.Body.Close()
			if diff := cmp.Diff(ca1, seen); diff != "" {
				t.Errorf("the other controller's CA (-this +other):\n%s", diff)
			}
		}

		overlap := sign()
		oldRoot, newRoot := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: roots1[0].Raw})), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: roots1[1].Raw}))
		if len(overlap) != 3 {
			t.Errorf("a certificate while rotating has %d certificates, want leaf, intermediate, cross-signed", len(overlap))
		}
		for name, roots := range map[string][]string{"old root only": {oldRoot}, "new root only": {newRoot}, "bundle": {ca1.Bundle}} {
			if err := verifyChain(overlap, roots...); err != nil {
				t.Errorf("a new certificate does not verify with the %s: %v", name, err)
			}
		}
		if err := verifyChain(old, ca1.Bundle); err != nil {
			t.Errorf("an old certificate does not verify with the overlap bundle: %v", err)
		}

		// Finishing before a certificate validity has passed needs force.
		code, got := e.do(e.admin, "POST", rot, `{"action":"finish"}`)
		if code != 409 || !strings.Contains(got, "it is safe to finish from ") || !strings.Contains(got, "--force") {
			t.Errorf("early finish = %d %s, want 409 saying when it is safe", code, got)
		}
		var ca2 api.InstanceCA
		e.must(e.admin, "POST", rot, `{"action":"finish","force":true}`, 200, &ca2)
		if ca2.Rotating || ca2.Generation != ca1.Generation+1 || ca2.Bundle != newRoot || ca2.IntermediateName != ca1.IntermediateName {
			t.Errorf("after finish: %+v, want the new root alone at generation %d", ca2, ca1.Generation+1)
		}
		if final := sign(); len(final) != 2 || verifyChain(final, ca2.Bundle) != nil || verifyChain(final, oldRoot) == nil {
			t.Errorf("after finish: a certificate of %d certificates, or it verifies with the old root", len(final))
		}
		if err := verifyChain(overlap, ca2.Bundle); err != nil {
			t.Errorf("a certificate of the overlap does not verify after finish: %v", err)
		}

		// A rotation that began more than a validity ago finishes unforced.
		if _, err := e.store.UpdateInstanceCA(context.Background(), func(cur store.InstanceCA) (string, error) {
			ca, err := identity.ParseInstanceCA([]byte(cur.State))
			if err != nil {
				return "", err
			}
			next, err := ca.BeginRotation(time.Now().Add(-DefaultInstanceCertValidity - time.Minute))
			if err != nil {
				return "", err
			}
			b, err := next.Marshal()
			return string(b), err
		}); err != nil {
			t.Fatal(err)
		}
		e.must(e.admin, "POST", rot, `{"action":"finish"}`, 200, nil)
	})
}

func TestAppTLS(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		space, otherSpace := e.defaultSpace(), e.createSpace("other")
		app, foreign := e.createApp(space, "backend"), e.createApp(otherSpace, "secret")
		writer := e.token(ScopeWrite, []string{space})
		path := "/trellis/v1/apps/" + app + "/tls"

		var got api.AppTLS
		e.must(writer, "GET", path, "", 200, &got)
		if got.RequireClientCert {
			t.Error("a new app requires client certificates")
		}
		rev, _ := e.store.Revision(context.Background())
		e.must(writer, "PUT", path, `{"require_client_cert":true}`, 200, &got)
		if !got.RequireClientCert {
			t.Error("PUT true answered false")
		}
		e.must(e.admin, "GET", path, "", 200, &got)
		if !got.RequireClientCert {
			t.Error("GET after PUT true = false")
		}
		e.must(e.admin, "PUT", path, `{"require_client_cert":true}`, 200, nil)
		if r, _ := e.store.Revision(context.Background()); r != rev+1 {
			t.Errorf("revision %d → %d after setting true twice, want +1", rev, r)
		}

		// A token of another space sees no such app; neither does anyone for a missing one.
		for _, tt := range []struct {
			token, method, path, body string
			code                      int
			want                      string
		}{
			{writer, "PUT", "/trellis/v1/apps/" + foreign + "/tls", `{"require_client_cert":true}`, 404, "app " + foreign + " not found"},
			{writer, "GET", "/trellis/v1/apps/" + foreign + "/tls", "", 404, "not found"},
			{e.admin, "PUT", "/trellis/v1/apps/nope/tls", `{"require_client_cert":true}`, 404, "app nope not found"},
			{e.admin, "PUT", path, `{"require_client_cert":"yes"}`, 400, "parse error"},
			{e.admin, "PUT", path, `{"require_client_certs":true}`, 400, "unknown field"},
			{"", "PUT", path, `{"require_client_cert":false}`, 401, "missing authorization header"},
		} {
			code, body := e.do(tt.token, tt.method, tt.path, tt.body)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Errorf("%s %s %s = %d %s, want %d %q", tt.method, tt.path, tt.body, code, body, tt.code, tt.want)
			}
		}
		e.must(e.admin, "GET", "/trellis/v1/apps/"+foreign+"/tls", "", 200, &got)
		if got.RequireClientCert {
			t.Error("the refused PUT changed the other space's app")
		}
	})
}

// TestIdentityThroughClient drives the endpoints with api.Client, as a cell
// and as an admin.
func TestIdentityThroughClient(t *testing.T) {
	e := newEnv(t, "sqlite")
	_, c1 := e.joinCell("cell1", "198.51.100.11")
	app := e.createApp(e.defaultSpace(), "web")
	e.register(c1, "eb000000-0000-4000-8000-000000000000", app, 0, "10.255.1.4")
	serverCA := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}))
	cell, err := api.NewCellClient([]string{e.srv.URL}, serverCA, c1.Transport.(*http.Transport).TLSClientConfig.Certificates[0])
	if err != nil {
		t.Fatal(err)
	}
	admin, err := api.NewClient(api.ClientConfig{APIURL: e.srv.URL, CACert: serverCA, Token: e.admin})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ic, err := cell.InstanceCertificate(ctx, "eb000000-0000-4000-8000-000000000000", newCSR(t, "", "eb000000-0000-4000-8000-000000000000"))
	if err != nil {
		t.Fatalf("InstanceCertificate = %v", err)
	}
	if chain := parsePEMChain(t, ic.Certificate); len(chain) != 2 || chain[0].Subject.CommonName != "eb000000-0000-4000-8000-000000000000" || verifyChain(chain, ic.CA.Bundle) != nil {
		t.Errorf("InstanceCertificate gave %d certificates, or one that does not verify", len(chain))
	}
	if _, err := cell.InstanceCertificate(ctx, "other", newCSR(t, "", "other")); !api.IsNotFound(err) {
		t.Errorf("InstanceCertificate(unregistered) = %v, want 404", err)
	}
	if _, err := admin.InstanceCertificate(ctx, "eb000000-0000-4000-8000-000000000000", newCSR(t, "", "eb000000-0000-4000-8000-000000000000")); err == nil {
		t.Error("InstanceCertificate with an admin token = nil error, want 401")
	}
	ca, err := cell.InstanceCA(ctx)
	if err != nil || ca.Generation != ic.CA.Generation {
		t.Errorf("cell InstanceCA = %+v, %v", ca, err)
	}
	rotated, err := admin.RotateInstanceCA(ctx, api.InstanceCARotation{Action: "begin"})
	if err != nil || !rotated.Rotating || rotated.Generation != ca.Generation+1 {
		t.Errorf("RotateInstanceCA(begin) = %+v, %v", rotated, err)
	}
	if _, err := admin.SetAppTLS(ctx, app, api.AppTLS{RequireClientCert: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := admin.AppTLS(ctx, app); err != nil || !got.RequireClientCert {
		t.Errorf("AppTLS = %+v, %v; want require_client_cert", got, err)
	}
}
