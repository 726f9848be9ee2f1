package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var testInstance = Instance{
	GUID: "6e1c2f1a-3b4d-4c5e-8f90-0123456789ab", AppGUID: "app-backend", SpaceGUID: "space-1", OrgGUID: "org-1",
	IP: netip.MustParseAddr("10.255.1.2"), Hosts: []string{"backend.apps.internal", "api.apps.internal"},
}

const testTrustDomain = "trellis.internal"

func newTestCA(t *testing.T) *InstanceCA {
	t.Helper()
	ca, err := NewInstanceCA(time.Now())
	if err != nil {
		t.Fatalf("NewInstanceCA = %v", err)
	}
	return ca
}

// csrFor makes a PEM CSR for key with tmpl (a plain one if nil).
func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest(%T) = %v", key, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// parseChain splits a PEM chain into certificates.
func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				t.Fatalf("trailing data after the PEM chain: %q", rest)
			}
			return out
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("PEM block %q in a chain", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("ParseCertificate = %v", err)
		}
		out = append(out, c)
	}
}

// sign issues a certificate for a fresh key of alg and returns its chain.
func sign(t *testing.T, ca *InstanceCA, alg string) []*x509.Certificate {
	t.Helper()
	_, csr, err := NewInstanceKeyAndCSR(alg, testInstance.GUID)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, leaf, err := ca.SignInstance(csr, testInstance, testTrustDomain, time.Hour, time.Now())
	if err != nil {
		t.Fatalf("SignInstance = %v", err)
	}
	chain := parseChain(t, chainPEM)
	if !chain[0].Equal(leaf) {
		t.Fatal("SignInstance: the PEM does not start with the leaf it returned")
	}
	return chain
}

// verify checks a chain (leaf first) against roots, as a TLS peer would
// with the certificates the other side sent.
func verify(chain []*x509.Certificate, roots ...*x509.Certificate) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range chain[1:] {
		ip.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSName: "backend.apps.internal"})
	return err
}

func TestInstanceCertificateFields(t *testing.T) {
	ca := newTestCA(t)
	for _, alg := range []string{KeyECDSAP256, KeyRSA3072} {
		t.Run(alg, func(t *testing.T) {
			key, err := NewInstanceKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := ParsePrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			// The CSR asks for more than it may: all of it is ignored.
			evil, _ := url.Parse("spiffe://evil/app/x")
			csr := csrFor(t, signer, &x509.CertificateRequest{
				Subject:  pkix.Name{CommonName: "admin", OrganizationalUnit: []string{"app:someone-else"}},
				DNSNames: []string{"evil.example"}, IPAddresses: []net.IP{net.ParseIP("1.2.3.4")}, URIs: []*url.URL{evil},
			})
			before := time.Now()
			chainPEM, _, err := ca.SignInstance(csr, testInstance, testTrustDomain, 2*time.Hour, before)
			if err != nil {
				t.Fatalf("SignInstance = %v", err)
			}
			chain := parseChain(t, chainPEM)
			if len(chain) != 2 || !chain[1].Equal(ca.Intermediate()) {
				t.Fatalf("chain = %d certificates, want the leaf and the intermediate", len(chain))
			}
			leaf := chain[0]
			if leaf.Subject.CommonName != testInstance.GUID {
				t.Errorf("CN = %q, want the instance GUID", leaf.Subject.CommonName)
			}
			// One RDN holds the three OUs, a DER SET: they come back in DER
			// order, not as written (so in Cloud Foundry's certificates too).
			if diff := cmp.Diff([]string{"organization:org-1", "space:space-1", "app:app-backend"}, leaf.Subject.OrganizationalUnit, cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("OU (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]string{testInstance.GUID, "backend.apps.internal", "api.apps.internal"}, leaf.DNSNames); diff != "" {
				t.Errorf("DNS SANs (-want +got):\n%s", diff)
			}
			if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.255.1.2")) {
				t.Errorf("IP SANs = %v, want [10.255.1.2]", leaf.IPAddresses)
			}
			wantURI := "spiffe://trellis.internal/org/org-1/space/space-1/app/app-backend/instance/" + testInstance.GUID
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantURI {
				t.Errorf("URI SANs = %v, want [%s]", leaf.URIs, wantURI)
			}
			if len(leaf.EmailAddresses) != 0 {
				t.Errorf("email SANs = %v, want none", leaf.EmailAddresses)
			}
			wantUsage := x509.KeyUsageDigitalSignature
			if alg == KeyRSA3072 {
				wantUsage |= x509.KeyUsageKeyEncipherment
			}
			if leaf.KeyUsage != wantUsage {
				t.Errorf("KeyUsage = %b, want %b", leaf.KeyUsage, wantUsage)
			}
			if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, leaf.ExtKeyUsage); diff != "" {
				t.Errorf("ExtKeyUsage (-want +got):\n%s", diff)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want a leaf with basic constraints", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if want := before.Add(-InstanceClockSkew).Truncate(time.Second); !leaf.NotBefore.Equal(want) {
				t.Errorf("NotBefore = %v, want %v (now - %v)", leaf.NotBefore, want, InstanceClockSkew)
			}
			if want := before.Add(2 * time.Hour).Truncate(time.Second); !leaf.NotAfter.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", leaf.NotAfter, want)
			}
			if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v is not a large random positive number", leaf.SerialNumber)
			}
			if !bytes.Equal(leaf.AuthorityKeyId, ca.Intermediate().SubjectKeyId) {
				t.Error("the leaf's authority key ID is not the intermediate's subject key ID")
			}
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(signer.Public()) {
				t.Error("the certificate is not for the CSR's key")
			}
			if err := verify(chain, ca.Roots()...); err != nil {
				t.Errorf("the chain does not verify with the bundle: %v", err)
			}
			// Client auth too: the same certificate serves mutual TLS.
			rp, ip := x509.NewCertPool(), x509.NewCertPool()
			rp.AddCert(ca.Roots()[0])
			ip.AddCert(chain[1])
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("the chain does not verify for client auth: %v", err)
			}
		})
	}
}

func TestInstanceCACertificates(t *testing.T) {
	now := time.Now()
	ca, err := NewInstanceCA(now)
	if err != nil {
		t.Fatal(err)
	}
	root, inter := ca.Roots()[0], ca.Intermediate()
	for _, c := range []struct {
		name       string
		cert       *x509.Certificate
		validity   time.Duration
		maxPathLen int
	}{
		{"root", root, InstanceRootValidity, 1},
		{"intermediate", inter, InstanceIntermediateValidity, 0},
	} {
		if !c.cert.IsCA || !c.cert.BasicConstraintsValid {
			t.Errorf("%s: IsCA = %v", c.name, c.cert.IsCA)
		}
		if c.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Errorf("%s: KeyUsage %b lacks CertSign", c.name, c.cert.KeyUsage)
		}
		if len(c.cert.SubjectKeyId) == 0 {
			t.Errorf("%s: no subject key ID", c.name)
		}
		if c.cert.MaxPathLen != c.maxPathLen || (c.maxPathLen == 0 && !c.cert.MaxPathLenZero) {
			t.Errorf("%s: MaxPathLen = %d (zero %v), want %d", c.name, c.cert.MaxPathLen, c.cert.MaxPathLenZero, c.maxPathLen)
		}
		if got := c.cert.NotAfter.Sub(now); got < c.validity-time.Minute || got > c.validity+time.Minute {
			t.Errorf("%s: valid for %v, want %v", c.name, got, c.validity)
		}
		if _, ok := c.cert.PublicKey.(*ecdsa.PublicKey); !ok {
			t.Errorf("%s: key %T, want ECDSA", c.name, c.cert.PublicKey)
		}
	}
	if len(inter.ExtKeyUsage) != 0 || len(inter.UnknownExtKeyUsage) != 0 {
		t.Errorf("intermediate EKU = %v, want none", inter.ExtKeyUsage)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Errorf("the root did not sign the intermediate: %v", err)
	}
	if !bytes.Equal(inter.AuthorityKeyId, root.SubjectKeyId) {
		t.Error("the intermediate's authority key ID is not the root's subject key ID")
	}
	if ca.Rotating() || len(ca.Intermediates()) != 1 || !strings.Contains(string(ca.Bundle()), "BEGIN CERTIFICATE") {
		t.Errorf("a new CA: rotating %v, %d intermediates", ca.Rotating(), len(ca.Intermediates()))
	}
}

func TestInstanceCARotation(t *testing.T) {
	ca0 := newTestCA(t)
	root0 := ca0.Roots()[0]
	old := sign(t, ca0, "")

	ca1, err := ca0.BeginRotation(time.Now())
	if err != nil {
		t.Fatalf("BeginRotation = %v", err)
	}
	if _, err := ca1.BeginRotation(time.Now()); !errors.Is(err, ErrRotating) {
		t.Errorf("BeginRotation while rotating = %v, want ErrRotating", err)
	}
	if _, err := ca0.FinishRotation(); !errors.Is(err, ErrNotRotating) {
		t.Errorf("FinishRotation without a rotation = %v, want ErrNotRotating", err)
	}
	if !ca1.Rotating() || ca1.RotationStarted().IsZero() || ca0.Rotating() {
		t.Fatalf("Rotating: before %v, after %v (started %v)", ca0.Rotating(), ca1.Rotating(), ca1.RotationStarted())
	}
	roots := ca1.Roots()
	if len(roots) != 2 || !roots[0].Equal(root0) || roots[1].Equal(root0) {
		t.Fatalf("bundle while rotating: %d roots, want the old then a new one", len(roots))
	}
	root1 := roots[1]
	if root1.Subject.CommonName == root0.Subject.CommonName || ca1.Intermediate().Subject.CommonName == ca0.Intermediate().Subject.CommonName {
		t.Error("the new root or intermediate has the old one's name")
	}
	overlap := sign(t, ca1, "")
	if len(overlap) != 3 || !overlap[2].Equal(ca1.Intermediate()) {
		t.Fatalf("chain while rotating: %d certificates, want leaf, cross-signed, new intermediate", len(overlap))
	}
	cross := overlap[1]
	if !bytes.Equal(cross.RawSubject, overlap[2].RawSubject) || !bytes.Equal(cross.RawSubjectPublicKeyInfo, overlap[2].RawSubjectPublicKeyInfo) {
		t.Error("the cross-signed intermediate has another subject or key")
	}
	if err := cross.CheckSignatureFrom(root0); err != nil {
		t.Errorf("the old root did not sign the cross-signed intermediate: %v", err)
	}

	ca2, err := ca1.FinishRotation()
	if err != nil {
		t.Fatalf("FinishRotation = %v", err)
	}
	final := sign(t, ca2, "")
	if len(final) != 2 || ca2.Rotating() || len(ca2.Roots()) != 1 || !ca2.Roots()[0].Equal(root1) {
		t.Fatalf("after the rotation: chain of %d, rotating %v, %d roots", len(final), ca2.Rotating(), len(ca2.Roots()))
	}

	// Every (certificate, trust) pair a foundation meets in the rotation.
	for _, tt := range []struct {
		name  string
		chain []*x509.Certificate
		roots []*x509.Certificate
		ok    bool
	}{
		{"old certificate, old root", old, []*x509.Certificate{root0}, true},
		{"old certificate, overlap bundle", old, ca1.Roots(), true},
		{"old certificate, new root only", old, []*x509.Certificate{root1}, false},
		{"overlap certificate, old root only", overlap, []*x509.Certificate{root0}, true},
		{"overlap certificate, new root only", overlap, []*x509.Certificate{root1}, true},
		{"overlap certificate, overlap bundle", overlap, ca1.Roots(), true},
		{"overlap certificate, final bundle", overlap, ca2.Roots(), true},
		{"final certificate, final bundle", final, ca2.Roots(), true},
		{"final certificate, overlap bundle", final, ca1.Roots(), true},
		{"final certificate, old root only", final, []*x509.Certificate{root0}, false},
		{"old certificate, final bundle", old, ca2.Roots(), false},
	} {
		err := verify(tt.chain, tt.roots...)
		if (err == nil) != tt.ok {
			t.Errorf("%s: verify = %v, want ok %v", tt.name, err, tt.ok)
		}
	}

	// A second rotation starts from the new root.
	ca3, err := ca2.BeginRotation(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	next := sign(t, ca3, "")
	for _, r := range []*x509.Certificate{root1, ca3.Roots()[1]} {
		if err := verify(next, r); err != nil {
			t.Errorf("second rotation: a new certificate does not verify with %s: %v", r.Subject.CommonName, err)
		}
	}
	if err := verify(next, root0); err == nil {
		t.Error("second rotation: a new certificate verifies with the root of two rotations ago")
	}
}

func TestInstanceCSRRefused(t *testing.T) {
	ca := newTestCA(t)
	gen := func(f func() (crypto.Signer, error)) crypto.Signer {
		k, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rsa1024 := gen(func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 1024) })
	p224 := gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P224(), rand.Reader) })
	p521 := gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P521(), rand.Reader) })
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	good := gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) })
	goodCSR := csrFor(t, good, nil)
	block, _ := pem.Decode(goodCSR)
	tampered := bytes.Clone(block.Bytes)
	tampered[len(tampered)-3] ^= 0xff // in the signature
	for _, tt := range []struct {
		name string
		csr  []byte
		want error
		msg  string
	}{
		{"garbage", []byte("garbage"), ErrMalformedCSR, "not a PEM CERTIFICATE REQUEST"},
		{"a certificate", ca.Bundle(), ErrMalformedCSR, "not a PEM CERTIFICATE REQUEST"},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), ErrMalformedCSR, "malformed CSR"},
		{"bad signature", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), ErrMalformedCSR, "bad signature"},
		{"RSA 1024", csrFor(t, rsa1024, nil), ErrWeakKey, "RSA key of 1024 bits: at least 2048 needed"},
		{"P-224", csrFor(t, p224, nil), ErrWeakKey, "EC key on P-224"},
		{"P-521", csrFor(t, p521, nil), ErrUnsupportedKey, "EC key on P-521"},
		{"Ed25519", csrFor(t, ed, nil), ErrUnsupportedKey, "Ed25519 keys are not accepted"},
	} {
		_, _, err := ca.SignInstance(tt.csr, testInstance, testTrustDomain, time.Hour, time.Now())
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: SignInstance = %v, want %v with %q", tt.name, err, tt.want, tt.msg)
		}
	}
	// Accepted: P-256, P-384, RSA 2048 and more.
	for _, f := range []func() (crypto.Signer, error){
		func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) },
		func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) },
	} {
		key := gen(f)
		if _, _, err := ca.SignInstance(csrFor(t, key, nil), testInstance, testTrustDomain, time.Hour, time.Now()); err != nil {
			t.Errorf("SignInstance(%T) = %v, want a certificate", key.Public(), err)
		}
	}
	// What the controller passes in is checked too.
	for _, tt := range []struct {
		name   string
		mutate func(*Instance, *string)
		msg    string
	}{
		{"no IP", func(in *Instance, _ *string) { in.IP = netip.Addr{} }, "no IP address"},
		{"slash in GUID", func(in *Instance, _ *string) { in.GUID = "a/b" }, `instance GUID "a/b"`},
		{"dot-dot app", func(in *Instance, _ *string) { in.AppGUID = ".." }, `app GUID ".."`},
		{"empty org", func(in *Instance, _ *string) { in.OrgGUID = "" }, "org GUID"},
		{"bad trust domain", func(_ *Instance, td *string) { *td = "Trellis_Internal" }, "invalid trust domain"},
	} {
		in, td := testInstance, testTrustDomain
		tt.mutate(&in, &td)
		if _, _, err := ca.SignInstance(goodCSR, in, td, time.Hour, time.Now()); err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: SignInstance = %v, want an error with %q", tt.name, err, tt.msg)
		}
	}
}

func TestInstanceCAMarshal(t *testing.T) {
	ca0 := newTestCA(t)
	ca1, err := ca0.BeginRotation(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := ca1.FinishRotation()
	if err != nil {
		t.Fatal(err)
	}
	for name, ca := range map[string]*InstanceCA{"steady": ca0, "rotating": ca1, "finished": ca2} {
		t.Run(name, func(t *testing.T) {
			data, err := ca.Marshal()
			if err != nil {
				t.Fatalf("Marshal = %v", err)
			}
			var fields map[string]any
			if err := json.Unmarshal(data, &fields); err != nil {
				t.Fatal(err)
			}
			for k, v := range fields {
				if s, ok := v.(string); ok && strings.Contains(k, "key") && !strings.HasPrefix(s, "-----BEGIN PRIVATE KEY-----") {
					t.Errorf("field %s is not a PEM private key: %.40q", k, s)
				}
			}
			got, err := ParseInstanceCA(data)
			if err != nil {
				t.Fatalf("ParseInstanceCA = %v", err)
			}
			if !bytes.Equal(got.Bundle(), ca.Bundle()) || got.Rotating() != ca.Rotating() || !got.RotationStarted().Equal(ca.RotationStarted()) {
				t.Errorf("round trip changed the bundle or the rotation")
			}
			if string(encodeCerts(got.Intermediates()...)) != string(encodeCerts(ca.Intermediates()...)) {
				t.Errorf("round trip changed the intermediates")
			}
			again, err := got.Marshal()
			if err != nil || !bytes.Equal(again, data) {
				t.Errorf("Marshal(Parse(x)) != x (%v)", err)
			}
			// The parsed CA signs with the same intermediate key.
			chain := sign(t, got, "")
			if err := verify(chain, ca.Roots()...); err != nil {
				t.Errorf("a certificate from the parsed CA does not verify with the original's bundle: %v", err)
			}
		})
	}

	// Pieces that do not belong together are refused.
	other := newTestCA(t)
	var a, b map[string]any
	d0, _ := ca0.Marshal()
	d1, _ := ca1.Marshal()
	dOther, _ := other.Marshal()
	json.Unmarshal(d0, &a)
	json.Unmarshal(dOther, &b)
	for _, tt := range []struct {
		name  string
		edit  func(m map[string]any)
		input []byte
		msg   string
	}{
		{"foreign intermediate key", func(m map[string]any) { m["intermediate_key"] = b["intermediate_key"] }, d0, "intermediate key does not match"},
		{"foreign intermediate", func(m map[string]any) {
			m["intermediate"], m["intermediate_key"] = b["intermediate"], b["intermediate_key"]
		}, d0, "the root did not sign the intermediate"},
		{"rotation without cross", func(m map[string]any) { delete(m, "cross_signed_intermediate") }, d1, "a rotation needs"},
		{"foreign previous root", func(m map[string]any) { m["previous_root"] = b["root"] }, d1, "previous root did not sign"},
		{"unknown version", func(m map[string]any) { m["version"] = 2 }, d0, "unknown version 2"},
	} {
		var m map[string]any
		json.Unmarshal(tt.input, &m)
		tt.edit(m)
		data, _ := json.Marshal(m)
		if _, err := ParseInstanceCA(data); err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: ParseInstanceCA = %v, want an error with %q", tt.name, err, tt.msg)
		}
	}
	if _, err := ParseInstanceCA([]byte("{")); err == nil {
		t.Error("ParseInstanceCA(truncated JSON) = nil error")
	}
}

func TestParsePeer(t *testing.T) {
	ca := newTestCA(t)
	leaf := sign(t, ca, "")[0]
	id, err := ParsePeer(leaf)
	want := Peer{Instance: testInstance.GUID, App: "app-backend", Space: "space-1", Org: "org-1"}
	if err != nil || id != want || PeerOf(leaf) != want {
		t.Errorf("ParsePeer = %+v, %v; want %+v", id, err, want)
	}
	if _, err := ParsePeer(ca.Intermediate()); err == nil || PeerOf(ca.Intermediate()) != (Peer{}) {
		t.Error("ParsePeer(intermediate) = nil error, want one")
	}
	// A URI that disagrees with the subject is refused.
	forged := *leaf
	u, _ := url.Parse("spiffe://trellis.internal/org/org-1/space/space-1/app/app-admin/instance/" + testInstance.GUID)
	forged.URIs = []*url.URL{u}
	if _, err := ParsePeer(&forged); err == nil || !strings.Contains(err.Error(), "disagrees") || PeerOf(&forged).App != "" {
		t.Errorf("ParsePeer(URI for another app) = %v, want a disagreement", err)
	}
	forged = *leaf
	forged.Subject.OrganizationalUnit = append(forged.Subject.OrganizationalUnit, "app:app-admin")
	if _, err := ParsePeer(&forged); err == nil || !strings.Contains(err.Error(), "two apps") {
		t.Errorf("ParsePeer(two app OUs) = %v, want an error", err)
	}
}

// TestInstanceMutualTLS runs a real TLS 1.3 and 1.2 handshake between two
// instances, each presenting its certificate and trusting the bundle.
func TestInstanceMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	pair := func(alg string, in Instance) tls.Certificate {
		key, csr, err := NewInstanceKeyAndCSR(alg, in.GUID)
		if err != nil {
			t.Fatal(err)
		}
		chain, _, err := ca.SignInstance(csr, in, testTrustDomain, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(chain, key)
		if err != nil {
			t.Fatalf("X509KeyPair(%s) = %v", alg, err)
		}
		return c
	}
	client := testInstance
	client.GUID, client.AppGUID, client.IP, client.Hosts = "frontend-0", "app-frontend", netip.MustParseAddr("10.255.2.2"), nil
	serverCert, clientCert := pair(KeyECDSAP256, testInstance), pair(KeyRSA3072, client)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.Bundle())
	for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		c1, c2 := net.Pipe()
		srv := tls.Server(c1, &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: version, MaxVersion: version})
		cli := tls.Client(c2, &tls.Config{Certificates: []tls.Certificate{clientCert}, RootCAs: pool, ServerName: "backend.apps.internal", MinVersion: version, MaxVersion: version})
		errc := make(chan error, 1)
		go func() { errc <- cli.Handshake() }()
		if err := srv.Handshake(); err != nil {
			t.Fatalf("TLS %x: server handshake = %v", version, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("TLS %x: client handshake = %v", version, err)
		}
		peer, err := ParsePeer(srv.ConnectionState().PeerCertificates[0])
		if err != nil || peer.App != "app-frontend" || peer.Instance != "frontend-0" {
			t.Errorf("TLS %x: the server sees %+v, %v; want app-frontend", version, peer, err)
		}
		c1.Close() // not the TLS conns: their close_notify would wait on the pipe
		c2.Close()
	}
}

func TestNewInstanceKey(t *testing.T) {
	for _, tt := range []struct {
		alg, pemType string
		check        func(crypto.PublicKey) bool
	}{
		{"", "EC PRIVATE KEY", func(k crypto.PublicKey) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{KeyECDSAP256, "EC PRIVATE KEY", func(k crypto.PublicKey) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{KeyRSA3072, "RSA PRIVATE KEY", func(k crypto.PublicKey) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 3072 }},
	} {
		key, csr, err := NewInstanceKeyAndCSR(tt.alg, "i-1")
		if err != nil {
			t.Fatalf("NewInstanceKeyAndCSR(%q) = %v", tt.alg, err)
		}
		if b, _ := pem.Decode(key); b == nil || b.Type != tt.pemType {
			t.Errorf("NewInstanceKey(%q): PEM type %v, want %s", tt.alg, b, tt.pemType)
		}
		req, err := ParseInstanceCSR(csr)
		if err != nil {
			t.Fatalf("ParseInstanceCSR(NewInstanceCSR(%q)) = %v", tt.alg, err)
		}
		if !tt.check(req.PublicKey) || req.Subject.CommonName != "i-1" {
			t.Errorf("NewInstanceCSR(%q): key %T, CN %q", tt.alg, req.PublicKey, req.Subject.CommonName)
		}
	}
	if _, err := NewInstanceKey("dsa-1024"); err == nil || !strings.Contains(err.Error(), `unknown key algorithm "dsa-1024"`) {
		t.Errorf("NewInstanceKey(dsa-1024) = %v, want an error", err)
	}
}

func TestValidateTrustDomain(t *testing.T) {
	for _, tt := range []struct {
		td string
		ok bool
	}{
		{"trellis.internal", true},
		{"example", true},
		{"a-b.c0.example.org", true},
		{"", false},
		{"Trellis.internal", false},
		{"trellis..internal", false},
		{"-trellis.internal", false},
		{"trellis_internal", false},
		{"trellis.internal.", false},
		{strings.Repeat("a", 64) + ".internal", false},
		{strings.Repeat("abcdefgh.", 29) + "internal", false}, // 269 characters
	} {
		if err := ValidateTrustDomain(tt.td); (err == nil) != tt.ok {
			t.Errorf("ValidateTrustDomain(%q) = %v, want ok %v", tt.td, err, tt.ok)
		}
	}
}

// TestInstanceChainOpenSSL checks the chains with OpenSSL's verifier (what
// curl inside a container uses) in every phase of a rotation, trusting the
// bundle a cell writes. Skipped where openssl is not installed.
func TestInstanceChainOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is not installed: apt-get install openssl")
		}
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	check := func(name string, chain []*x509.Certificate, roots []*x509.Certificate, ok bool) {
		t.Helper()
		files := map[string][]byte{"leaf.pem": encodeCerts(chain[0]), "untrusted.pem": encodeCerts(chain[1:]...), "roots.pem": encodeCerts(roots...)}
		for f, b := range files {
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(openssl, "verify", "-purpose", "sslserver", "-CAfile", "roots.pem", "-untrusted", "untrusted.pem", "leaf.pem")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if (err == nil) != ok {
			t.Errorf("%s: openssl verify = %v, want ok %v:\n%s", name, err, ok, out)
		}
	}
	ca0 := newTestCA(t)
	old := sign(t, ca0, "")
	ca1, err := ca0.BeginRotation(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	overlap := sign(t, ca1, KeyRSA3072)
	ca2, err := ca1.FinishRotation()
	if err != nil {
		t.Fatal(err)
	}
	final := sign(t, ca2, "")
	check("old certificate, old bundle", old, ca0.Roots(), true)
	check("old certificate, overlap bundle", old, ca1.Roots(), true)
	check("overlap certificate, overlap bundle", overlap, ca1.Roots(), true)
	check("overlap certificate, old root only", overlap, ca0.Roots(), true)
	check("overlap certificate, new root only (OpenSSL does not backtrack)", overlap, ca2.Roots(), false)
	check("final certificate, overlap bundle", final, ca1.Roots(), true)
	check("final certificate, final bundle", final, ca2.Roots(), true)
	check("old certificate, final bundle", old, ca2.Roots(), false)
}
