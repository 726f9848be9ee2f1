package identity

// The instance identity authority: the CA that signs app instances'
// identity certificates (Cloud Foundry's "instance identity"), apart from
// the control-plane CA of ca.go. A root signs an intermediate; the
// intermediate signs instance certificates. Rotation is by cross-signing,
// so that old and new certificates verify while cells and the apps in
// their containers catch up:
//
//	steady      bundle: R1          chains: leaf, I1
//	rotating    bundle: R1, R2      chains: leaf, I2×R1 (I2 cross-signed by R1), I2
//	finished    bundle: R2          chains: leaf, I2
//
// While rotating, a new chain verifies for a client that trusts only R1
// (through the cross-signed I2) and for one that trusts only R2, and an old
// chain (leaf, I1) still verifies with the bundle.
//
// That holds for verifiers that try every candidate issuer (Go, Java).
// OpenSSL (so curl, Python, Ruby, nginx) takes the first certificate sent
// whose subject matches and does not backtrack, so the cross-signed copy
// comes first: a new chain verifies with the bundle and with R1 alone —
// the client that loaded its trust store before the rotation and never
// again — but for OpenSSL not with R2 alone. No client has R2 alone while
// the rotation overlaps (every bundle then holds both roots); after it
// finishes, chains no longer carry the cross-signed copy.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Lifetimes of the instance CA's certificates, and how far an instance
// certificate's NotBefore is set back to allow for clocks that disagree.
const (
	InstanceRootValidity         = 10 * 365 * 24 * time.Hour
	InstanceIntermediateValidity = 5 * 365 * 24 * time.Hour
	InstanceClockSkew            = 10 * time.Second
)

// DefaultTrustDomain is the SPIFFE trust domain of instance URIs unless the
// controller is given another.
const DefaultTrustDomain = "trellis.internal"

// Instance key algorithms a cell may choose (NewInstanceKey).
const (
	KeyECDSAP256 = "ecdsa-p256" // the default: small and fast
	KeyRSA3072   = "rsa-3072"   // what Cloud Foundry's cells use today
)

// Why the instance CA refuses a CSR; errors wrap one of these.
var (
	ErrMalformedCSR   = errors.New("malformed CSR")
	ErrWeakKey        = errors.New("key too weak")
	ErrUnsupportedKey = errors.New("unsupported key type")
)

// Rotation errors.
var (
	ErrRotating    = errors.New("a rotation of the instance CA is already under way")
	ErrNotRotating = errors.New("no rotation of the instance CA is under way")
)

// maxRSABits bounds an instance's RSA key: verifying bigger ones costs the
// controller much for nothing.
const maxRSABits = 8192

// caCert is one certificate of the instance CA and, when it still signs,
// its key.
type caCert struct {
	cert *x509.Certificate
	key  crypto.Signer // nil for a certificate that no longer signs
}

// InstanceCA is the instance identity authority. It is immutable: the
// rotation methods return a new one. Its whole state, keys included,
// serializes with Marshal so that every controller sharing a database signs
// with the same CA.
type InstanceCA struct {
	root         caCert
	intermediate caCert
	// While rotating: the previous root (still trusted, no longer signing)
	// and the intermediate cross-signed by it.
	previousRoot    *x509.Certificate
	cross           *x509.Certificate
	rotationStarted time.Time
}

// NewInstanceCA creates a root (ECDSA P-256, valid 10 years) and an
// intermediate it signs (valid 5 years).
func NewInstanceCA(now time.Time) (*InstanceCA, error) {
	root, inter, err := newRootAndIntermediate(now)
	if err != nil {
		return nil, err
	}
	return &InstanceCA{root: root, intermediate: inter}, nil
}

func newRootAndIntermediate(now time.Time) (root, inter caCert, err error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return root, inter, err
	}
	rootSKID := subjectKeyID(&rootKey.PublicKey)
	rootTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "trellis instance root CA " + hex.EncodeToString(rootSKID[:4]), Organization: []string{"trellis"}},
		NotBefore:             now.Add(-InstanceClockSkew),
		NotAfter:              now.Add(InstanceRootValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		SubjectKeyId:          rootSKID,
	}
	rootCert, err := createCert(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return root, inter, fmt.Errorf("create instance root CA: %w", err)
	}
	root = caCert{cert: rootCert, key: rootKey}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return root, inter, err
	}
	interCert, err := createCert(intermediateTemplate(&interKey.PublicKey, now, rootCert), rootCert, &interKey.PublicKey, rootKey)
	if err != nil {
		return root, inter, fmt.Errorf("create instance intermediate CA: %w", err)
	}
	return root, caCert{cert: interCert, key: interKey}, nil
}

// intermediateTemplate is the template of an intermediate for key, signed
// by parent: no extended key usage (any), no CA below it.
func intermediateTemplate(pub *ecdsa.PublicKey, now time.Time, parent *x509.Certificate) *x509.Certificate {
	skid := subjectKeyID(pub)
	t := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "trellis instance CA " + hex.EncodeToString(skid[:4]), Organization: []string{"trellis"}},
		NotBefore:             now.Add(-InstanceClockSkew),
		NotAfter:              now.Add(InstanceIntermediateValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          skid,
	}
	if t.NotAfter.After(parent.NotAfter) {
		t.NotAfter = parent.NotAfter
	}
	return t
}

func createCert(tmpl, parent *x509.Certificate, pub any, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// subjectKeyID is the SHA-1 of the public key's PKIX encoding (RFC 5280
// §4.2.1.2 allows any such method).
func subjectKeyID(pub any) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha1.Sum(b)
	return sum[:]
}

// Rotating reports whether a rotation has begun and not finished.
func (ca *InstanceCA) Rotating() bool { return ca.previousRoot != nil }

// RotationStarted is when the rotation under way began (zero if none).
func (ca *InstanceCA) RotationStarted() time.Time { return ca.rotationStarted }

// Roots are the trusted roots: the root, and while rotating the previous
// root first.
func (ca *InstanceCA) Roots() []*x509.Certificate {
	if ca.previousRoot != nil {
		return []*x509.Certificate{ca.previousRoot, ca.root.cert}
	}
	return []*x509.Certificate{ca.root.cert}
}

// Bundle is the PEM of Roots: what clients of instances trust.
func (ca *InstanceCA) Bundle() []byte { return encodeCerts(ca.Roots()...) }

// Intermediate is the certificate that signs instance certificates.
func (ca *InstanceCA) Intermediate() *x509.Certificate { return ca.intermediate.cert }

// Intermediates are the certificates served after an instance's leaf: the
// intermediate and, while rotating, its copy cross-signed by the previous
// root.
func (ca *InstanceCA) Intermediates() []*x509.Certificate {
	if ca.cross != nil {
		return []*x509.Certificate{ca.cross, ca.intermediate.cert}
	}
	return []*x509.Certificate{ca.intermediate.cert}
}

// BeginRotation returns the CA with a new root and a new intermediate that
// signs from now on, the new intermediate cross-signed by the current root,
// and both roots trusted. ErrRotating if a rotation is under way.
func (ca *InstanceCA) BeginRotation(now time.Time) (*InstanceCA, error) {
	if ca.Rotating() {
		return nil, ErrRotating
	}
	root, inter, err := newRootAndIntermediate(now)
	if err != nil {
		return nil, err
	}
	// The cross-signed copy: the same subject and key as the new
	// intermediate, issued by the current root.
	pub := inter.cert.PublicKey.(*ecdsa.PublicKey)
	tmpl := intermediateTemplate(pub, now, ca.root.cert)
	tmpl.Subject = inter.cert.Subject
	tmpl.NotBefore, tmpl.NotAfter = inter.cert.NotBefore, inter.cert.NotAfter
	if tmpl.NotAfter.After(ca.root.cert.NotAfter) {
		tmpl.NotAfter = ca.root.cert.NotAfter
	}
	cross, err := createCert(tmpl, ca.root.cert, pub, ca.root.key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the new intermediate: %w", err)
	}
	if !bytes.Equal(cross.RawSubject, inter.cert.RawSubject) {
		return nil, errors.New("cross-sign the new intermediate: subjects differ")
	}
	return &InstanceCA{root: root, intermediate: inter, previousRoot: ca.root.cert, cross: cross, rotationStarted: now.UTC()}, nil
}

// FinishRotation returns the CA without the previous root and the
// cross-signed intermediate: certificates that chain only to the previous
// root stop verifying. ErrNotRotating if no rotation is under way.
func (ca *InstanceCA) FinishRotation() (*InstanceCA, error) {
	if !ca.Rotating() {
		return nil, ErrNotRotating
	}
	return &InstanceCA{root: ca.root, intermediate: ca.intermediate}, nil
}

// Instance names the instance a certificate is for. The controller fills
// every field from its store; nothing comes from the CSR.
type Instance struct {
	GUID, AppGUID, SpaceGUID, OrgGUID string
	IP                                netip.Addr
	// Hosts are DNS names of the instance besides its GUID: the app's
	// internal routes.
	Hosts []string
}

// SPIFFEID is the URI SAN of an instance certificate.
func (in Instance) SPIFFEID(trustDomain string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain,
		Path: "/org/" + in.OrgGUID + "/space/" + in.SpaceGUID + "/app/" + in.AppGUID + "/instance/" + in.GUID}
}

// SignInstance issues an instance identity certificate for the key of a
// PEM CSR, valid from now (set back by InstanceClockSkew) for validity, and
// returns the PEM of the leaf followed by Intermediates, and the leaf. The
// CSR's signature must verify and its key must be ECDSA P-256 or P-384, or
// RSA of 2048 to 8192 bits; its subject and extensions are ignored. The
// certificate is Cloud Foundry's: CN the instance GUID; OU
// organization:GUID, space:GUID, app:GUID; DNS SANs the instance GUID and
// in.Hosts; IP SAN the instance's address; a SPIFFE URI SAN; usable by
// TLS servers and clients.
func (ca *InstanceCA) SignInstance(csrPEM []byte, in Instance, trustDomain string, validity time.Duration, now time.Time) ([]byte, *x509.Certificate, error) {
	csr, err := ParseInstanceCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range []struct{ name, v string }{{"instance", in.GUID}, {"app", in.AppGUID}, {"space", in.SpaceGUID}, {"org", in.OrgGUID}} {
		if err := checkID(f.v); err != nil {
			return nil, nil, fmt.Errorf("sign instance certificate: %s GUID %q: %w", f.name, f.v, err)
		}
	}
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, nil, fmt.Errorf("sign instance certificate: %w", err)
	}
	if !in.IP.IsValid() {
		return nil, nil, errors.New("sign instance certificate: the instance has no IP address")
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("sign instance certificate: validity %v must be positive", validity)
	}
	dns := []string{in.GUID}
	for _, h := range in.Hosts {
		h = strings.ToLower(h)
		if h != "" && !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment // RSA key exchange of TLS 1.2
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject: pkix.Name{CommonName: in.GUID,
			OrganizationalUnit: []string{"organization:" + in.OrgGUID, "space:" + in.SpaceGUID, "app:" + in.AppGUID}},
		NotBefore:             now.Add(-InstanceClockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           []net.IP{in.IP.Unmap().AsSlice()},
		URIs:                  []*url.URL{in.SPIFFEID(trustDomain)},
	}
	if tmpl.NotAfter.After(ca.intermediate.cert.NotAfter) {
		tmpl.NotAfter = ca.intermediate.cert.NotAfter
	}
	leaf, err := createCert(tmpl, ca.intermediate.cert, csr.PublicKey, ca.intermediate.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign instance certificate: %w", err)
	}
	return append(encodeCerts(leaf), encodeCerts(ca.Intermediates()...)...), leaf, nil
}

// checkID accepts what may appear in an OU, a DNS name and a SPIFFE path
// segment: 1-255 of [A-Za-z0-9._-], not "." or "..".
func checkID(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 255:
		return errors.New("longer than 255 characters")
	case s == "." || s == "..":
		return errors.New(`must not be "." or ".."`)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("character %q is outside [A-Za-z0-9._-]", c)
		}
	}
	return nil
}

// ValidateTrustDomain checks a SPIFFE trust domain: a DNS name of
// lowercase labels of [a-z0-9-] (1-63 characters, not starting or ending
// with '-'), at most 253 characters.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("invalid trust domain: must not be empty")
	}
	if len(td) > 253 {
		return fmt.Errorf("invalid trust domain %q: %d characters long, at most 253 allowed", td, len(td))
	}
	for _, l := range strings.Split(td, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("invalid trust domain %q: each dot-separated label must be 1-63 characters, not beginning or ending with '-'", td)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("invalid trust domain %q: character %q is outside [a-z0-9.-]", td, c)
			}
		}
	}
	return nil
}

// ParseInstanceCSR decodes a PEM certificate request, checks its signature
// and its key: ECDSA P-256 or P-384, or RSA of 2048 to 8192 bits. Ed25519
// is refused: many TLS clients and proxies (Envoy, Java before 15, most
// HSMs) cannot use such certificates. Errors wrap ErrMalformedCSR,
// ErrWeakKey or ErrUnsupportedKey.
func ParseInstanceCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrMalformedCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < MinRSABits {
			return nil, fmt.Errorf("%w: RSA key of %d bits: at least %d needed (use rsa-3072 or ecdsa-p256)", ErrWeakKey, n, MinRSABits)
		} else if n > maxRSABits {
			return nil, fmt.Errorf("%w: RSA key of %d bits: at most %d accepted", ErrUnsupportedKey, n, maxRSABits)
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
		default:
			if k.Curve.Params().BitSize < 256 {
				return nil, fmt.Errorf("%w: EC key on %s: P-256 or P-384 needed", ErrWeakKey, k.Curve.Params().Name)
			}
			return nil, fmt.Errorf("%w: EC key on %s: P-256 or P-384 needed", ErrUnsupportedKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		return nil, fmt.Errorf("%w: Ed25519 keys are not accepted for instance certificates (many TLS clients cannot use them): use ecdsa-p256 or rsa-3072", ErrUnsupportedKey)
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, k)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: bad signature: %w", ErrMalformedCSR, err)
	}
	return csr, nil
}

// NewInstanceKey generates an instance's private key — alg KeyECDSAP256
// (the default, for "") or KeyRSA3072 — and returns it as PEM: SEC 1 ("EC
// PRIVATE KEY") or PKCS #1 ("RSA PRIVATE KEY", as Cloud Foundry writes it).
// It is made on the cell and never leaves it.
func NewInstanceKey(alg string) ([]byte, error) {
	switch alg {
	case "", KeyECDSAP256:
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	case KeyRSA3072:
		key, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), nil
	}
	return nil, fmt.Errorf("unknown key algorithm %q: use %s or %s", alg, KeyECDSAP256, KeyRSA3072)
}

// NewInstanceCSR makes a CSR for an instance with its PEM key (from
// NewInstanceKey, or any PKCS #8, PKCS #1 or SEC 1 key). The subject names
// the instance, for logs; the CA decides every field of the certificate.
func NewInstanceCSR(keyPEM []byte, instanceGUID string) ([]byte, error) {
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: instanceGUID}}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// NewInstanceKeyAndCSR is NewInstanceKey then NewInstanceCSR.
func NewInstanceKeyAndCSR(alg, instanceGUID string) (keyPEM, csrPEM []byte, err error) {
	if keyPEM, err = NewInstanceKey(alg); err != nil {
		return nil, nil, err
	}
	if csrPEM, err = NewInstanceCSR(keyPEM, instanceGUID); err != nil {
		return nil, nil, err
	}
	return keyPEM, csrPEM, nil
}

// ParsePrivateKey reads a PEM private key: PKCS #8 ("PRIVATE KEY"), PKCS
// #1 ("RSA PRIVATE KEY") or SEC 1 ("EC PRIVATE KEY").
func ParsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("private key: no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("private key: unexpected PEM type %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key: %T cannot sign", key)
	}
	return signer, nil
}

// Peer is who an instance certificate names.
type Peer struct {
	Instance, App, Space, Org string // GUIDs
}

// ParsePeer reads the identity of an instance certificate — one the caller
// has verified against the instance CA — from its subject: CN the
// instance, OU organization:, space: and app:. If the certificate has a
// SPIFFE URI, it must agree. For mutual TLS authorization: which app is
// this peer?
func ParsePeer(cert *x509.Certificate) (Peer, error) {
	p := Peer{Instance: cert.Subject.CommonName}
	for _, ou := range cert.Subject.OrganizationalUnit {
		k, v, ok := strings.Cut(ou, ":")
		if !ok {
			continue
		}
		var dst *string
		switch k {
		case "organization":
			dst = &p.Org
		case "space":
			dst = &p.Space
		case "app":
			dst = &p.App
		default:
			continue
		}
		if *dst != "" && *dst != v {
			return Peer{}, fmt.Errorf("instance certificate names two %ss: %s and %s", k, *dst, v)
		}
		*dst = v
	}
	if p.App == "" || p.Instance == "" {
		return Peer{}, errors.New("not an instance certificate: no app: OU or no CN")
	}
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		want := Instance{GUID: p.Instance, AppGUID: p.App, SpaceGUID: p.Space, OrgGUID: p.Org}.SPIFFEID(u.Host)
		if u.String() != want.String() {
			return Peer{}, fmt.Errorf("instance certificate's URI %s disagrees with its subject (%s)", u, want)
		}
	}
	return p, nil
}

// PeerOf is ParsePeer without the error: the zero Peer (no App) for a
// certificate that names no instance, or names it inconsistently.
func PeerOf(cert *x509.Certificate) Peer {
	p, _ := ParsePeer(cert)
	return p
}

// instanceCAJSON is the serialized InstanceCA: every certificate and key
// as PEM.
type instanceCAJSON struct {
	Version           int        `json:"version"`
	Root              string     `json:"root"`
	RootKey           string     `json:"root_key"`
	Intermediate      string     `json:"intermediate"`
	IntermediateKey   string     `json:"intermediate_key"`
	PreviousRoot      string     `json:"previous_root,omitempty"`
	CrossIntermediate string     `json:"cross_signed_intermediate,omitempty"`
	RotationStarted   *time.Time `json:"rotation_started,omitempty"`
}

// Marshal serializes the CA, keys included (PEM in JSON): keep it as
// secret as the keys.
func (ca *InstanceCA) Marshal() ([]byte, error) {
	rootKey, err := encodeKey(ca.root.key)
	if err != nil {
		return nil, err
	}
	interKey, err := encodeKey(ca.intermediate.key)
	if err != nil {
		return nil, err
	}
	j := instanceCAJSON{Version: 1,
		Root: string(encodeCerts(ca.root.cert)), RootKey: string(rootKey),
		Intermediate: string(encodeCerts(ca.intermediate.cert)), IntermediateKey: string(interKey)}
	if ca.Rotating() {
		j.PreviousRoot = string(encodeCerts(ca.previousRoot))
		j.CrossIntermediate = string(encodeCerts(ca.cross))
		t := ca.rotationStarted
		j.RotationStarted = &t
	}
	return json.Marshal(j)
}

// ParseInstanceCA reads what Marshal wrote and checks that it holds
// together: each key matches its certificate, the root signed the
// intermediate, and the previous root signed the cross-signed intermediate.
func ParseInstanceCA(data []byte) (*InstanceCA, error) {
	var j instanceCAJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("instance CA: %w", err)
	}
	if j.Version != 1 {
		return nil, fmt.Errorf("instance CA: unknown version %d", j.Version)
	}
	var ca InstanceCA
	var err error
	if ca.root, err = parseCACert("root", j.Root, j.RootKey); err != nil {
		return nil, err
	}
	if ca.intermediate, err = parseCACert("intermediate", j.Intermediate, j.IntermediateKey); err != nil {
		return nil, err
	}
	if err := ca.root.cert.CheckSignatureFrom(ca.root.cert); err != nil {
		return nil, fmt.Errorf("instance CA: root is not self-signed: %w", err)
	}
	if err := ca.intermediate.cert.CheckSignatureFrom(ca.root.cert); err != nil {
		return nil, fmt.Errorf("instance CA: the root did not sign the intermediate: %w", err)
	}
	if (j.PreviousRoot == "") != (j.CrossIntermediate == "") || (j.PreviousRoot != "") != (j.RotationStarted != nil) {
		return nil, errors.New("instance CA: a rotation needs the previous root, the cross-signed intermediate and its start time")
	}
	if j.PreviousRoot == "" {
		return &ca, nil
	}
	if ca.previousRoot, err = parseCert("previous root", j.PreviousRoot); err != nil {
		return nil, err
	}
	if ca.cross, err = parseCert("cross-signed intermediate", j.CrossIntermediate); err != nil {
		return nil, err
	}
	if err := ca.cross.CheckSignatureFrom(ca.previousRoot); err != nil {
		return nil, fmt.Errorf("instance CA: the previous root did not sign the cross-signed intermediate: %w", err)
	}
	if !bytes.Equal(ca.cross.RawSubject, ca.intermediate.cert.RawSubject) || !bytes.Equal(ca.cross.RawSubjectPublicKeyInfo, ca.intermediate.cert.RawSubjectPublicKeyInfo) {
		return nil, errors.New("instance CA: the cross-signed intermediate is not a copy of the intermediate")
	}
	ca.rotationStarted = j.RotationStarted.UTC()
	return &ca, nil
}

func parseCACert(what, certPEM, keyPEM string) (caCert, error) {
	cert, err := parseCert(what, certPEM)
	if err != nil {
		return caCert{}, err
	}
	if !cert.IsCA {
		return caCert{}, fmt.Errorf("instance CA: %s is not a CA certificate", what)
	}
	key, err := ParsePrivateKey([]byte(keyPEM))
	if err != nil {
		return caCert{}, fmt.Errorf("instance CA: %s key: %w", what, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return caCert{}, fmt.Errorf("instance CA: %s key does not match its certificate", what)
	}
	return caCert{cert: cert, key: key}, nil
}

func parseCert(what, certPEM string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("instance CA: %s: not a PEM CERTIFICATE", what)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("instance CA: %s: %w", what, err)
	}
	return cert, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}
