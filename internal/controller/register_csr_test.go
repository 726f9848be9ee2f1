package controller

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// registerCSR sends a registration of guid on the cell of c that carries
// csr, and returns the status, the refusal header and the body.
func (e *env) registerCSR(c *http.Client, guid, app, ip string, csr []byte) (int, string, string) {
	e.t.Helper()
	b, _ := json.Marshal(api.InstanceRegistration{AppGUID: app, IP: ip, ContainerID: "ctr-" + guid[:8], CSR: string(csr)})
	req, _ := http.NewRequest("PUT", e.srv.URL+"/trellis/v1/cell/instances/"+guid, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(api.CertificateRefusedHeader), string(body)
}

// TestRegisterInstanceWithCSR checks a registration that carries a CSR: it
// answers the certificate POST .../certificate would sign (the identity of
// the instance as registered, whatever the CSR names, for the CSR's key);
// what that refuses it refuses too, logged and counted, but the
// registration stands and the answer says so (204 and why, never an error
// status); and a registration that fails signs nothing.
func TestRegisterInstanceWithCSR(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		space := e.defaultSpace()
		var orgs api.List[api.Organization]
		e.must(e.admin, "GET", "/v3/organizations?names=default", "", 200, &orgs)
		org := orgs.Resources[0].GUID
		be := e.createApp(space, "backend")
		e.mapRoute(be, "backend", "apps.internal")
		const guid = "cc000000-0000-4000-8000-000000000000"

		// The CSR names another instance: the certificate is for the one
		// registered, as POST .../certificate signs it.
		_, csr, err := identity.NewInstanceKeyAndCSR(identity.KeyECDSAP256, "dd000000-0000-4000-8000-000000000000")
		if err != nil {
			t.Fatal(err)
		}
		code, refused, body := e.registerCSR(c1, guid, be, "10.255.1.7", csr)
		if code != 201 || refused != "" {
			t.Fatalf("register with CSR = %d (refused %q) %s, want 201", code, refused, body)
		}
		var ic api.InstanceCertificate
		if err := json.Unmarshal([]byte(body), &ic); err != nil {
			t.Fatal(err)
		}
		chain := parsePEMChain(t, ic.Certificate)
		leaf := chain[0]
		id, err := identity.ParsePeer(leaf)
		if err != nil || id.Instance != guid || id.App != be || id.Space != space || id.Org != org {
			t.Errorf("ParsePeer = %+v, %v; want instance %s of app %s, space %s, org %s", id, err, guid, be, space, org)
		}
		if leaf.Subject.CommonName != guid || !slices.Equal(leaf.DNSNames, []string{guid, "backend.apps.internal"}) {
			t.Errorf("CN %q, DNS SANs %v", leaf.Subject.CommonName, leaf.DNSNames)
		}
		if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.255.1.7")) {
			t.Errorf("IP SANs = %v, want 10.255.1.7", leaf.IPAddresses)
		}
		req, _ := identity.ParseInstanceCSR(csr)
		if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(req.PublicKey) {
			t.Error("the certificate is not for the CSR's key")
		}
		if err := verifyChain(chain, ic.CA.Bundle); err != nil || ic.CA.Generation < 1 {
			t.Errorf("the certificate does not verify with the CA's bundle (generation %d): %v", ic.CA.Generation, err)
		}

		// A registration refused signs nothing: another cell's instance,
		// an app that does not exist.
		if code, refused, body := e.registerCSR(c2, guid, be, "10.255.2.7", csr); code != 409 || refused != "" || !strings.Contains(body, "not on this cell") {
			t.Errorf("register another cell's instance with CSR = %d (refused %q) %s, want 409", code, refused, body)
		}
		if code, _, body := e.registerCSR(c1, "ce000000-0000-4000-8000-000000000000", "nope", "10.255.1.8", csr); code != 422 {
			t.Errorf("register for a missing app with CSR = %d %s, want 422", code, body)
		}

		// A CSR the controller refuses: the registration stands, the
		// header says why.
		weak, _ := rsa.GenerateKey(rand.Reader, 1024)
		weakDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, weak)
		weakCSR := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: weakDER})
		for i, tt := range []struct {
			name string
			csr  []byte
			want string
		}{
			{"garbage CSR", []byte("garbage"), "400 malformed CSR: not a PEM CERTIFICATE REQUEST"},
			{"RSA 1024", weakCSR, "400 key too weak: RSA key of 1024 bits"},
		} {
			g := fmt.Sprintf("cf00000%d-0000-4000-8000-000000000000", i)
			ip := fmt.Sprintf("10.255.1.%d", 20+i)
			code, refused, body := e.registerCSR(c1, g, be, ip, tt.csr)
			if code != 204 || !strings.Contains(refused, tt.want) || body != "" {
				t.Errorf("%s: register = %d (refused %q) %q, want 204 refused %q", tt.name, code, refused, body, tt.want)
			}
			var ins api.List[api.Instance]
			e.must(e.admin, "GET", "/trellis/v1/instances?app_guids="+be, "", 200, &ins)
			if !slices.ContainsFunc(ins.Resources, func(in api.Instance) bool { return in.GUID == g && in.CellName == "cell1" && in.State == "RUNNING" }) {
				t.Errorf("%s: instance %s not registered after its CSR was refused: %+v", tt.name, g, ins.Resources)
			}
		}
		// Without a CSR the answer is as before.
		e.register(c1, guid, be, 0, "10.255.1.7")

		_, metrics := e.do(e.admin, "GET", "/metrics", "")
		for _, want := range []string{
			"trellis_instance_certificates_signed_total 1",
			`trellis_instance_certificates_refused_total{reason="foreign_instance"} 0`,
			`trellis_instance_certificates_refused_total{reason="malformed_csr"} 1`,
			`trellis_instance_certificates_refused_total{reason="weak_key"} 1`,
		} {
			if !strings.Contains(metrics, want+"\n") {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}
